"""The numpy API: contexts, and one function (or class) per negsamp operation.

Arrays are passed to C by pointer without copies where their layout allows it (f32/f16, rows
with unit column stride; a row stride becomes ns_matrix.ld). Everything else about the inputs
is validated by the library itself, whose message becomes the exception's.
"""
from __future__ import annotations

import ctypes
import threading
from collections import namedtuple
from ctypes import POINTER, byref, c_float, c_int64, c_void_p

import numpy as np

from . import _ffi
from ._errors import NegsampError, Unsupported, InvalidArgument, error_for

# ------------------------------------------------------------------ calls and errors


def _c(name):
    try:
        return _ffi.fn(name)
    except AttributeError:
        raise Unsupported(f"{name} is not exported by the loaded library "
                          f"({_ffi.library_path()}); rebuild libnegsamp") from None


def _last_error(handle) -> str:
    msg = _c("ns_last_error")(handle)
    return msg.decode("utf-8", "replace") if msg else ""


def _check(status: int, handle=None):
    if status != _ffi.NS_OK:
        raise error_for(status, _last_error(handle))


def version() -> int:
    """NS_VERSION_CODE of the loaded library (major·10000 + minor·100 + patch)."""
    return int(_c("ns_version")())


def version_info() -> tuple:
    v = version()
    return (v // 10000, v // 100 % 100, v % 100)


def status_string(status: int) -> str:
    return _c("ns_status_string")(int(status)).decode()


def cuda_built() -> bool:
    """Whether the loaded library has the CUDA backend."""
    return bool(_c("ns_cuda_built")())


def cuda_device_count() -> int:
    """CUDA devices the library sees (0 without a GPU or without the CUDA backend)."""
    return int(_c("ns_cuda_device_count")())


def cuda_info() -> dict:
    return {"built": cuda_built(), "device_count": cuda_device_count()}


# ------------------------------------------------------------------ contexts

_BACKENDS = {"auto": _ffi.NS_BACKEND_AUTO, "cpu": _ffi.NS_BACKEND_CPU,
             "cuda": _ffi.NS_BACKEND_CUDA}
_BACKEND_NAMES = {v: k for k, v in _BACKENDS.items()}


class _Owned:
    """A library handle this object owns: close() (also on exit of a with block and on garbage
    collection) frees it once with self._free."""

    def close(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self._free(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Context(_Owned):
    """An ns_context: a backend, a device, a stream, a workspace. One thread at a time."""

    def __init__(self, backend: str = "cpu", device: int = 0, threads: int = 0, stream=None):
        if backend not in _BACKENDS:
            raise InvalidArgument(f"Context: backend ({backend!r}) is not one of "
                                  f"{sorted(_BACKENDS)}")
        opt = _ffi.context_options_init()
        opt.backend = _BACKENDS[backend]
        opt.device = int(device)
        opt.threads = int(threads)
        opt.stream = stream
        h = c_void_p()
        _check(_c("ns_context_create")(byref(h), byref(opt)), None)
        self._handle = h.value
        self._free = _c("ns_context_destroy")

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise InvalidArgument("negsamp.Context: the context is closed")
        return self._handle

    @property
    def backend(self) -> str:
        return _BACKEND_NAMES[_c("ns_context_backend")(self.handle)]

    def set_stream(self, stream) -> None:
        """Orders later work on stream (a cudaStream_t as an int; ignored on CPU)."""
        _check(_c("ns_context_set_stream")(self.handle, stream), self.handle)

    @property
    def last_error(self) -> str:
        return _last_error(self.handle)

    def check(self, status: int) -> None:
        _check(status, self.handle)



_local = threading.local()


def default_context() -> Context:
    """This thread's CPU context, used by the numpy API when no ctx is given."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = Context("cpu")
    return ctx


def _ctx(ctx):
    """The context for the numpy API: numpy arrays are host memory, so a CPU context."""
    if ctx is None:
        return default_context()
    if ctx.backend != "cpu":
        raise InvalidArgument("negsamp: numpy arrays live in host memory but ctx is a CUDA "
                              "context; use a CPU context, or the torch ops for device tensors")
    return ctx


# ------------------------------------------------------------------ arrays → C

_DTYPES = {np.dtype(np.float32): _ffi.NS_F32, np.dtype(np.float16): _ffi.NS_F16}


def _float_rows(a, name: str) -> np.ndarray:
    """a as a 2-D f32/f16 array whose rows are unit-stride (a view when possible)."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise InvalidArgument(f"{name} must be a 2-D array (rows × columns); got shape "
                              f"{a.shape}")
    if a.dtype not in _DTYPES:
        if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
            raise InvalidArgument(f"{name} has dtype {a.dtype}; expected float32 or float16")
        a = a.astype(np.float32)
    item = a.itemsize
    rows, cols = a.shape
    if cols > 1 and a.strides[1] != item:
        a = np.ascontiguousarray(a)
    elif rows > 1 and (a.strides[0] % item or a.strides[0] < cols * item):
        a = np.ascontiguousarray(a)
    return a


def _matrix(a: np.ndarray) -> _ffi.ns_matrix:
    rows, cols = a.shape
    ld = a.strides[0] // a.itemsize if rows > 1 else cols
    return _ffi.ns_matrix(a.ctypes.data, _DTYPES[a.dtype], rows, cols, ld)


_EMPTY = _ffi.ns_matrix(None, _ffi.NS_F32, 0, 0, 0)


def _vector(a, dtype, name: str, size: int | None = None, shape=None) -> np.ndarray:
    """a as a C-contiguous array of dtype (a copy only when needed)."""
    a = np.asarray(a)
    if dtype is np.int64 and a.dtype.kind not in "iu":
        raise InvalidArgument(f"{name} has dtype {a.dtype}; expected an integer array")
    a = np.ascontiguousarray(a, dtype=dtype)
    if shape is not None and a.shape != tuple(shape):
        if a.size == int(np.prod(shape)) and a.ndim != len(shape):
            a = a.reshape(shape)
        else:
            raise InvalidArgument(f"{name} has shape {a.shape}; expected {tuple(shape)}")
    if size is not None and a.size != size:
        raise InvalidArgument(f"{name} has {a.size} elements; expected {size}")
    return a


def _ptr(a, ctype):
    return None if a is None else a.ctypes.data_as(POINTER(ctype))


class IdLists:
    """Lists of ids per query in CSR form (ns_id_lists): ids of query i are
    ids[offsets[i]:offsets[i+1]]. Build from a list of lists (one per query), or from a tuple
    (offsets, ids)."""

    def __init__(self, lists=None, *, offsets=None, ids=None):
        if lists is not None:
            if isinstance(lists, IdLists):
                offsets, ids = lists.offsets, lists.ids
            elif isinstance(lists, tuple):
                if len(lists) != 2:
                    raise InvalidArgument("IdLists: a tuple is (offsets, ids) in CSR form; give "
                                          "a list of lists for one list per query")
                offsets, ids = lists
            else:
                lens = [len(x) for x in lists]
                offsets = np.zeros(len(lens) + 1, dtype=np.int64)
                np.cumsum(lens, out=offsets[1:])
                ids = (np.concatenate([np.asarray(x, dtype=np.int64).ravel() for x in lists])
                       if lists and offsets[-1] > 0 else np.zeros(0, dtype=np.int64))
        if offsets is None:
            raise InvalidArgument("IdLists: give a list of lists or offsets and ids")
        self.offsets = _vector(offsets, np.int64, "offsets")
        self.ids = _vector(ids if ids is not None else np.zeros(0), np.int64, "ids")
        # Keep one element allocated so the pointer is never NULL for empty lists.
        self._ids_buf = self.ids if self.ids.size else np.zeros(1, dtype=np.int64)
        self.struct = _ffi.ns_id_lists(_ptr(self.offsets, c_int64), _ptr(self._ids_buf, c_int64),
                                       len(self.offsets) - 1)

    @property
    def queries(self) -> int:
        return len(self.offsets) - 1

    def __len__(self):
        return self.queries

    def __getitem__(self, i):
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


def _id_lists(x):
    if x is None:
        return None
    return x if isinstance(x, IdLists) else IdLists(x)


# ------------------------------------------------------------------ similarity, mining


def similarity(q, p, scale: float = 1.0, normalize: bool = False, ctx: Context = None):
    """S = scale · q · pᵀ (B×N float32); cosine with normalize=True."""
    ctx = _ctx(ctx)
    q = _float_rows(q, "q")
    p = _float_rows(p, "p")
    s = np.empty((q.shape[0], p.shape[0]), dtype=np.float32)
    flags = _ffi.NS_NORMALIZE if normalize else 0
    ctx.check(_c("ns_similarity")(ctx.handle, _matrix(q), _matrix(p), float(scale), flags,
                                  s.ctypes.data))
    return s


def mine_topk(q, corpus, k: int, *, scale: float = 1.0, normalize: bool = False, exclude=None,
              progress=None, ctx: Context = None):
    """Exact top-k corpus rows per query: (index int64 B×k, score float32 B×k), best first.

    corpus: a 2-D array (np.memmap works) or an NpyFile. exclude: per-query ids never returned,
    as a list of lists, an (offsets, ids) pair or an IdLists. progress(done, total) may return
    True to cancel (the call then raises InvalidArgument)."""
    ctx = _ctx(ctx)
    q = _float_rows(q, "q")
    if isinstance(corpus, NpyFile):
        cm, keep_corpus = corpus.matrix, corpus
    else:
        keep_corpus = _float_rows(corpus, "corpus")
        cm = _matrix(keep_corpus)
    k = int(k)
    opt = _ffi.mine_options_init()
    opt.scale = float(scale)
    opt.flags = _ffi.NS_NORMALIZE if normalize else 0
    ex = _id_lists(exclude)
    if ex is not None:
        opt.exclude = ctypes.pointer(ex.struct)
    raised = []
    if progress is not None:
        def _cb(done, total, user):
            try:
                return 1 if progress(int(done), int(total)) else 0
            except BaseException as e:  # never let an exception cross the C frame
                raised.append(e)
                return 1
        cb = _ffi.ns_progress_fn(_cb)
        opt.progress = cb
    shape = (q.shape[0], max(k, 0))
    index = np.empty(shape, dtype=np.int64)
    score = np.empty(shape, dtype=np.float32)
    st = _c("ns_mine_topk")(ctx.handle, _matrix(q), cm, k, byref(opt), index.ctypes.data,
                             score.ctypes.data)
    if raised:
        raise raised[0]
    ctx.check(st)
    del keep_corpus
    return index, score


class NpyFile(_Owned):
    """A .npy file mapped read-only (ns_npy_open). .array is a numpy view of the mapping (it
    keeps this object alive); mine_topk accepts the NpyFile itself as its corpus. close()
    unmaps the file: views from .array must not be used afterwards."""

    def __init__(self, path):
        h = c_void_p()
        _check(_c("ns_npy_open")(str(path).encode(), byref(h)), None)
        self._handle = h.value
        self._free = _c("ns_npy_close")
        self.path = str(path)
        self.matrix = _c("ns_npy_matrix")(self._handle)

    @property
    def shape(self):
        return (self.matrix.rows, self.matrix.cols)

    @property
    def dtype(self):
        return np.dtype(np.float32 if self.matrix.dtype == _ffi.NS_F32 else np.float16)

    @property
    def array(self) -> np.ndarray:
        if self._handle is None:
            raise InvalidArgument(f"NpyFile {self.path}: closed")
        m = self.matrix
        ld = m.ld or m.cols
        n = (m.rows - 1) * ld + m.cols if m.rows else 0
        ctype = ctypes.c_float if m.dtype == _ffi.NS_F32 else ctypes.c_uint16
        buf = (ctype * max(n, 1)).from_address(m.data) if n else (ctype * 1)()
        buf._owner = self  # the mapping lives as long as any view of it
        flat = np.frombuffer(buf, dtype=self.dtype, count=n)
        a = np.lib.stride_tricks.as_strided(flat, shape=(m.rows, m.cols),
                                            strides=(ld * flat.itemsize, flat.itemsize),
                                            writeable=False)
        return a



def npy_open(path) -> NpyFile:
    return NpyFile(path)


# ------------------------------------------------------------------ filter, sample

_COUNT_NAMES = [f for f, _ in _ffi.ns_filter_counts._fields_]


def _counts_dict(c: _ffi.ns_filter_counts) -> dict:
    return {name: int(getattr(c, name)) for name in _COUNT_NAMES}


def _filter_options(same_id=True, max_score=None, min_score=None, margin=None, rel_margin=None,
                    rank=None, guide_margin=None, guide_relative=False):
    o = _ffi.filter_options_init()
    rules = _ffi.NS_FILTER_SAME_ID if same_id else 0
    if max_score is not None:
        rules |= _ffi.NS_FILTER_MAX_SCORE
        o.max_score = float(max_score)
    if min_score is not None:
        rules |= _ffi.NS_FILTER_MIN_SCORE
        o.min_score = float(min_score)
    if margin is not None:
        rules |= _ffi.NS_FILTER_MARGIN
        o.margin = float(margin)
    if rel_margin is not None:
        rules |= _ffi.NS_FILTER_REL_MARGIN
        o.rel_margin = float(rel_margin)
    if rank is not None:
        rules |= _ffi.NS_FILTER_RANK
        o.rank_min, o.rank_max = int(rank[0]), int(rank[1])
    if guide_margin is not None:
        rules |= _ffi.NS_FILTER_GUIDE_REL if guide_relative else _ffi.NS_FILTER_GUIDE
        o.guide_margin = float(guide_margin)
    o.rules = rules
    return o


class _Candidates:
    """ns_candidates over numpy arrays (kept alive with the struct)."""

    def __init__(self, candidate_id, score, positive_score=None, positive_ids=None,
                 guide_score=None, guide_positive_score=None, query_offset=0):
        score = np.asarray(score)
        if score.ndim != 2:
            raise InvalidArgument(f"score must be 2-D (queries × candidates); got shape "
                                  f"{score.shape}")
        B, C = score.shape
        self.shape = (B, C)
        self.score = _vector(score, np.float32, "score")
        self.id = _vector(candidate_id, np.int64, "candidate_id", shape=(B, C))
        self.positive_score = (None if positive_score is None else
                               _vector(positive_score, np.float32, "positive_score", size=B))
        self.positive_ids = _id_lists(positive_ids)
        self.guide_score = (None if guide_score is None else
                            _vector(guide_score, np.float32, "guide_score", shape=(B, C)))
        self.guide_positive_score = (None if guide_positive_score is None else
                                     _vector(guide_positive_score, np.float32,
                                             "guide_positive_score", size=B))
        self.struct = _ffi.ns_candidates(
            B, C, _ptr(self.id, c_int64), _ptr(self.score, c_float),
            _ptr(self.positive_score, c_float),
            None if self.positive_ids is None else ctypes.pointer(self.positive_ids.struct),
            _ptr(self.guide_score, c_float), _ptr(self.guide_positive_score, c_float),
            int(query_offset))


def filter(candidate_id, score, positive_score=None, positive_ids=None, *, guide_score=None,
           guide_positive_score=None, same_id=None, max_score=None, min_score=None, margin=None,
           rel_margin=None, rank=None, guide_margin=None, guide_relative=False,
           ctx: Context = None):
    """Drops likely false negatives among candidates (B×C ids and scores, rank order).

    A rule is on when its argument is given: same_id (default: on when positive_ids is given),
    max_score, min_score, margin (s > s⁺ − margin), rel_margin (s > s⁺ − |s⁺|·rel), rank
    (min, max), guide_margin (with guide_score / guide_positive_score; guide_relative for the
    relative form). Returns (keep: bool B×C, counts: dict per rule)."""
    ctx = _ctx(ctx)
    cand = _Candidates(candidate_id, score, positive_score, positive_ids, guide_score,
                       guide_positive_score)
    if same_id is None:
        same_id = positive_ids is not None
    opt = _filter_options(same_id, max_score, min_score, margin, rel_margin, rank, guide_margin,
                          guide_relative)
    keep = np.empty(cand.shape, dtype=np.uint8)
    counts = _ffi.ns_filter_counts()
    ctx.check(_c("ns_filter")(ctx.handle, byref(cand.struct), byref(opt), keep.ctypes.data,
                              byref(counts)))
    return keep.view(np.bool_), _counts_dict(counts)


_STRATEGIES = {"top": _ffi.NS_SAMPLE_TOP, "uniform": _ffi.NS_SAMPLE_UNIFORM,
               "simans": _ffi.NS_SAMPLE_SIMANS, "softmax": _ffi.NS_SAMPLE_SOFTMAX}


def _sampler_options(strategy="simans", simans_a=0.5, simans_b=0.0, temperature=1.0, seed=0,
                     step=0):
    o = _ffi.sampler_options_init()
    if isinstance(strategy, str):
        if strategy not in _STRATEGIES:
            raise InvalidArgument(f"sampler strategy ({strategy!r}) is not one of "
                                  f"{sorted(_STRATEGIES)}")
        strategy = _STRATEGIES[strategy]
    o.strategy = int(strategy)
    o.simans_a, o.simans_b = float(simans_a), float(simans_b)
    o.temperature = float(temperature)
    o.seed, o.step = int(seed), int(step)
    return o


Sample = namedtuple("Sample", "index score count")


def sample(candidate_id, score, m: int, *, positive_score=None, keep=None,
           strategy="simans", simans_a=0.5, simans_b=0.0, temperature=1.0, seed=0, step=0,
           query_offset=0, ctx: Context = None) -> Sample:
    """Draws m kept candidates per query without replacement (Gumbel-top-m, Philox).

    Returns Sample(index int64 B×m (ids, -1 padded), score float32 B×m (NaN padded),
    count int64 B)."""
    ctx = _ctx(ctx)
    cand = _Candidates(candidate_id, score, positive_score, None, query_offset=query_offset)
    keep_a = None if keep is None else _vector(np.asarray(keep).astype(np.uint8, copy=False),
                                               np.uint8, "keep", shape=cand.shape)
    opt = _sampler_options(strategy, simans_a, simans_b, temperature, seed, step)
    m = int(m)
    B = cand.shape[0]
    index = np.empty((B, max(m, 0)), dtype=np.int64)
    out_score = np.empty((B, max(m, 0)), dtype=np.float32)
    count = np.empty(B, dtype=np.int64)
    ctx.check(_c("ns_sample")(ctx.handle, byref(cand.struct),
                              None if keep_a is None else keep_a.ctypes.data, byref(opt), m,
                              index.ctypes.data, out_score.ctypes.data, count.ctypes.data))
    return Sample(index, out_score, count)


# ------------------------------------------------------------------ InfoNCE


def _loss_options(temperature=0.05, symmetric=False, mask_same_id=True, tau_plus=0.0, beta=0.0,
                  share_hard=False):
    o = _ffi.loss_options_init()
    o.temperature = float(temperature)
    o.symmetric = int(bool(symmetric))
    o.mask_same_id = int(bool(mask_same_id))
    o.tau_plus = float(tau_plus)
    o.beta = float(beta)
    o.share_hard = int(bool(share_hard))
    return o


class _InfoNCEInputs:
    def __init__(self, query, passage, positive=None, hard=None, hard_keep=None, extra=None,
                 passage_id=None, hard_id=None, extra_id=None):
        self.query = _float_rows(query, "query")
        self.passage = _float_rows(passage, "passage")
        B, N = self.query.shape[0], self.passage.shape[0]
        self.positive = None if positive is None else _vector(positive, np.int64, "positive",
                                                              size=B)
        self.hard_shape = None
        h = 0
        if hard is not None:
            hard = np.asarray(hard)
            self.hard_shape = hard.shape
            if hard.ndim == 3:
                if hard.shape[0] != B:
                    raise InvalidArgument(f"hard has {hard.shape[0]} queries (shape "
                                          f"{hard.shape}) but query has {B} rows")
                h = hard.shape[1]
                hard = hard.reshape(B * h, hard.shape[2])
            else:
                h = hard.shape[0] // B if B else 0
            self.hard = _float_rows(hard, "hard")
            hm = _matrix(self.hard) if self.hard.shape[0] else _EMPTY
        else:
            self.hard = None
            hm = _EMPTY
        self.hard_keep = (None if hard_keep is None else
                          _vector(np.asarray(hard_keep).astype(np.uint8, copy=False), np.uint8,
                                  "hard_keep", size=B * h))
        queue_view = None
        if isinstance(extra, Queue):
            # The queue's own memory, no copy: valid until its next push.
            self.queue = extra
            queue_view = extra._view_raw()
            extra = None
            if extra_id is not None:
                raise InvalidArgument("extra_id must be None when extra is a Queue (its ids "
                                      "are used)")
        self.extra = None if extra is None else _float_rows(extra, "extra")
        self.passage_id = None if passage_id is None else _vector(passage_id, np.int64,
                                                                  "passage_id", size=N)
        self.hard_id = None if hard_id is None else _vector(hard_id, np.int64, "hard_id",
                                                            size=B * h)
        self.extra_id = None if extra_id is None else _vector(
            extra_id, np.int64, "extra_id", size=self.extra.shape[0] if self.extra is not None
            else 0)
        self.struct = _ffi.ns_infonce_inputs(
            _matrix(self.query), _matrix(self.passage), _ptr(self.positive, c_int64), hm, h,
            _ptr(self.hard_keep, ctypes.c_uint8),
            _matrix(self.extra) if self.extra is not None and self.extra.shape[0] else _EMPTY,
            _ptr(self.passage_id, c_int64), _ptr(self.hard_id, c_int64),
            _ptr(self.extra_id, c_int64))
        if queue_view is not None and queue_view[0].rows > 0:
            self.struct.extra = queue_view[0]
            self.struct.extra_id = queue_view[1]


InfoNCEForward = namedtuple("InfoNCEForward", "loss per_query saved")
InfoNCEGrads = namedtuple("InfoNCEGrads", "query passage hard temperature")


def infonce_forward(query, passage, *, positive=None, hard=None, hard_keep=None, extra=None,
                    passage_id=None, hard_id=None, extra_id=None, temperature=0.05,
                    symmetric=False, mask_same_id=True, tau_plus=0.0, beta=0.0,
                    share_hard=False, ctx: Context = None) -> InfoNCEForward:
    """InfoNCE over in-batch passages, hard negatives (B×h×d or (B·h)×d) and extra rows
    (an array, or a Queue whose rows and ids are used in place).

    Returns (loss: float, per_query: float32 B, saved: float32 B·8 for infonce_backward)."""
    ctx = _ctx(ctx)
    inp = _InfoNCEInputs(query, passage, positive, hard, hard_keep, extra, passage_id, hard_id,
                         extra_id)
    opt = _loss_options(temperature, symmetric, mask_same_id, tau_plus, beta, share_hard)
    B = inp.query.shape[0]
    loss = c_float()
    per_query = np.empty(B, dtype=np.float32)
    saved = np.empty(B * _ffi.NS_INFONCE_SAVED_PER_QUERY, dtype=np.float32)
    ctx.check(_c("ns_infonce_forward")(ctx.handle, byref(inp.struct), byref(opt), byref(loss),
                                       per_query.ctypes.data, saved.ctypes.data))
    return InfoNCEForward(float(loss.value), per_query, saved)


def infonce_backward(query, passage, saved, *, grad_loss=1.0, positive=None, hard=None,
                     hard_keep=None, extra=None, passage_id=None, hard_id=None, extra_id=None,
                     temperature=0.05, symmetric=False, mask_same_id=True, tau_plus=0.0,
                     beta=0.0, share_hard=False, want=("query", "passage", "hard",
                                                       "temperature"),
                     ctx: Context = None) -> InfoNCEGrads:
    """Gradients of grad_loss · loss (the same inputs and options as the forward, and its
    saved). want names the gradients to compute; the others are None."""
    ctx = _ctx(ctx)
    inp = _InfoNCEInputs(query, passage, positive, hard, hard_keep, extra, passage_id, hard_id,
                         extra_id)
    opt = _loss_options(temperature, symmetric, mask_same_id, tau_plus, beta, share_hard)
    saved = _vector(saved, np.float32, "saved")
    gq = np.empty(inp.query.shape, np.float32) if "query" in want else None
    gp = np.empty(inp.passage.shape, np.float32) if "passage" in want else None
    gh = (np.empty(inp.hard.shape, np.float32)
          if "hard" in want and inp.hard is not None else None)
    gt = c_float() if "temperature" in want else None
    grads = _ffi.ns_infonce_grads(_ptr(gq, c_float), _ptr(gp, c_float), _ptr(gh, c_float),
                                  None if gt is None else ctypes.pointer(gt))
    ctx.check(_c("ns_infonce_backward")(ctx.handle, byref(inp.struct), byref(opt),
                                        saved.ctypes.data, float(grad_loss), byref(grads)))
    if gh is not None and inp.hard_shape is not None:
        gh = gh.reshape(inp.hard_shape)
    return InfoNCEGrads(gq, gp, gh, None if gt is None else float(gt.value))


# ------------------------------------------------------------------ queue


class Queue(_Owned):
    """A FIFO of past passage embeddings (f32) and ids, used as extra negatives."""

    def __init__(self, capacity: int, dim: int, ctx: Context = None):
        self.ctx = _ctx(ctx)
        h = c_void_p()
        self.ctx.check(_c("ns_queue_create")(self.ctx.handle, int(capacity), int(dim), byref(h)))
        self._handle = h.value
        self._free = _c("ns_queue_destroy")
        self.capacity, self.dim = int(capacity), int(dim)

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise InvalidArgument("negsamp.Queue: the queue is closed")
        return self._handle

    def push(self, rows, ids=None) -> None:
        rows = _float_rows(rows, "rows")
        ids_a = None if ids is None else _vector(ids, np.int64, "ids", size=rows.shape[0])
        self.ctx.check(_c("ns_queue_push")(self.ctx.handle, self.handle, _matrix(rows),
                                           None if ids_a is None else ids_a.ctypes.data))

    def __len__(self) -> int:
        return int(_c("ns_queue_size")(self.handle))

    def _view_raw(self):
        m = _ffi.ns_matrix()
        ids = POINTER(c_int64)()
        self.ctx.check(_c("ns_queue_view")(self.ctx.handle, self.handle, byref(m), byref(ids)))
        return m, ids

    def view(self):
        """(rows float32 n×dim, ids int64 n): copies of what the queue holds, storage order."""
        m, ids = self._view_raw()
        n, d = m.rows, m.cols
        if n == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64)
        ld = m.ld or d
        flat = np.ctypeslib.as_array(ctypes.cast(m.data, POINTER(c_float)),
                                     shape=((n - 1) * ld + d,))
        rows = np.lib.stride_tricks.as_strided(flat, shape=(n, d), strides=(ld * 4, 4)).copy()
        id_arr = np.ctypeslib.as_array(ids, shape=(n,)).copy() if ids else np.full(n, -1)
        return rows, id_arr

    @property
    def matrix(self) -> _ffi.ns_matrix:
        """The queue's rows as an ns_matrix (for the extra negatives of a loss)."""
        m = _ffi.ns_matrix()
        ids = POINTER(c_int64)()
        self.ctx.check(_c("ns_queue_view")(self.ctx.handle, self.handle, byref(m), byref(ids)))
        return m



# ------------------------------------------------------------------ communicators


class Comm(_Owned):
    """A communicator over ranks (ns_comm): MPI for CPU contexts, NCCL for CUDA contexts.
    Pass it to Step(comm=...). Build with Comm.mpi(...) or Comm.nccl(...)."""

    def __init__(self, handle, ctx: Context, keep=None):
        self._handle = handle
        self.ctx = ctx
        self._keep = keep
        self._free = _c("ns_comm_destroy")

    @staticmethod
    def _options(timeout_ms):
        o = _ffi.comm_options_init()
        if timeout_ms is not None:
            o.timeout_ms = int(timeout_ms)
        return o

    @classmethod
    def mpi(cls, mpi_comm, ctx: Context = None, timeout_ms: int = None) -> "Comm":
        """mpi_comm: an mpi4py communicator, or the address (int) of an MPI_Comm handle.
        MPI must be initialised; negsamp duplicates the communicator."""
        ctx = _ctx(ctx)
        if hasattr(mpi_comm, "py2f"):  # mpi4py
            from mpi4py import MPI  # noqa: F401
            address = MPI._addressof(mpi_comm)
        else:
            address = int(mpi_comm)
        h = c_void_p()
        o = cls._options(timeout_ms)
        ctx.check(_c("ns_comm_create_mpi")(ctx.handle, address, byref(o), byref(h)))
        return cls(h.value, ctx, mpi_comm)

    @classmethod
    def nccl(cls, unique_id: bytes, nranks: int, rank: int, ctx: Context,
             timeout_ms: int = None) -> "Comm":
        """An owned NCCL communicator from a unique id (nccl_unique_id() on rank 0, broadcast
        by the caller). ctx must be a CUDA context."""
        buf = ctypes.create_string_buffer(bytes(unique_id), _ffi.NS_NCCL_UNIQUE_ID_BYTES)
        if len(unique_id) != _ffi.NS_NCCL_UNIQUE_ID_BYTES:
            raise InvalidArgument(f"Comm.nccl: unique_id has {len(unique_id)} bytes; expected "
                                  f"{_ffi.NS_NCCL_UNIQUE_ID_BYTES}")
        h = c_void_p()
        o = cls._options(timeout_ms)
        ctx.check(_c("ns_comm_create_nccl_id")(ctx.handle, buf, int(nranks), int(rank), byref(o),
                                               byref(h)))
        return cls(h.value, ctx)

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise InvalidArgument("negsamp.Comm: the communicator is closed")
        return self._handle

    @property
    def rank(self) -> int:
        return int(_c("ns_comm_rank")(self.handle))

    @property
    def size(self) -> int:
        return int(_c("ns_comm_size")(self.handle))



def nccl_unique_id() -> bytes:
    """A fresh ncclUniqueId (NS_NCCL_UNIQUE_ID_BYTES bytes) for Comm.nccl."""
    buf = ctypes.create_string_buffer(_ffi.NS_NCCL_UNIQUE_ID_BYTES)
    _check(_c("ns_nccl_unique_id")(None, buf), None)
    return buf.raw


# ------------------------------------------------------------------ the step

StepResult = namedtuple("StepResult",
                        "loss per_query negative_id negative_row negative_count filtered")
StepGrads = namedtuple("StepGrads", "query positive candidate temperature")


class Step:
    """The orchestrated step (ns_step_forward / ns_step_backward): filter → sample h of the C
    candidates per query → InfoNCE, then its backward.

    filter, sampler and loss are dicts of the keyword arguments of negsamp.filter (rules),
    negsamp.sample (strategy, simans_a, simans_b, temperature, seed, step) and
    infonce_forward (temperature, symmetric, mask_same_id, tau_plus, beta, share_hard).
    The step owns its context (the step's state lives there) unless ctx is given."""

    def __init__(self, hard_negatives: int, *, filter=None, sampler=None, loss=None,
                 queue: Queue = None, enqueue: bool = False, comm: "Comm" = None,
                 ctx: Context = None):
        if ctx is None:
            ctx = (comm.ctx if comm is not None else
                   queue.ctx if queue is not None else Context("cpu"))
        self.ctx = _ctx(ctx)
        o = _ffi.step_options_init()
        o.hard_negatives = int(hard_negatives)
        f = dict(filter or {})
        f.setdefault("same_id", True)
        # The step options point to these: they live as long as the step.
        self._filter = _filter_options(**f)
        self._sampler = _sampler_options(**(sampler or {}))
        self._loss = _loss_options(**(loss or {}))
        o.filter = ctypes.pointer(self._filter)
        o.sampler = ctypes.pointer(self._sampler)
        o.loss = ctypes.pointer(self._loss)
        o.queue = None if queue is None else queue.handle
        o.enqueue = int(bool(enqueue))
        o.comm = None if comm is None else comm.handle
        self.comm = comm
        self.options = o
        self.queue = queue
        self._batch = None

    def forward(self, query, positive, candidate=None, *, candidate_id=None, positive_id=None,
                guide_score=None, guide_positive_score=None, query_offset=0,
                step=None) -> StepResult:
        """candidate: B×C×d (or (B·C)×d with candidate_id of B·C). step sets the sampler's
        step counter for this call. Returns copies of the library's results."""
        keep = {}
        q = keep["q"] = _float_rows(query, "query")
        p = keep["p"] = _float_rows(positive, "positive")
        B = q.shape[0]
        b = _ffi.ns_batch()
        b.query, b.positive = _matrix(q), _matrix(p)
        C = 0
        if candidate is not None:
            cand = np.asarray(candidate)
            self._cand_shape = cand.shape
            if cand.ndim == 3:
                C = cand.shape[1]
                cand = cand.reshape(-1, cand.shape[2])
            else:
                C = cand.shape[0] // B if B else 0
            c = keep["c"] = _float_rows(cand, "candidate")
            b.candidate = _matrix(c) if c.shape[0] else _EMPTY
        else:
            self._cand_shape = None
            b.candidate = _EMPTY
        b.candidates_per_query = C
        if positive_id is not None:
            keep["pid"] = _vector(positive_id, np.int64, "positive_id", size=B)
            b.positive_id = _ptr(keep["pid"], c_int64)
        if candidate_id is not None:
            keep["cid"] = _vector(candidate_id, np.int64, "candidate_id", size=B * C)
            b.candidate_id = _ptr(keep["cid"], c_int64)
        if guide_score is not None:
            keep["gs"] = _vector(guide_score, np.float32, "guide_score", size=B * C)
            b.guide_score = _ptr(keep["gs"], c_float)
        if guide_positive_score is not None:
            keep["gps"] = _vector(guide_positive_score, np.float32, "guide_positive_score",
                                  size=B)
            b.guide_positive_score = _ptr(keep["gps"], c_float)
        b.query_offset = int(query_offset)
        if step is not None:
            self._sampler.step = int(step)
        r = _ffi.ns_step_result()
        self.ctx.check(_c("ns_step_forward")(self.ctx.handle, byref(b), byref(self.options),
                                             byref(r)))
        # The library reads the batch again in the backward: keep its buffers alive.
        self._batch, self._keep = b, keep
        self._shapes = (q.shape, p.shape, keep["c"].shape if "c" in keep else None)
        h = self.options.hard_negatives

        def arr(ptr, n, dtype):
            if not ptr or n == 0:
                return np.zeros(n, dtype=dtype)
            return np.ctypeslib.as_array(ptr, shape=(n,)).astype(dtype, copy=True)
        per_query = arr(r.per_query, B, np.float32)
        nid = arr(r.negative_id, B * h, np.int64).reshape(B, h)
        nrow = arr(r.negative_row, B * h, np.int64).reshape(B, h)
        ncount = arr(r.negative_count, B, np.int64)
        return StepResult(float(r.loss), per_query, nid, nrow, ncount, _counts_dict(r.filtered))

    def backward(self, grad_loss: float = 1.0,
                 want=("query", "positive", "candidate", "temperature")) -> StepGrads:
        if self._batch is None:
            raise InvalidArgument("Step.backward: no forward to take the backward of")
        qs, ps, cs = self._shapes
        gq = np.empty(qs, np.float32) if "query" in want else None
        gp = np.empty(ps, np.float32) if "positive" in want else None
        gc = np.empty(cs, np.float32) if "candidate" in want and cs is not None else None
        gt = c_float() if "temperature" in want else None
        g = _ffi.ns_step_grads(_ptr(gq, c_float), _ptr(gp, c_float), _ptr(gc, c_float),
                               None if gt is None else ctypes.pointer(gt))
        self.ctx.check(_c("ns_step_backward")(self.ctx.handle, float(grad_loss), byref(g)))
        if gc is not None and self._cand_shape is not None:
            gc = gc.reshape(self._cand_shape)
        return StepGrads(gq, gp, gc, None if gt is None else float(gt.value))
