"""PyTorch custom ops over libnegsamp, and an InfoNCELoss module.

Ops (torch.library.custom_op, traceable by torch.compile, checked by torch.library.opcheck):

    negsamp::infonce           (query, passage, hard?, ...) -> (loss, per_query, saved)
    negsamp::infonce_backward  (grad_loss, ..., saved) -> (grad_query, grad_passage, grad_hard)
    negsamp::infonce_fused     (query, passage, hard?, ...) -> (loss, per_query, saved,
                                grad_query, grad_passage, grad_hard): one
                                ns_infonce_forward_backward call at grad_loss = 1 (CPU and
                                CUDA compute each logit tile once: three GEMMs, not four); autograd
                                scales the kept gradients by grad_loss in the backward
    infonce_loss(...)          the loss through infonce_fused when autograd will need gradients,
                               else through infonce (InfoNCELoss and NegsampLoss call it)
    negsamp::mine_topk         (query, corpus, k, ...) -> (index, score)
    negsamp::filter            (candidate_id, score, ...) -> (keep, counts)
    negsamp::sample            (candidate_id, score, m, ...) -> (index, score, count)

Outputs are allocated here (so the fake kernels mirror them exactly) and their data pointers go
to C; on CUDA tensors the context is told the current stream (ns_context_set_stream), so work is
ordered like any PyTorch kernel. One context per (device, thread) is cached.
"""
from __future__ import annotations

import math
import threading
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _checks as chk
from . import _ffi
from ._core import Context, _c, _counts_dict, _COUNT_NAMES  # noqa: F401
from ._errors import InvalidArgument, NonFinite, Unsupported

__all__ = ["infonce", "infonce_backward", "infonce_fused", "infonce_loss", "mine_topk", "filter", "sample", "InfoNCELoss",
           "context_for", "FILTER_COUNT_NAMES"]

FILTER_COUNT_NAMES = list(_COUNT_NAMES)

# ------------------------------------------------------------------ contexts and tensors

_local = threading.local()


def context_for(device: torch.device) -> Context:
    """This thread's context for device, ordered on the current CUDA stream."""
    device = torch.device(device)
    cache = getattr(_local, "ctxs", None)
    if cache is None:
        cache = _local.ctxs = {}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        key = ("cuda", index)
    elif device.type == "cpu":
        index, key = 0, ("cpu", 0)
    else:
        raise Unsupported(f"negsamp: tensors on {device} are not supported (cpu or cuda)")
    ctx = cache.get(key)
    if ctx is None:
        ctx = cache[key] = Context(key[0], device=index)
    if key[0] == "cuda":
        ctx.set_stream(torch.cuda.current_stream(index).cuda_stream)
    return ctx


class _on_device:
    """The CUDA device guard for C calls (a no-op on CPU)."""

    def __init__(self, device):
        self.guard = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self.guard is not None:
            self.guard.__enter__()

    def __exit__(self, *exc):
        if self.guard is not None:
            self.guard.__exit__(*exc)


_DTYPES = {torch.float32: _ffi.NS_F32, torch.float16: _ffi.NS_F16,
           torch.bfloat16: _ffi.NS_BF16}


def _device(t: Optional[Tensor], dev: torch.device, fn: str, name: str) -> None:
    """Every tensor of a call on the first one's device: a host pointer handed to a CUDA
    context (or the reverse) is a crash, not an error, inside C."""
    if t is not None and t.device != dev:
        raise InvalidArgument(f"{fn}: {name} is on {t.device} but the call runs on {dev} "
                              f"(every tensor of a call on one device)")


def _rows(t: Tensor, name: str, fn: str = "negsamp", dev=None) -> Tensor:
    """t as a 2-D f32/f16/bf16 tensor with unit-stride rows (no copy when it already is).
    float64 is rounded to float32; integer and bool tensors are refused, not cast."""
    if not isinstance(t, Tensor):
        raise InvalidArgument(f"{fn}: {name} must be a tensor, not {type(t).__name__}")
    if dev is not None:
        _device(t, dev, fn, name)
    if t.dim() != 2:
        raise InvalidArgument(f"{fn}: {name} must be 2-D (rows × columns); got shape "
                              f"{tuple(t.shape)}")
    if t.dtype not in _DTYPES:
        if not t.dtype.is_floating_point:
            raise InvalidArgument(f"{fn}: {name} has dtype {t.dtype}; expected a floating-point "
                                  f"tensor (float32, float16, bfloat16)")
        t = t.float()
    r, c = t.shape
    if (c > 1 and t.stride(1) != 1) or (r > 1 and t.stride(0) < c):
        t = t.contiguous()
    return t


def _matrix(t: Optional[Tensor]) -> _ffi.ns_matrix:
    if t is None or t.numel() == 0:
        return _ffi.ns_matrix(None, _ffi.NS_F32, 0, 0, 0)
    r, c = t.shape
    return _ffi.ns_matrix(t.data_ptr(), _DTYPES[t.dtype], r, c, t.stride(0) if r > 1 else c)


def _flat(t: Optional[Tensor], dtype, name: str, numel: Optional[int] = None,
          fn: str = "negsamp", dev=None):
    """t flattened, contiguous, of dtype: ids (int64) only from integer tensors (float ids
    are not truncated), scores (float32) only from floating-point ones, masks (uint8) from
    bool or integer ones (nonzero = 1); of numel elements when given."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise InvalidArgument(f"{fn}: {name} must be a tensor, not {type(t).__name__}")
    if dev is not None:
        _device(t, dev, fn, name)
    fp, is_bool = t.dtype.is_floating_point, t.dtype == torch.bool
    if dtype == torch.int64 and (fp or is_bool or t.is_complex()):
        raise InvalidArgument(f"{fn}: {name} has dtype {t.dtype}; expected an integer tensor")
    if dtype == torch.float32 and not fp:
        raise InvalidArgument(f"{fn}: {name} has dtype {t.dtype}; expected a floating-point "
                              f"tensor")
    if dtype == torch.uint8 and (fp or t.is_complex()):
        raise InvalidArgument(f"{fn}: {name} has dtype {t.dtype}; expected a bool (or "
                              f"integer) mask")
    if numel is not None and t.numel() != numel:
        raise InvalidArgument(f"{fn}: {name} has {t.numel()} elements; expected {numel}")
    if dtype == torch.uint8 and not is_bool and t.dtype != torch.uint8:
        t = t != 0
    return t.reshape(-1).to(dtype).contiguous()


def _csr(offsets: Tensor, ids: Optional[Tensor], queries: int, fn: str, name: str, dev):
    """CSR lists (offsets, ids) checked on the host (the offsets say how far C reads into
    ids): (offsets int64, ids int64 with at least one element)."""
    off = _flat(offsets, torch.int64, f"{name}_offsets", None, fn, dev)
    ids = _flat(ids if ids is not None else off.new_empty(0), torch.int64, f"{name}_ids",
                None, fn, dev)
    chk.csr_offsets(off.cpu().numpy(), ids.numel(), fn, name, queries)
    if ids.numel() == 0:
        ids = off.new_zeros(1)
    return off, ids


def _p(t: Optional[Tensor], ctype=None):
    if t is None:
        return None
    if ctype is None:
        return t.data_ptr()
    import ctypes
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctype))


# ------------------------------------------------------------------ InfoNCE


def _loss_options(temperature, symmetric, mask_same_id, tau_plus, beta, share_hard):
    from ._core import _loss_options as lo
    return lo(temperature, symmetric, mask_same_id, tau_plus, beta, share_hard)


class _Groups:
    """ns_loss_groups over tensors (kept alive with the struct), or none: the same-group rule
    (group ids per query B, passage N, hard (B, h), extra E; a negative id = no group; weight 0
    masks same-group candidates, (0, 1] down-weights them)."""

    def __init__(self, inp, query_group, passage_group, hard_group, extra_group, weight, fn):
        import ctypes
        self.struct = None
        if query_group is None:
            if any(g is not None for g in (passage_group, hard_group, extra_group)):
                raise InvalidArgument(f"{fn}: candidate group ids without query_group")
            return
        dev = inp.query.device
        B, N = inp.query.shape[0], inp.passage.shape[0]
        h = 0 if inp.hard is None else inp.hard.shape[0] // max(B, 1)
        E = 0 if inp.extra is None else inp.extra.shape[0]
        self.q = _flat(query_group, torch.int64, "query_group", B, fn, dev)
        self.p = _flat(passage_group, torch.int64, "passage_group", N, fn, dev)
        self.h = _flat(hard_group, torch.int64, "hard_group", B * h, fn, dev)
        self.e = _flat(extra_group, torch.int64, "extra_group", E, fn, dev)
        i64 = ctypes.c_int64
        g = _ffi.loss_groups_init()
        g.query, g.passage, g.hard, g.extra = (_p(t, i64) for t in (self.q, self.p, self.h, self.e))
        g.weight = chk.real(weight, fn, "group_weight")
        self.struct = g

    def apply(self, opt):
        import ctypes
        if self.struct is not None:
            opt.groups = ctypes.pointer(self.struct)
        return opt


class _Inputs:
    """ns_infonce_inputs over tensors (kept alive with the struct)."""

    def __init__(self, query, passage, hard, hard_keep, extra, positive, passage_id, hard_id,
                 extra_id, fn="infonce"):
        import ctypes
        dev = query.device
        self.query = _rows(query, "query", fn, dev)
        self.passage = _rows(passage, "passage", fn, dev)
        B, N = self.query.shape[0], self.passage.shape[0]
        h = 0
        self.hard = None
        if hard is not None:
            _device(hard, dev, fn, "hard")
            if hard.dim() != 3 or hard.shape[0] != B:
                raise InvalidArgument(f"{fn}: hard must be (B, h, d) with B = {B}; got "
                                      f"{tuple(hard.shape)}")
            h = hard.shape[1]
            self.hard = _rows(hard.reshape(B * h, hard.shape[2]), "hard", fn)
        self.hard_keep = _flat(hard_keep, torch.uint8, "hard_keep", B * h, fn, dev)
        self.extra = None if extra is None else _rows(extra, "extra", fn, dev)
        self.positive = _flat(positive, torch.int64, "positive", B, fn, dev)
        if self.positive is not None and B:
            lo, hi = (int(x) for x in torch.aminmax(self.positive))
            if lo < 0 or hi >= N:
                i = int(((self.positive < 0) | (self.positive >= N)).nonzero()[0])
                raise InvalidArgument(f"{fn}: positive[{i}] ({int(self.positive[i])}) is "
                                      f"outside [0, {N})")
        self.passage_id = _flat(passage_id, torch.int64, "passage_id", N, fn, dev)
        self.hard_id = _flat(hard_id, torch.int64, "hard_id", B * h, fn, dev)
        self.extra_id = _flat(extra_id, torch.int64, "extra_id",
                              0 if self.extra is None else self.extra.shape[0], fn, dev)
        i64 = ctypes.c_int64
        self.struct = _ffi.ns_infonce_inputs(
            _matrix(self.query), _matrix(self.passage), _p(self.positive, i64),
            _matrix(self.hard), h, _p(self.hard_keep, ctypes.c_uint8), _matrix(self.extra),
            _p(self.passage_id, i64), _p(self.hard_id, i64), _p(self.extra_id, i64))


_SAVED = _ffi.NS_INFONCE_SAVED_PER_QUERY


def _check_saved(saved: Tensor, inp: _Inputs, temperature: float, fn: str) -> Tensor:
    """saved as the forward's (B, NS_INFONCE_SAVED_PER_QUERY) float32 tensor of this batch:
    shape, dtype and device checked, and its positive logits compared with q_i·p_pos(i)/τ of
    these inputs (O(B·d), one host synchronisation)."""
    B = inp.query.shape[0]
    _device(saved, inp.query.device, fn, "saved")
    if saved.dtype != torch.float32:
        raise InvalidArgument(f"{fn}: saved has dtype {saved.dtype}; expected torch.float32 "
                              f"(the saved output of negsamp::infonce)")
    if tuple(saved.shape) != (B, _SAVED):
        raise InvalidArgument(f"{fn}: saved has shape {tuple(saved.shape)}; expected ({B}, "
                              f"{_SAVED}) (the saved output of negsamp::infonce for these {B} "
                              f"queries)")
    saved = saved.contiguous()
    if B == 0:
        return saved
    finite = torch.isfinite(saved)
    if not bool(finite.all()):
        i, j = (int(x) for x in (~finite).nonzero()[0])
        raise NonFinite(f"{fn}: saved[{i}, {j}] ({float(saved[i, j])}) is not finite (pass the "
                        f"saved output of the forward with the same inputs and options)")
    bad = _saved_mismatch(saved, inp, temperature)
    if bad is not None:
        i, got, want = bad
        raise InvalidArgument(
            f"{fn}: saved is not from the forward of these inputs: row {i} holds the positive "
            f"logit {got:.6g}, but query {i} and its positive give {want:.6g} (pass the saved "
            f"output of negsamp::infonce for this batch and temperature)")
    return saved


def _saved_mismatch(saved, inp, temperature):
    """negsamp._core.saved_mismatch computed where the tensors are (no copy of Q and P to the
    host): (row, saved l⁺, expected l⁺) of the first row that differs, or None."""
    q = inp.query.double()
    pos = (torch.arange(q.shape[0], device=q.device) if inp.positive is None
           else inp.positive)
    prod = q * inp.passage.double()[pos]
    ref = prod.sum(1) / temperature
    bound = 1e-3 * prod.abs().sum(1) / abs(temperature) + 1e-5 * ref.abs() + 1e-6
    lpos = saved[:, 7].double()
    bad = ~((lpos - ref).abs() <= bound)
    if not bool(bad.any()):
        return None
    i = int(bad.nonzero()[0])
    return i, float(lpos[i]), float(ref[i])


@torch.library.custom_op("negsamp::infonce", mutates_args=())
def infonce(query: Tensor, passage: Tensor, hard: Optional[Tensor] = None,
            hard_keep: Optional[Tensor] = None, extra: Optional[Tensor] = None,
            positive: Optional[Tensor] = None, passage_id: Optional[Tensor] = None,
            hard_id: Optional[Tensor] = None, extra_id: Optional[Tensor] = None,
            temperature: float = 0.05, symmetric: bool = False, mask_same_id: bool = True,
            tau_plus: float = 0.0, beta: float = 0.0,
            share_hard: bool = False, query_group: Optional[Tensor] = None,
            passage_group: Optional[Tensor] = None, hard_group: Optional[Tensor] = None,
            extra_group: Optional[Tensor] = None,
            group_weight: float = 0.0) -> Tuple[Tensor, Tensor, Tensor]:
    """InfoNCE loss (0-d f32), per-query losses (B) and the saved row statistics
    (B × NS_INFONCE_SAVED_PER_QUERY). hard is (B, h, d); hard_keep/hard_id are (B, h).
    query_group (B) with passage_group (N), hard_group (B, h), extra_group (E), each optional:
    same-group candidates masked (group_weight 0) or down-weighted (logit + log group_weight),
    the positive never (ns_loss_groups)."""
    import ctypes
    dev = query.device
    ctx = context_for(dev)
    inp = _Inputs(query, passage, hard, hard_keep, extra, positive, passage_id, hard_id,
                  extra_id, "infonce")
    grp = _Groups(inp, query_group, passage_group, hard_group, extra_group, group_weight,
                  "infonce")
    B = query.shape[0]
    opt = grp.apply(_loss_options(temperature, symmetric, mask_same_id, tau_plus, beta,
                                  share_hard))
    per_query = torch.empty(B, dtype=torch.float32, device=dev)
    saved = torch.empty((B, _SAVED), dtype=torch.float32, device=dev)
    loss = ctypes.c_float()
    with _on_device(dev):
        ctx.check(_c("ns_infonce_forward")(ctx.handle, ctypes.byref(inp.struct),
                                           ctypes.byref(opt), ctypes.byref(loss),
                                           per_query.data_ptr(), saved.data_ptr()))
    # The library returns the mean as a host float (on CUDA it has synchronised already).
    out = torch.full((), loss.value, dtype=torch.float32, device=dev)
    return out, per_query, saved


@infonce.register_fake
def _(query, passage, hard=None, hard_keep=None, extra=None, positive=None, passage_id=None,
      hard_id=None, extra_id=None, temperature=0.05, symmetric=False, mask_same_id=True,
      tau_plus=0.0, beta=0.0, share_hard=False, query_group=None, passage_group=None,
      hard_group=None, extra_group=None, group_weight=0.0):
    B = query.shape[0]
    return (query.new_empty((), dtype=torch.float32),
            query.new_empty((B,), dtype=torch.float32),
            query.new_empty((B, _SAVED), dtype=torch.float32))


@torch.library.custom_op("negsamp::infonce_backward", mutates_args=())
def infonce_backward(grad_loss: Tensor, query: Tensor, passage: Tensor, saved: Tensor,
                     hard: Optional[Tensor] = None, hard_keep: Optional[Tensor] = None,
                     extra: Optional[Tensor] = None, positive: Optional[Tensor] = None,
                     passage_id: Optional[Tensor] = None, hard_id: Optional[Tensor] = None,
                     extra_id: Optional[Tensor] = None, temperature: float = 0.05,
                     symmetric: bool = False, mask_same_id: bool = True,
                     tau_plus: float = 0.0, beta: float = 0.0, share_hard: bool = False,
                     query_group: Optional[Tensor] = None,
                     passage_group: Optional[Tensor] = None,
                     hard_group: Optional[Tensor] = None, extra_group: Optional[Tensor] = None,
                     group_weight: float = 0.0,
                     need_query: bool = True, need_passage: bool = True,
                     need_hard: bool = True,
                     check_saved: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of grad_loss · loss w.r.t. query, passage and hard, in their dtypes (an empty
    tensor for one not needed or absent). saved must be the forward's (B, 8) float32 output
    for these inputs: with check_saved (the default) its positive logits are compared with
    these inputs' (one host synchronisation); the autograd formula, whose saved comes from its
    own forward, skips that."""
    import ctypes
    fn = "infonce_backward"
    dev = query.device
    ctx = context_for(dev)
    inp = _Inputs(query, passage, hard, hard_keep, extra, positive, passage_id, hard_id,
                  extra_id, fn)
    grp = _Groups(inp, query_group, passage_group, hard_group, extra_group, group_weight, fn)
    opt = grp.apply(_loss_options(temperature, symmetric, mask_same_id, tau_plus, beta,
                                  share_hard))
    if check_saved:
        saved = _check_saved(saved, inp, opt.temperature, fn)
    else:
        _device(saved, dev, fn, "saved")
        if saved.dtype != torch.float32 or tuple(saved.shape) != (query.shape[0], _SAVED):
            raise InvalidArgument(f"{fn}: saved is {saved.dtype} {tuple(saved.shape)}; "
                                  f"expected torch.float32 ({query.shape[0]}, {_SAVED})")
        saved = saved.contiguous()
    f32 = dict(dtype=torch.float32, device=dev)
    gq = torch.empty(query.shape, **f32) if need_query else None
    gp = torch.empty(passage.shape, **f32) if need_passage else None
    gh = torch.empty(hard.shape, **f32) if need_hard and hard is not None else None
    fc = ctypes.c_float
    grads = _ffi.ns_infonce_grads(_p(gq, fc), _p(gp, fc), _p(gh, fc), None)
    with _on_device(dev):
        # The gradients are linear in grad_loss: compute them for 1 and scale on the device,
        # so no device-to-host copy of grad_loss is needed.
        ctx.check(_c("ns_infonce_backward")(ctx.handle, ctypes.byref(inp.struct),
                                            ctypes.byref(opt), saved.data_ptr(), 1.0,
                                            ctypes.byref(grads)))
    g = grad_loss.to(device=dev, dtype=torch.float32)

    def out(t, like):
        if t is None:
            return like.new_empty((0,))
        return (t * g).to(like.dtype)
    return out(gq, query), out(gp, passage), out(gh, hard if hard is not None else query)


@infonce_backward.register_fake
def _(grad_loss, query, passage, saved, hard=None, hard_keep=None, extra=None, positive=None,
      passage_id=None, hard_id=None, extra_id=None, temperature=0.05, symmetric=False,
      mask_same_id=True, tau_plus=0.0, beta=0.0, share_hard=False, query_group=None,
      passage_group=None, hard_group=None, extra_group=None, group_weight=0.0, need_query=True,
      need_passage=True, need_hard=True, check_saved=True):
    def out(need, like):
        return like.new_empty(like.shape) if need and like is not None else \
            query.new_empty((0,)) if like is None else like.new_empty((0,))
    return out(need_query, query), out(need_passage, passage), out(need_hard, hard)


_INFONCE_TENSORS = ("query", "passage", "hard", "hard_keep", "extra", "positive", "passage_id",
                    "hard_id", "extra_id")
_INFONCE_OPTIONS = ("temperature", "symmetric", "mask_same_id", "tau_plus", "beta",
                    "share_hard")
_N_INFONCE_ARGS = 20  # 9 tensors, 6 options, 4 group tensors, group_weight


def _infonce_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9], *inputs[15:19], output[2])
    ctx.options = inputs[9:15]
    ctx.group_weight = inputs[19]
    ctx.mark_non_differentiable(output[1], output[2])


def _infonce_grad(ctx, grad_loss, grad_per_query, grad_saved):
    (query, passage, hard, hard_keep, extra, positive, passage_id, hard_id, extra_id,
     qg, pg, hg, eg, saved) = ctx.saved_tensors
    # arguments left at their defaults are dropped from the call, and needs_input_grad with
    # them (torch.ops.negsamp.infonce(q, p) has two entries): pad it
    need = tuple(ctx.needs_input_grad) + (False,) * 3
    gq, gp, gh = torch.ops.negsamp.infonce_backward(
        grad_loss, query, passage, saved, hard, hard_keep, extra, positive, passage_id, hard_id,
        extra_id, *ctx.options, qg, pg, hg, eg, ctx.group_weight, need_query=need[0],
        need_passage=need[1], need_hard=need[2] and hard is not None, check_saved=False)
    return ((gq if need[0] else None), (gp if need[1] else None),
            (gh if need[2] and hard is not None else None)) + (None,) * (_N_INFONCE_ARGS - 3)


infonce.register_autograd(_infonce_grad, setup_context=_infonce_setup)


@torch.library.custom_op("negsamp::infonce_fused", mutates_args=())
def infonce_fused(query: Tensor, passage: Tensor, hard: Optional[Tensor] = None,
                  hard_keep: Optional[Tensor] = None, extra: Optional[Tensor] = None,
                  positive: Optional[Tensor] = None, passage_id: Optional[Tensor] = None,
                  hard_id: Optional[Tensor] = None, extra_id: Optional[Tensor] = None,
                  temperature: float = 0.05, symmetric: bool = False, mask_same_id: bool = True,
                  tau_plus: float = 0.0, beta: float = 0.0, share_hard: bool = False,
                  query_group: Optional[Tensor] = None, passage_group: Optional[Tensor] = None,
                  hard_group: Optional[Tensor] = None, extra_group: Optional[Tensor] = None,
                  group_weight: float = 0.0, need_query: bool = True, need_passage: bool = True,
                  need_hard: bool = True
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """negsamp::infonce's outputs and the f32 gradients of the loss itself (grad_loss = 1)
    w.r.t. query, passage and hard (empty when not needed), from one
    ns_infonce_forward_backward call: for autograd, which learns grad_loss only in the
    backward — gradients are linear in it, so the backward scales these (memory: the
    gradients, O((B + N)·d), kept from the forward to the backward)."""
    import ctypes
    fn = "infonce_fused"
    dev = query.device
    ctx = context_for(dev)
    inp = _Inputs(query, passage, hard, hard_keep, extra, positive, passage_id, hard_id,
                  extra_id, fn)
    grp = _Groups(inp, query_group, passage_group, hard_group, extra_group, group_weight, fn)
    opt = grp.apply(_loss_options(temperature, symmetric, mask_same_id, tau_plus, beta,
                                  share_hard))
    B = query.shape[0]
    f32 = dict(dtype=torch.float32, device=dev)
    per_query = torch.empty(B, **f32)
    saved = torch.empty((B, _SAVED), **f32)
    gq = torch.empty(query.shape, **f32) if need_query else None
    gp = torch.empty(passage.shape, **f32) if need_passage else None
    gh = torch.empty(hard.shape, **f32) if need_hard and hard is not None else None
    fc = ctypes.c_float
    grads = _ffi.ns_infonce_grads(_p(gq, fc), _p(gp, fc), _p(gh, fc), None)
    loss = ctypes.c_float()
    with _on_device(dev):
        ctx.check(_c("ns_infonce_forward_backward")(
            ctx.handle, ctypes.byref(inp.struct), ctypes.byref(opt), 1.0, ctypes.byref(loss),
            per_query.data_ptr(), saved.data_ptr(), ctypes.byref(grads)))
    out = torch.full((), loss.value, **f32)
    def grad(t):  # a distinct empty tensor for each gradient not computed (no aliasing)
        return query.new_empty((0,), dtype=torch.float32) if t is None else t
    return out, per_query, saved, grad(gq), grad(gp), grad(gh)


@infonce_fused.register_fake
def _(query, passage, hard=None, hard_keep=None, extra=None, positive=None, passage_id=None,
      hard_id=None, extra_id=None, temperature=0.05, symmetric=False, mask_same_id=True,
      tau_plus=0.0, beta=0.0, share_hard=False, query_group=None, passage_group=None,
      hard_group=None, extra_group=None, group_weight=0.0, need_query=True, need_passage=True,
      need_hard=True):
    B = query.shape[0]
    f32 = dict(dtype=torch.float32)

    def grad(need, like):
        return like.new_empty(like.shape, **f32) if need and like is not None else \
            query.new_empty((0,), **f32)
    return (query.new_empty((), **f32), query.new_empty((B,), **f32),
            query.new_empty((B, _SAVED), **f32), grad(need_query, query),
            grad(need_passage, passage), grad(need_hard, hard))


def _fused_setup(ctx, inputs, output):
    ctx.save_for_backward(output[3], output[4], output[5])
    ctx.like = tuple(None if t is None else (t.dtype, tuple(t.shape)) for t in inputs[:3])
    ctx.mark_non_differentiable(*output[1:])


def _fused_grad(ctx, grad_loss, *unused):
    need = tuple(ctx.needs_input_grad) + (False,) * 3
    g = grad_loss.to(torch.float32)

    def scaled(i, t):
        # None where not asked for (or not computed: need_* was false in the forward)
        if not need[i] or ctx.like[i] is None or tuple(t.shape) != ctx.like[i][1]:
            return None
        return (t * g).to(ctx.like[i][0])
    gq, gp, gh = ctx.saved_tensors
    # 23 inputs: query, passage, hard, then 17 more of infonce's and the three need_* flags
    return (scaled(0, gq), scaled(1, gp), scaled(2, gh)) + (None,) * _N_INFONCE_ARGS


infonce_fused.register_autograd(_fused_grad, setup_context=_fused_setup)


def infonce_loss(query: Tensor, passage: Tensor, hard: Optional[Tensor] = None,
                 hard_keep: Optional[Tensor] = None, extra: Optional[Tensor] = None,
                 positive: Optional[Tensor] = None, passage_id: Optional[Tensor] = None,
                 hard_id: Optional[Tensor] = None, extra_id: Optional[Tensor] = None,
                 temperature: float = 0.05, symmetric: bool = False, mask_same_id: bool = True,
                 tau_plus: float = 0.0, beta: float = 0.0, share_hard: bool = False,
                 query_group: Optional[Tensor] = None, passage_group: Optional[Tensor] = None,
                 hard_group: Optional[Tensor] = None, extra_group: Optional[Tensor] = None,
                 group_weight: float = 0.0, fused: Optional[bool] = None) -> Tensor:
    """The mean InfoNCE loss (0-d f32) with autograd. fused (default: when grad mode is on and
    query, passage or hard requires a gradient): negsamp::infonce_fused — forward and backward
    in one library call in the forward, the backward a scaling; else negsamp::infonce, whose
    backward recomputes the logit tiles. Same values either way."""
    needs = [t is not None and t.requires_grad for t in (query, passage, hard)]
    if fused is None:
        fused = torch.is_grad_enabled() and any(needs)
    args = (query, passage, hard, hard_keep, extra, positive, passage_id, hard_id, extra_id,
            temperature, symmetric, mask_same_id, tau_plus, beta, share_hard, query_group,
            passage_group, hard_group, extra_group, group_weight)
    if fused:
        return torch.ops.negsamp.infonce_fused(*args, need_query=needs[0],
                                               need_passage=needs[1], need_hard=needs[2])[0]
    return torch.ops.negsamp.infonce(*args)[0]

# ------------------------------------------------------------------ mining


@torch.library.custom_op("negsamp::mine_topk", mutates_args=())
def mine_topk(query: Tensor, corpus: Tensor, k: int, scale: float = 1.0,
              normalize: bool = False, exclude_offsets: Optional[Tensor] = None,
              exclude_ids: Optional[Tensor] = None, workspace_bytes: int = 0) -> Tuple[Tensor, Tensor]:
    """Exact top-k corpus rows per query: (index int64 B×k, score f32 B×k), best first.
    Exclusions in CSR form: exclude_ids[exclude_offsets[i]:exclude_offsets[i+1]].
    workspace_bytes: the device workspace budget on CUDA (0 = the library's default)."""
    import ctypes
    fn = "mine_topk"
    dev = query.device
    ctx = context_for(dev)
    q = _rows(query, "query", fn, dev)
    c = _rows(corpus, "corpus", fn, dev)
    # k is checked before the B×k outputs are allocated, in the library's words.
    k = chk.integer(k, fn, "k")
    if k < 1:
        raise InvalidArgument(f"{fn}: k ({k}) must be at least 1")
    if k > c.shape[0]:
        raise InvalidArgument(f"{fn}: k ({k}) is larger than the corpus ({c.shape[0]} rows)")
    if k > _ffi.NS_MAX_K:
        raise InvalidArgument(f"{fn}: k ({k}) is larger than NS_MAX_K ({_ffi.NS_MAX_K})")
    opt = _ffi.mine_options_init()
    opt.scale = chk.real(scale, fn, "scale")
    opt.flags = _ffi.NS_NORMALIZE if normalize else 0
    opt.workspace_bytes = chk.integer(workspace_bytes, fn, "workspace_bytes", lo=0)
    keep = []
    if exclude_offsets is not None:
        off, ids = _csr(exclude_offsets, exclude_ids, q.shape[0], fn, "exclude", dev)
        lists = _ffi.ns_id_lists(_p(off, ctypes.c_int64), _p(ids, ctypes.c_int64),
                                 q.shape[0])
        keep += [off, ids, lists]
        opt.exclude = ctypes.pointer(lists)
    elif exclude_ids is not None:
        raise InvalidArgument(f"{fn}: exclude_ids without exclude_offsets (CSR form: give both)")
    index = torch.empty((q.shape[0], k), dtype=torch.int64, device=dev)
    score = torch.empty((q.shape[0], k), dtype=torch.float32, device=dev)
    with _on_device(dev):
        ctx.check(_c("ns_mine_topk")(ctx.handle, _matrix(q), _matrix(c), k,
                                     ctypes.byref(opt), index.data_ptr(), score.data_ptr()))
    return index, score


@mine_topk.register_fake
def _(query, corpus, k, scale=1.0, normalize=False, exclude_offsets=None, exclude_ids=None,
      workspace_bytes=0):
    B = query.shape[0]
    return (query.new_empty((B, k), dtype=torch.int64),
            query.new_empty((B, k), dtype=torch.float32))


# ------------------------------------------------------------------ filter and sample


class _Cands:
    def __init__(self, candidate_id, score, positive_score=None, positive_offsets=None,
                 positive_ids=None, guide_score=None, guide_positive_score=None,
                 query_offset=0, fn="filter"):
        import ctypes
        if not isinstance(score, Tensor) or score.dim() != 2:
            raise InvalidArgument(f"{fn}: score must be a 2-D tensor (queries × candidates); "
                                  f"got {tuple(getattr(score, 'shape', ()))}")
        dev = score.device
        B, C = score.shape
        self.score = _flat(score, torch.float32, "score", None, fn, dev)
        self.id = _flat(candidate_id, torch.int64, "candidate_id", B * C, fn, dev)
        self.ps = _flat(positive_score, torch.float32, "positive_score", B, fn, dev)
        self.gs = _flat(guide_score, torch.float32, "guide_score", B * C, fn, dev)
        self.gps = _flat(guide_positive_score, torch.float32, "guide_positive_score", B, fn,
                         dev)
        self.lists = None
        if positive_offsets is not None:
            self.po, self.pi = _csr(positive_offsets, positive_ids, B, fn, "positive", dev)
            self.lists = _ffi.ns_id_lists(_p(self.po, ctypes.c_int64),
                                          _p(self.pi, ctypes.c_int64), B)
        elif positive_ids is not None:
            raise InvalidArgument(f"{fn}: positive_ids without positive_offsets (CSR form: give "
                                  f"both)")
        f, i64 = ctypes.c_float, ctypes.c_int64
        self.struct = _ffi.ns_candidates(
            B, C, _p(self.id, i64), _p(self.score, f), _p(self.ps, f),
            None if self.lists is None else ctypes.pointer(self.lists), _p(self.gs, f),
            _p(self.gps, f), chk.int64(query_offset, fn, "query_offset", 0))


@torch.library.custom_op("negsamp::filter", mutates_args=())
def filter(candidate_id: Tensor, score: Tensor, positive_score: Optional[Tensor] = None,
           positive_offsets: Optional[Tensor] = None, positive_ids: Optional[Tensor] = None,
           guide_score: Optional[Tensor] = None, guide_positive_score: Optional[Tensor] = None,
           rules: int = 0, max_score: float = 0.0, min_score: float = 0.0,
           margin: float = 0.0, rel_margin: float = 0.0, rank_min: int = 0, rank_max: int = 0,
           guide_margin: float = 0.0) -> Tuple[Tensor, Tensor]:
    """keep (bool B×C) and counts (int64, FILTER_COUNT_NAMES order, on the CPU).
    rules: NS_FILTER_* bits; positive lists in CSR form (positive_offsets, positive_ids)."""
    import ctypes
    dev = score.device
    ctx = context_for(dev)
    fn = "filter"
    cand = _Cands(candidate_id, score, positive_score, positive_offsets, positive_ids,
                  guide_score, guide_positive_score, fn=fn)
    o = _ffi.filter_options_init()
    o.rules = chk.integer(rules, fn, "rules", 0, 2**32 - 1)
    o.max_score, o.min_score = chk.real(max_score, fn, "max_score"), chk.real(min_score, fn,
                                                                               "min_score")
    o.margin, o.rel_margin = chk.real(margin, fn, "margin"), chk.real(rel_margin, fn,
                                                                      "rel_margin")
    o.rank_min, o.rank_max = chk.int64(rank_min, fn, "rank_min"), chk.int64(rank_max, fn,
                                                                            "rank_max")
    o.guide_margin = chk.real(guide_margin, fn, "guide_margin")
    keep = torch.empty(score.shape, dtype=torch.bool, device=dev)
    counts = _ffi.ns_filter_counts()
    with _on_device(dev):
        ctx.check(_c("ns_filter")(ctx.handle, ctypes.byref(cand.struct), ctypes.byref(o),
                                  keep.data_ptr(), ctypes.byref(counts)))
    return keep, torch.tensor([getattr(counts, n) for n in FILTER_COUNT_NAMES],
                              dtype=torch.int64)


@filter.register_fake
def _(candidate_id, score, positive_score=None, positive_offsets=None, positive_ids=None,
      guide_score=None, guide_positive_score=None, rules=0, max_score=0.0, min_score=0.0,
      margin=0.0, rel_margin=0.0, rank_min=0, rank_max=0, guide_margin=0.0):
    return (score.new_empty(score.shape, dtype=torch.bool),
            torch.empty((len(FILTER_COUNT_NAMES),), dtype=torch.int64, device="cpu"))


_STRATEGIES = {"top": _ffi.NS_SAMPLE_TOP, "uniform": _ffi.NS_SAMPLE_UNIFORM,
               "simans": _ffi.NS_SAMPLE_SIMANS, "softmax": _ffi.NS_SAMPLE_SOFTMAX}


@torch.library.custom_op("negsamp::sample", mutates_args=())
def sample(candidate_id: Tensor, score: Tensor, m: int,
           positive_score: Optional[Tensor] = None, keep: Optional[Tensor] = None,
           strategy: int = _ffi.NS_SAMPLE_SIMANS, simans_a: float = 0.5, simans_b: float = 0.0,
           temperature: float = 1.0, seed: int = 0, step: int = 0,
           query_offset: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """m distinct kept candidates per query (Gumbel-top-m): (index int64 B×m, -1 padded;
    score f32 B×m, NaN padded; count int64 B). strategy: an NS_SAMPLE_* value."""
    import ctypes
    from ._core import _sampler_options
    dev = score.device
    ctx = context_for(dev)
    fn = "sample"
    cand = _Cands(candidate_id, score, positive_score, query_offset=query_offset, fn=fn)
    k = _flat(keep, torch.uint8, "keep", score.numel(), fn, dev)
    o = _sampler_options(strategy, simans_a, simans_b, temperature, seed, step, fn)
    B, C = score.shape
    m = chk.integer(m, fn, "m")
    if m < 1:
        raise InvalidArgument(f"{fn}: m ({m}) must be at least 1")
    if m > C:
        raise InvalidArgument(f"{fn}: m ({m}) is larger than the candidates per query ({C})")
    index = torch.empty((B, m), dtype=torch.int64, device=dev)
    out = torch.empty((B, m), dtype=torch.float32, device=dev)
    count = torch.empty((B,), dtype=torch.int64, device=dev)
    with _on_device(dev):
        ctx.check(_c("ns_sample")(ctx.handle, ctypes.byref(cand.struct), _p(k), ctypes.byref(o),
                                  m, index.data_ptr(), out.data_ptr(), count.data_ptr()))
    return index, out, count


@sample.register_fake
def _(candidate_id, score, m, positive_score=None, keep=None, strategy=2, simans_a=0.5,
      simans_b=0.0, temperature=1.0, seed=0, step=0, query_offset=0):
    B = score.shape[0]
    return (score.new_empty((B, m), dtype=torch.int64),
            score.new_empty((B, m), dtype=torch.float32),
            score.new_empty((B,), dtype=torch.int64))


# ------------------------------------------------------------------ the loss module


def _filter_rules(cfg: dict):
    """(rules bits, kwargs of negsamp::filter) from keyword options like negsamp.filter's."""
    cfg = dict(cfg)
    rules, kw = 0, {}
    if cfg.pop("same_id", False):
        rules |= _ffi.NS_FILTER_SAME_ID
    for name, bit in (("max_score", _ffi.NS_FILTER_MAX_SCORE),
                      ("min_score", _ffi.NS_FILTER_MIN_SCORE), ("margin", _ffi.NS_FILTER_MARGIN),
                      ("rel_margin", _ffi.NS_FILTER_REL_MARGIN)):
        v = cfg.pop(name, None)
        if v is not None:
            rules |= bit
            kw[name] = float(v)
    rank = cfg.pop("rank", None)
    if rank is not None:
        rules |= _ffi.NS_FILTER_RANK
        kw["rank_min"], kw["rank_max"] = int(rank[0]), int(rank[1])
    if cfg:
        raise InvalidArgument(f"InfoNCELoss: unknown filter options {sorted(cfg)} (known: "
                              "same_id, max_score, min_score, margin, rel_margin, rank)")
    return rules, kw


class InfoNCELoss(torch.nn.Module):
    """InfoNCE over in-batch passages and hard negatives, computed by negsamp (O(B + N) extra
    memory: the B×N logits are never formed).

    Drop-in for a MultipleNegativesRankingLoss-style loss: with normalize=True (cosine),
    temperature = 1/scale and share_hard=True (every query contrasts against every hard
    negative of the batch) it is cross_entropy(cat(q·pᵀ, q·Hᵀ)/τ, arange(B)).

    forward(query (B,d), positive (B,d), hard (B,C,d) optional, ...). The C candidates of each
    query are filtered whenever filter is given (dict of negsamp.filter rules: same_id,
    max_score, min_score, margin, rel_margin, rank — scores are the cosine or dot products
    computed without gradient), also when hard_negatives is None or >= C; then, with
    hard_negatives=h, min(h, C) of the survivors are sampled (sampler: dict with strategy
    'top' (the default, also in a sampler dict without one)|'uniform'|'simans'|'softmax',
    simans_a, simans_b, temperature, seed; a sampler needs hard_negatives). Without hard_negatives every surviving candidate is a negative. The
    draw is keyed like ns_step's, by (seed, step, global query id, candidate id): the step is
    the module's counter (or the step argument), the global query id query_offset + i
    (query_offset argument; default rank·B under torch.distributed, else 0), the candidate id
    hard_id (or the global slot (query_offset + i)·C + j). So splitting a batch (with the
    parts' offsets) does not change the draws, and data-parallel ranks draw independently.
    hard_keep (B, C) masks candidates out of the draw.

    learn_temperature=True makes τ a parameter (log_temperature), learned with the rest.
    """

    def __init__(self, temperature: float = 0.05, *, normalize: bool = False,
                 symmetric: bool = False, share_hard: bool = True, mask_same_id: bool = True,
                 tau_plus: float = 0.0, beta: float = 0.0,
                 hard_negatives: Optional[int] = None, filter: Optional[dict] = None,
                 sampler: Optional[dict] = None, learn_temperature: bool = False,
                 group_weight: float = 0.0):
        super().__init__()
        fn = "InfoNCELoss"
        self.temperature = chk.real(temperature, fn, "temperature")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidArgument(f"{fn}: temperature ({temperature}) must be finite and > 0")
        if hard_negatives is not None:
            hard_negatives = chk.integer(hard_negatives, fn, "hard_negatives", 1)
        if sampler is not None and hard_negatives is None:
            raise InvalidArgument(f"{fn}: sampler ({sampler}) draws hard_negatives=h of the C "
                                  "candidates per query, but hard_negatives is None: pass "
                                  "hard_negatives (without it every candidate the filter "
                                  "keeps is a negative)")
        self.group_weight = float(group_weight)
        self.learn_temperature = learn_temperature
        if learn_temperature:
            if tau_plus > 0:
                raise Unsupported("InfoNCELoss: learn_temperature with tau_plus > 0 is not "
                                  "supported (the debiased floor depends on τ itself)")
            # log τ: the logits are (q/τ)·c, so τ's gradient flows through torch's division.
            self.log_temperature = torch.nn.Parameter(
                torch.tensor(float(temperature)).log())
        self.normalize = normalize
        self.symmetric = symmetric
        self.share_hard = share_hard
        self.mask_same_id = mask_same_id
        self.tau_plus = float(tau_plus)
        self.beta = float(beta)
        self.hard_negatives = hard_negatives
        self.filter_rules, self.filter_kwargs = _filter_rules(filter or {})
        # Candidates go through select() whenever a rule or a draw applies: a filter is never
        # skipped because h happens to be >= C (it used to be, keeping false negatives).
        self.selects = hard_negatives is not None or filter is not None
        s = dict(sampler or {})
        # One default, given a sampler dict or not: a sampler={"seed": 1} added for
        # reproducibility used to switch the draw from top to SimANS.
        strategy = s.pop("strategy", "top")
        if isinstance(strategy, str):
            if strategy not in _STRATEGIES:
                raise InvalidArgument(f"InfoNCELoss: sampler strategy ({strategy!r}) is not one "
                                      f"of {sorted(_STRATEGIES)}")
            strategy = _STRATEGIES[strategy]
        self.sampler = dict(strategy=int(strategy), simans_a=float(s.pop("simans_a", 0.5)),
                            simans_b=float(s.pop("simans_b", 0.0)),
                            temperature=float(s.pop("temperature", 1.0)),
                            seed=int(s.pop("seed", 0)))
        if s:
            raise InvalidArgument(f"InfoNCELoss: unknown sampler options {sorted(s)}")
        self.step = 0

    def extra_repr(self):
        return (f"temperature={self.temperature}, normalize={self.normalize}, "
                f"symmetric={self.symmetric}, share_hard={self.share_hard}, "
                f"hard_negatives={self.hard_negatives}")

    @staticmethod
    def default_query_offset(batch_size: int) -> int:
        """The global id of this batch's first query when none is given: rank · B under an
        initialised torch.distributed process group (the global batch is the ranks' batches
        in rank order, as with ns_step over a communicator), else 0. Pass query_offset
        explicitly when ranks hold batches of different sizes."""
        try:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                return dist.get_rank() * batch_size
        except Exception:  # pragma: no cover - a build without distributed support
            pass
        return 0

    @staticmethod
    def _check_shapes(query: Tensor, positive: Tensor, hard: Optional[Tensor]):
        """The shapes as the caller passed them (the op's messages name its own arguments:
        a positive index array, an unsqueezed hard)."""
        fn = "InfoNCELoss"
        if query.dim() != 2 or positive.dim() != 2:
            raise InvalidArgument(f"{fn}: query and positive must be (B, d); got query "
                                  f"{tuple(query.shape)} and positive {tuple(positive.shape)}")
        B = query.shape[0]
        if positive.shape[0] < B:
            raise InvalidArgument(f"{fn}: positive has {positive.shape[0]} rows but there are "
                                  f"{B} queries (row i is the positive of query i)")
        if hard is not None and (hard.dim() not in (2, 3) or hard.shape[0] != B):
            raise InvalidArgument(f"{fn}: hard must be (B, C, d), or (B, d) for one per query, "
                                  f"with B = {B}; got {tuple(hard.shape)} (flat (B·C, d) rows: "
                                  f"pass hard.reshape(B, C, d))")

    def select(self, query: Tensor, positive: Tensor, hard: Tensor,
               hard_id: Optional[Tensor] = None, positive_id: Optional[Tensor] = None,
               step: Optional[int] = None, query_offset: Optional[int] = None,
               hard_keep: Optional[Tensor] = None):
        """Filter + sample h of the C candidates per query: (rows (B,h) into dim 1 of hard,
        -1 padded; keep (B,h) bool).

        The draw is keyed like ns_step's: by the seed, the step, the global query id
        query_offset + i and the candidate's id (hard_id, or else its global slot
        (query_offset + i)·C + j). So a batch split into parts with their query offsets draws
        what the whole batch draws, and different queries (other ranks, other batches of one
        step) draw independently. query_offset defaults to default_query_offset(B).
        hard_keep (B, C), optional: candidates never drawn."""
        fn = "InfoNCELoss"
        B, C = hard.shape[0], hard.shape[1]
        h = C if self.hard_negatives is None else min(int(self.hard_negatives), C)
        off = (self.default_query_offset(B) if query_offset is None
               else chk.int64(query_offset, fn, "query_offset", 0))
        with torch.no_grad():
            s = torch.einsum("bd,bcd->bc", query.float(), hard.float())
            sp = (query.float() * positive.float()).sum(-1)
            dev = hard.device
            # Global slot ids, as ns_step makes them when a batch has no candidate ids.
            slot0 = (off + torch.arange(B, device=dev, dtype=torch.int64)) * C
            slots = slot0.unsqueeze(1) + torch.arange(C, device=dev, dtype=torch.int64)
            if hard_id is None:
                ids = slots
            else:
                ids = _flat(hard_id, torch.int64, "hard_id", B * C, fn, dev).reshape(B, C)
            keep = None
            if hard_keep is not None:
                keep = _flat(hard_keep, torch.uint8, "hard_keep", B * C, fn,
                             dev).reshape(B, C).bool()
            rules = self.filter_rules
            if hard_id is None:
                rules &= ~_ffi.NS_FILTER_SAME_ID  # slot ids: no id to compare with (as ns_step)
            if rules:
                po = pi = None
                if rules & _ffi.NS_FILTER_SAME_ID:
                    if positive_id is None:
                        raise InvalidArgument("InfoNCELoss: the same_id filter needs positive_id")
                    po = torch.arange(B + 1, device=dev, dtype=torch.int64)
                    pi = positive_id.reshape(B).to(torch.int64)
                fkeep, _ = torch.ops.negsamp.filter(ids, s, sp, po, pi, rules=rules,
                                                    **self.filter_kwargs)
                keep = fkeep if keep is None else keep & fkeep
            chosen, _, _ = torch.ops.negsamp.sample(
                ids, s, h, sp, keep, step=int(self.step if step is None else step),
                query_offset=off, **self.sampler)
            if hard_id is None:
                rows = torch.where(chosen >= 0, chosen - slot0.unsqueeze(1),
                                   torch.full_like(chosen, -1))
            else:
                # The drawn id's first kept slot (an id repeated in a row is drawn once: the
                # copy that was drawn is the first one that the filter kept).
                match = ids.unsqueeze(1) == chosen.unsqueeze(2)  # (B, h, C)
                if keep is not None:
                    match &= keep.unsqueeze(1)
                rows = torch.where(chosen >= 0, match.to(torch.int64).argmax(-1),
                                   torch.full_like(chosen, -1))
        return rows, rows >= 0

    def forward(self, query: Tensor, positive: Tensor, hard: Optional[Tensor] = None,
                hard_keep: Optional[Tensor] = None, *, positive_id: Optional[Tensor] = None,
                hard_id: Optional[Tensor] = None, extra: Optional[Tensor] = None,
                extra_id: Optional[Tensor] = None, step: Optional[int] = None,
                query_offset: Optional[int] = None, query_group: Optional[Tensor] = None,
                positive_group: Optional[Tensor] = None, hard_group: Optional[Tensor] = None,
                extra_group: Optional[Tensor] = None) -> Tensor:
        """query_group (B) with positive_group (B), hard_group (B, C) and extra_group (E),
        each optional: the same-group rule (group_weight of the module: 0 masks a candidate of
        the query's group, (0, 1] down-weights it; the positive never)."""
        self._check_shapes(query, positive, hard)
        if (hard is not None and self.filter_rules & _ffi.NS_FILTER_SAME_ID
                and (hard_id is None or positive_id is None)):
            raise InvalidArgument("InfoNCELoss: filter same_id compares each candidate's "
                                  "hard_id with its query's positive_id: pass both (hard_id "
                                  f"{'missing' if hard_id is None else 'given'}, positive_id "
                                  f"{'missing' if positive_id is None else 'given'})")
        if self.normalize:
            query = torch.nn.functional.normalize(query, dim=-1)
            positive = torch.nn.functional.normalize(positive, dim=-1)
            hard = None if hard is None else torch.nn.functional.normalize(hard, dim=-1)
            extra = None if extra is None else torch.nn.functional.normalize(extra, dim=-1)
        if hard is not None and hard.dim() == 2:
            hard = hard.unsqueeze(1)
        if hard is not None and self.selects and hard.shape[1] > 0:
            rows, sel_keep = self.select(query, positive, hard, hard_id, positive_id, step,
                                         query_offset, hard_keep)
            safe = rows.clamp(min=0)
            hard = torch.gather(hard, 1, safe.unsqueeze(-1).expand(-1, -1, hard.shape[2]))
            if hard_id is not None:
                hard_id = torch.where(sel_keep, torch.gather(hard_id.reshape(rows.shape[0], -1)
                                                             .to(torch.int64), 1, safe),
                                      torch.full_like(rows, -1))
            if hard_keep is not None:
                sel_keep = sel_keep & torch.gather(hard_keep.reshape(rows.shape[0], -1).bool(),
                                                   1, safe)
            if hard_group is not None:
                hard_group = torch.gather(hard_group.reshape(rows.shape[0], -1)
                                          .to(torch.int64), 1, safe)
            hard_keep = sel_keep
        if self.training and step is None:
            self.step += 1
        if hard_keep is not None:
            hard_keep = hard_keep.to(torch.uint8)
        temperature = self.temperature
        if self.learn_temperature:
            query = query / self.log_temperature.exp().to(query.dtype)
            temperature = 1.0
        return infonce_loss(
            query, positive, hard, hard_keep, extra, None, positive_id, hard_id, extra_id,
            temperature, self.symmetric, self.mask_same_id, self.tau_plus, self.beta,
            self.share_hard, query_group, positive_group, hard_group, extra_group,
            self.group_weight)
