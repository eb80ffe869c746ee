"""The PyTorch custom ops and InfoNCELoss: opcheck, plain-PyTorch references, torch.compile.
Skipped as a whole where torch is not installed."""
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import negsamp  # noqa: E402
from negsamp import torch_ops  # noqa: E402,F401  (registers torch.ops.negsamp.*)
from conftest import require  # noqa: E402

ops = torch.ops.negsamp


def _devices():
    devs = ["cpu"]
    if torch.cuda.is_available() and negsamp.cuda_device_count() > 0:
        devs.append("cuda")
    return devs


DEVICES = pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        "cuda" not in _devices(),
        reason="no CUDA device for torch, or libnegsamp built without CUDA")),
])


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def _randn(gen, *shape, device="cpu", dtype=torch.float32, scale=0.5, grad=False):
    t = (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)
    return t.requires_grad_(grad)


def ref_loss(q, p, hard=None, temperature=0.05, symmetric=False, share_hard=True, keep=None):
    """Plain PyTorch: matmul + cross_entropy (what MNRL computes)."""
    q, p = q.float(), p.float()
    B = q.shape[0]
    logits = q @ p.T
    if hard is not None:
        h = hard.float()
        if share_hard:
            hl = q @ h.reshape(-1, h.shape[-1]).T
            if keep is not None:
                hl = hl.masked_fill(~keep.reshape(1, -1).bool(), float("-inf"))
        else:
            hl = torch.einsum("bd,bhd->bh", q, h)
            if keep is not None:
                hl = hl.masked_fill(~keep.bool(), float("-inf"))
        logits = torch.cat([logits, hl], 1)
    labels = torch.arange(B, device=q.device)
    loss = F.cross_entropy(logits / temperature, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy((p @ q.T) / temperature, labels))
    return loss


def _grads(loss, *ts):
    return torch.autograd.grad(loss, [t for t in ts if t is not None])


CASES = [dict(), dict(h=2), dict(h=3, share_hard=False), dict(h=2, keep=True),
         dict(h=2, keep=True, share_hard=False), dict(symmetric=True),
         dict(symmetric=True, h=1)]


@DEVICES
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "plain")
def test_infonce_matches_matmul_cross_entropy(gen, device, case):
    require("ns_infonce_forward", "ns_infonce_backward")
    B, d = 6, 16
    q = _randn(gen, B, d, device=device, grad=True)
    p = _randn(gen, B, d, device=device, grad=True)
    h = case.get("h", 0)
    hard = _randn(gen, B, h, d, device=device, grad=True) if h else None
    keep = None
    if case.get("keep"):
        keep = torch.rand(B, h, generator=gen) < 0.6
        keep[0] = False
        keep = keep.to(device)
    share = case.get("share_hard", True)
    sym = case.get("symmetric", False)
    loss, per_query, saved = ops.infonce(q, p, hard, keep, temperature=0.1, symmetric=sym,
                                         share_hard=share)
    ref = ref_loss(q, p, hard, 0.1, sym, share, keep)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert per_query.shape == (B,) and torch.allclose(per_query.mean(), loss, atol=1e-5)
    for a, b in zip(_grads(2.5 * loss, q, p, hard), _grads(2.5 * ref, q, p, hard)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@DEVICES
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_infonce_half_inputs_give_half_gradients(gen, device, dtype):
    require("ns_infonce_forward", "ns_infonce_backward")
    q = _randn(gen, 5, 8, device=device, dtype=dtype, grad=True)
    p = _randn(gen, 5, 8, device=device, dtype=dtype, grad=True)
    hard = _randn(gen, 5, 2, 8, device=device, dtype=dtype, grad=True)
    loss, _, _ = ops.infonce(q, p, hard, temperature=0.2, share_hard=True)
    ref = ref_loss(q, p, hard, 0.2)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    g = _grads(loss, q, p, hard)
    r = _grads(ref, q, p, hard)
    for a, b in zip(g, r):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


def _opcheck(op, args, kwargs=None):
    torch.library.opcheck(op, args, kwargs or {})


@DEVICES
def test_opcheck_infonce(gen, device):
    require("ns_infonce_forward", "ns_infonce_backward")
    B, h, d = 4, 2, 8
    q = _randn(gen, B, d, device=device, grad=True)
    p = _randn(gen, B, d, device=device, grad=True)
    hard = _randn(gen, B, h, d, device=device, grad=True)
    keep = torch.ones(B, h, dtype=torch.uint8, device=device)
    _opcheck(ops.infonce.default, (q, p, hard, keep), dict(temperature=0.3, share_hard=True))
    fwd = ops.infonce(q, p, hard, temperature=0.3)
    _opcheck(ops.infonce_backward.default,
             (torch.ones((), device=device), q.detach(), p.detach(), fwd[2], hard.detach()),
             dict(temperature=0.3))


@DEVICES
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "plain")
def test_fused_op_is_forward_then_backward(gen, device, case):
    """negsamp::infonce_fused (one ns_infonce_forward_backward in the forward, autograd scales
    the kept gradients) gives the loss and gradients of negsamp::infonce + its backward; on the
    CPU bit for bit (the library's fused call equals its two calls)."""
    require("ns_infonce_forward_backward")
    B, d = 6, 16
    q = _randn(gen, B, d, device=device, grad=True)
    p = _randn(gen, B, d, device=device, grad=True)
    h = case.get("h", 0)
    hard = _randn(gen, B, h, d, device=device, grad=True) if h else None
    keep = (torch.rand(B, h, generator=gen) < 0.6).to(device) if case.get("keep") else None
    kw = dict(temperature=0.1, symmetric=case.get("symmetric", False),
              share_hard=case.get("share_hard", True))
    a = ops.infonce(q, p, hard, keep, **kw)[0]
    b = torch_ops.infonce_loss(q, p, hard, keep, **kw)  # fused: gradients are required
    exact = device == "cpu"
    torch.testing.assert_close(b, a, rtol=0 if exact else 1e-6, atol=0 if exact else 1e-6)
    ga = _grads(2.5 * a, q, p, hard)
    for x, y in zip(_grads(2.5 * b, q, p, hard), ga):
        torch.testing.assert_close(x, y, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-6)
    # fused=False with every argument positional (trailing None inputs: autograd's
    # needs_input_grad is shorter then, which the backward once indexed past)
    c = torch_ops.infonce_loss(q, p, hard, keep, **kw, fused=False)
    for x, y in zip(_grads(2.5 * c, q, p, hard), ga):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with torch.no_grad():  # no gradient wanted: the plain forward
        torch.testing.assert_close(torch_ops.infonce_loss(q, p, hard, keep, **kw), a.detach())


@DEVICES
def test_fused_op_only_some_gradients_and_opcheck(gen, device):
    require("ns_infonce_forward_backward")
    B, h, d = 4, 2, 8
    q = _randn(gen, B, d, device=device, grad=True)
    p = _randn(gen, B, d, device=device)  # no gradient: not computed
    hard = _randn(gen, B, h, d, device=device, grad=True)
    ref = ref_loss(q, p, hard, 0.3)
    want = _grads(ref, q, hard)
    for fused in (True, False):
        loss = torch_ops.infonce_loss(q, p, hard, temperature=0.3, share_hard=True, fused=fused)
        for x, y in zip(_grads(loss, q, hard), want):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    # Every argument after passage at its default: torch drops them from the call, and
    # autograd's needs_input_grad holds two entries (the backward once indexed past them).
    want = _grads(ref_loss(q, p, None, 0.05), q)[0]
    for fused in (False, True):
        q.grad = None
        torch_ops.infonce_loss(q, p, fused=fused).backward()
        torch.testing.assert_close(q.grad, want, rtol=1e-4, atol=1e-5)
    _opcheck(ops.infonce_fused.default, (q, p, hard), dict(temperature=0.3, share_hard=True,
                                                          need_passage=False))


def ref_group_loss(q, p, qg, pg, weight, temperature):
    """Plain PyTorch: cross_entropy over q·pᵀ/τ with same-group off-diagonal logits masked
    (weight 0) or shifted by log(weight)."""
    logits = (q.double() @ p.double().T) / temperature
    same = (qg.unsqueeze(1) == pg.unsqueeze(0)) & (qg.unsqueeze(1) >= 0)
    same.fill_diagonal_(False)
    adj = torch.full_like(logits, float("-inf") if weight == 0 else float(np.log(weight)))
    logits = torch.where(same, logits + adj, logits)
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


@DEVICES
@pytest.mark.parametrize("weight", [0.0, 0.25])
@pytest.mark.parametrize("fused", [False, True])
def test_groups_mask_or_down_weight_same_group_candidates(gen, device, weight, fused):
    require("ns_infonce_forward", "ns_infonce_backward")
    B, d = 8, 12
    q = _randn(gen, B, d, device=device, grad=True)
    p = _randn(gen, B, d, device=device, grad=True)
    qg = torch.tensor([0, 0, 1, 1, 1, -1, 2, 0], device=device)
    pg = torch.tensor([0, 1, 1, 0, 1, 2, 2, -1], device=device)
    loss = torch_ops.infonce_loss(q, p, temperature=0.2, mask_same_id=False, query_group=qg,
                                  passage_group=pg, group_weight=weight, fused=fused)
    ref = ref_group_loss(q, p, qg, pg, weight, 0.2)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    for x, y in zip(_grads(loss, q, p), _grads(ref, q, p)):
        torch.testing.assert_close(x.double(), y.double(), rtol=1e-4, atol=1e-5)
    mod = negsamp.InfoNCELoss(temperature=0.2, mask_same_id=False, group_weight=weight)
    torch.testing.assert_close(mod(q, p, query_group=qg, positive_group=pg), loss)


def test_groups_are_checked(gen):
    q, p = _randn(gen, 3, 4), _randn(gen, 3, 4)
    with pytest.raises(negsamp.InvalidArgument, match="passage_group"):
        ops.infonce(q, p, query_group=torch.zeros(3, dtype=torch.int64),
                    passage_group=torch.zeros(5, dtype=torch.int64))
    with pytest.raises(negsamp.InvalidArgument, match="without query_group"):
        ops.infonce(q, p, passage_group=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(negsamp.InvalidArgument, match="weight"):
        ops.infonce(q, p, query_group=torch.zeros(3, dtype=torch.int64), group_weight=2.0)


@DEVICES
def test_opcheck_mine_topk_filter_sample(gen, device):
    require("ns_mine_topk", "ns_filter", "ns_sample")
    q = _randn(gen, 3, 8, device=device)
    corpus = _randn(gen, 30, 8, device=device)
    _opcheck(ops.mine_topk.default, (q, corpus, 5))
    off = torch.tensor([0, 2, 2, 3], device=device)
    ids = torch.tensor([4, 7, 1], device=device)
    _opcheck(ops.mine_topk.default, (q, corpus, 4), dict(exclude_offsets=off, exclude_ids=ids))
    _opcheck(ops.mine_topk.default, (q, corpus, 4), dict(workspace_bytes=1 << 20))
    cid = torch.arange(30, device=device).reshape(3, 10)
    s = _randn(gen, 3, 10, device=device)
    sp = _randn(gen, 3, device=device)
    _opcheck(ops.filter.default, (cid, s, sp),
             dict(rules=negsamp._ffi.NS_FILTER_MARGIN | negsamp._ffi.NS_FILTER_MAX_SCORE,
                  margin=0.1, max_score=0.5))
    keep = torch.rand(3, 10, generator=gen).to(device) < 0.7
    _opcheck(ops.sample.default, (cid, s, 4, sp, keep), dict(seed=5))
    _opcheck(ops.sample.default, (cid, s, 10), dict(strategy=negsamp._ffi.NS_SAMPLE_TOP))


@DEVICES
def test_mine_filter_sample_ops_match_numpy_api(gen, device):
    require("ns_mine_topk", "ns_filter", "ns_sample")
    q = _randn(gen, 4, 8, device=device)
    corpus = _randn(gen, 50, 8, device=device)
    idx, sc = ops.mine_topk(q, corpus, 6, scale=2.0, exclude_offsets=torch.tensor(
        [0, 1, 1, 1, 3], device=device), exclude_ids=torch.tensor([0, 5, 6], device=device))
    ridx, rsc = negsamp.mine_topk(q.cpu().numpy(), corpus.cpu().numpy(), 6, scale=2.0,
                                  exclude=[[0], [], [], [5, 6]])
    np.testing.assert_array_equal(idx.cpu().numpy(), ridx)
    np.testing.assert_allclose(sc.cpu().numpy(), rsc, rtol=1e-5, atol=1e-6)

    cid = torch.randint(0, 40, (4, 10), generator=gen).to(device)
    s = _randn(gen, 4, 10, device=device)
    sp = _randn(gen, 4, device=device)
    keep, counts = ops.filter(cid, s, sp, torch.tensor([0, 1, 2, 3, 4], device=device),
                              cid[:, 0].contiguous(),
                              rules=negsamp._ffi.NS_FILTER_SAME_ID | negsamp._ffi.NS_FILTER_MARGIN,
                              margin=0.05)
    rkeep, rcounts = negsamp.filter(cid.cpu().numpy(), s.cpu().numpy(), sp.cpu().numpy(),
                                    [[int(x)] for x in cid[:, 0].cpu()], margin=0.05)
    np.testing.assert_array_equal(keep.cpu().numpy(), rkeep)
    assert dict(zip(torch_ops.FILTER_COUNT_NAMES, counts.tolist())) == rcounts

    index, score, count = ops.sample(cid, s, 3, sp, keep, seed=11, step=2)
    r = negsamp.sample(cid.cpu().numpy(), s.cpu().numpy(), 3, positive_score=sp.cpu().numpy(),
                       keep=rkeep, seed=11, step=2)
    np.testing.assert_array_equal(index.cpu().numpy(), r.index)
    np.testing.assert_array_equal(count.cpu().numpy(), r.count)


def test_errors_surface_as_negsamp_exceptions(gen):
    require("ns_infonce_forward", "ns_mine_topk")
    q = _randn(gen, 3, 4)
    with pytest.raises(negsamp.InvalidArgument, match="temperature"):
        ops.infonce(q, q, temperature=0.0)
    with pytest.raises(negsamp.InvalidArgument, match=r"k \(9\)"):
        ops.mine_topk(q, _randn(gen, 8, 4), 9)
    bad = q.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(negsamp.NonFinite):
        ops.infonce(bad, q)


# ------------------------------------------------------------------ the module


@DEVICES
@pytest.mark.parametrize("symmetric", [False, True])
def test_infonce_loss_is_mnrl(gen, device, symmetric):
    """InfoNCELoss(normalize=True, temperature=1/scale) = sentence-transformers' MNRL
    (cos_sim · scale, cross_entropy over [positives | all hard negatives])."""
    require("ns_infonce_forward", "ns_infonce_backward")
    B, h, d = 8, 2, 12
    q = _randn(gen, B, d, device=device, grad=True)
    p = _randn(gen, B, d, device=device, grad=True)
    hard = _randn(gen, B, h, d, device=device, grad=True)
    mod = negsamp.InfoNCELoss(temperature=1 / 20.0, normalize=True, symmetric=symmetric)
    loss = mod(q, p, hard)
    nq, np_, nh = F.normalize(q, dim=-1), F.normalize(p, dim=-1), F.normalize(hard, dim=-1)
    ref = ref_loss(nq, np_, nh, 1 / 20.0, symmetric)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(loss, q, p, hard), _grads(ref, q, p, hard)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_infonce_loss_filters_and_samples_hard_negatives(gen):
    require("ns_infonce_forward", "ns_filter", "ns_sample")
    B, C, h, d = 5, 8, 3, 6
    q = _randn(gen, B, d, grad=True)
    p = _randn(gen, B, d, grad=True)
    cand = _randn(gen, B, C, d, grad=True)
    mod = negsamp.InfoNCELoss(temperature=0.2, share_hard=False, hard_negatives=h,
                              filter=dict(max_score=0.3), sampler=dict(strategy="top"))
    loss = mod(q, p, cand)
    with torch.no_grad():
        s = torch.einsum("bd,bcd->bc", q, cand)
    rows = []
    for i in range(B):
        ok = [j for j in range(C) if s[i, j] <= 0.3]
        rows.append(sorted(ok, key=lambda j: (-float(s[i, j]), j))[:h])
    sel = torch.zeros(B, h, d)
    keep = torch.zeros(B, h, dtype=torch.bool)
    for i, r in enumerate(rows):
        sel[i, :len(r)] = cand[i, r].detach()
        keep[i, :len(r)] = True
    ref = ref_loss(q, p, sel, 0.2, share_hard=False, keep=keep)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(loss, cand)
    chosen = torch.zeros(B, C, dtype=torch.bool)
    for i, r in enumerate(rows):
        chosen[i, r] = True
    assert torch.all(g[~chosen] == 0) and torch.all(g[chosen].abs().sum(-1) > 0)


def test_infonce_loss_samples_by_ids_with_same_id_filter(gen):
    require("ns_infonce_forward", "ns_filter", "ns_sample")
    B, C, d = 4, 6, 5
    q, p, cand = _randn(gen, B, d, grad=True), _randn(gen, B, d), _randn(gen, B, C, d)
    pid = torch.arange(B) * 100
    cid = torch.arange(B * C).reshape(B, C) + 1000
    cid[:, 0] = pid  # the positive itself among the candidates: must be filtered out
    mod = negsamp.InfoNCELoss(temperature=0.5, share_hard=False, hard_negatives=C - 1,
                              filter=dict(same_id=True), sampler=dict(strategy="uniform",
                                                                       seed=3))
    loss = mod(q, p, cand, positive_id=pid, hard_id=cid)
    ref = ref_loss(q, p, cand[:, 1:], 0.5, share_hard=False)  # all but the positive
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_infonce_loss_filters_when_h_is_at_least_c(gen):
    # A filter is applied whatever h is: with h == C (keep every survivor), h > C and no h at
    # all, the positive planted among the candidates is masked (it used to be drawn as a
    # negative: the filter ran only for h < C).
    require("ns_infonce_forward", "ns_filter", "ns_sample")
    B, C, d = 4, 5, 6
    q, p, cand = _randn(gen, B, d, grad=True), _randn(gen, B, d), _randn(gen, B, C, d)
    pid = torch.arange(B) * 100
    cid = torch.arange(B * C).reshape(B, C) + 1000
    cid[:, 2] = pid
    ref = ref_loss(q, p, cand[:, [0, 1, 3, 4]], 0.5, share_hard=False)
    for h in (C, C + 3, None):
        mod = negsamp.InfoNCELoss(temperature=0.5, share_hard=False, hard_negatives=h,
                                  filter=dict(same_id=True))
        loss = mod(q, p, cand, positive_id=pid, hard_id=cid)
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5, msg=f"h={h}")
    # a score rule too, without ids: max_score drops the candidates above it
    with torch.no_grad():
        s = torch.einsum("bd,bcd->bc", q, cand)
    cut = float(s.median())
    mod = negsamp.InfoNCELoss(temperature=0.5, share_hard=False, hard_negatives=C,
                              filter=dict(max_score=cut))
    ref = ref_loss(q, p, cand, 0.5, share_hard=False, keep=s <= cut)
    torch.testing.assert_close(mod(q, p, cand), ref, rtol=1e-5, atol=1e-5)


def test_infonce_loss_names_the_shapes_the_caller_passed(gen):
    # The op's own messages spoke of "positive is NULL" (its index array) for too few positive
    # rows and of the unsqueezed (B·C, 1, d) for flat hard rows.
    q, p = _randn(gen, 4, 8), _randn(gen, 4, 8)
    mod = negsamp.InfoNCELoss(temperature=0.1)
    for args, msg in [((q, p[:3]), r"positive has 3 rows but there are 4 queries"),
                      ((q, p, _randn(gen, 12, 8)), r"hard must be .* got \(12, 8\) .*reshape"),
                      ((q, p, _randn(gen, 5, 2, 8)), r"with B = 4; got \(5, 2, 8\)"),
                      ((q[0], p[0]), r"query and positive must be \(B, d\); got query \(8,\)")]:
        with pytest.raises(negsamp.InvalidArgument, match=msg):
            mod(*args)
    # filter same_id without ids: it was skipped in silence (no ids to compare)
    same = negsamp.InfoNCELoss(temperature=0.1, hard_negatives=1, filter=dict(same_id=True))
    with pytest.raises(negsamp.InvalidArgument, match="hard_id missing, positive_id given"):
        same(q, p, _randn(gen, 4, 3, 8), positive_id=torch.arange(4))


def test_infonce_loss_constructor_names_bad_arguments():
    for kw, msg in [(dict(temperature=-1.0), r"temperature \(-1.0\) must be finite and > 0"),
                    (dict(temperature=float("nan")), r"temperature \(nan\)"),
                    (dict(hard_negatives=0), r"hard_negatives \(0\) must be at least 1"),
                    (dict(hard_negatives=2.5), r"hard_negatives \(2.5\) must be an integer"),
                    (dict(sampler=dict(strategy="top")), r"sampler .* hard_negatives is None")]:
        with pytest.raises(negsamp.InvalidArgument, match=msg):
            negsamp.InfoNCELoss(**kw)


def test_torch_compile_traces_the_loss(gen):
    require("ns_infonce_forward", "ns_infonce_backward", "ns_filter", "ns_sample")
    B, C, d = 6, 5, 8
    mod = negsamp.InfoNCELoss(temperature=0.1, normalize=True, hard_negatives=3,
                              sampler=dict(strategy="softmax", temperature=0.5, seed=1))

    def loss_fn(q, p, cand):
        return mod(q, p, cand, step=0)

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    q, p, cand = (_randn(gen, B, d, grad=True), _randn(gen, B, d, grad=True),
                  _randn(gen, B, C, d, grad=True))
    want = loss_fn(q, p, cand)
    got = compiled(q, p, cand)
    torch.testing.assert_close(got, want)
    # The backward runs through the compiled graph's autograd (aot_eager traces it too).
    for a, b in zip(_grads(got, q, p, cand), _grads(want, q, p, cand)):
        torch.testing.assert_close(a, b)


def test_context_per_thread_and_device(gen):
    require("ns_infonce_forward")
    import threading
    q = _randn(gen, 8, 16)
    p = _randn(gen, 8, 16)
    want = ops.infonce(q, p, temperature=0.1)[0]
    got, ctxs = [None] * 3, [None] * 3

    def work(t):
        ctxs[t] = torch_ops.context_for(torch.device("cpu"))
        assert torch_ops.context_for(torch.device("cpu")) is ctxs[t]
        for _ in range(10):
            got[t] = ops.infonce(q, p, temperature=0.1)[0]
    ts = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len({id(c) for c in ctxs}) == 3
    for g in got:
        torch.testing.assert_close(g, want)


@pytest.mark.parametrize("symmetric", [False, True])
def test_learnable_temperature_gradient(gen, symmetric):
    require("ns_infonce_forward", "ns_infonce_backward")
    B, h, d = 6, 2, 8
    q, p = _randn(gen, B, d, grad=True), _randn(gen, B, d, grad=True)
    hard = _randn(gen, B, h, d, grad=True)
    mod = negsamp.InfoNCELoss(temperature=0.2, symmetric=symmetric, learn_temperature=True)
    loss = mod(q, p, hard)
    tau = torch.tensor(0.2, requires_grad=True)
    ref = ref_loss(q, p, hard, tau, symmetric)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    (g_log_tau,) = torch.autograd.grad(loss, [mod.log_temperature])
    (g_tau,) = torch.autograd.grad(ref, [tau])
    torch.testing.assert_close(g_log_tau, g_tau * 0.2, rtol=1e-4, atol=1e-5)  # dL/dlogτ = τ·dL/dτ


# ------------------------------------------------------------------ what the ops refuse


@DEVICES
def test_infonce_backward_checks_saved(gen, device):
    require("ns_infonce_forward", "ns_infonce_backward")
    B, d = 5, 8
    q, p = _randn(gen, B, d, device=device), _randn(gen, B, d, device=device)
    one = torch.ones((), device=device)
    saved = ops.infonce(q, p, temperature=0.1)[2]
    assert saved.shape == (B, negsamp.NS_INFONCE_SAVED_PER_QUERY)
    for bad in (saved.reshape(-1), saved[:B - 1], saved[:, :4]):
        with pytest.raises(negsamp.InvalidArgument, match="infonce_backward: saved has shape"):
            ops.infonce_backward(one, q, p, bad, temperature=0.1)
    with pytest.raises(negsamp.InvalidArgument, match="saved has dtype torch.float64"):
        ops.infonce_backward(one, q, p, saved.double(), temperature=0.1)
    # The saved of another batch of the same size: refused, not -inf gradients.
    q2, p2 = _randn(gen, B, d, device=device), _randn(gen, B, d, device=device)
    other = ops.infonce(q2, p2, temperature=0.1)[2]
    with pytest.raises(negsamp.InvalidArgument, match="saved is not from the forward"):
        ops.infonce_backward(one, q, p, other, temperature=0.1)
    inf = saved.clone()
    inf[1, 3] = float("inf")
    with pytest.raises(negsamp.NonFinite, match=r"saved\[1, 3\]"):
        ops.infonce_backward(one, q, p, inf, temperature=0.1)
    # The right one passes, also transposed twice (non-contiguous), with the same gradients.
    g = ops.infonce_backward(one, q, p, saved, temperature=0.1)
    g2 = ops.infonce_backward(one, q, p, saved.t().contiguous().t(), temperature=0.1)
    for a, b in zip(g, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@DEVICES
def test_mine_topk_op_validates_exclusions_and_k(gen, device):
    require("ns_mine_topk")
    q, corpus = _randn(gen, 3, 4, device=device), _randn(gen, 20, 4, device=device)
    ids = torch.tensor([1, 2], device=device)

    def off(*v, dtype=torch.int64):
        return torch.tensor(v, dtype=dtype, device=device)
    for offsets, exc_ids, match in [
            (off(0, 1, 2, 10**6), ids, r"exclude.offsets\[3\] \(1000000\) is larger than the "
                                       r"number of ids \(2\)"),
            (off(0, 1, 2), ids, "exclude has 2 lists"),
            (off(0, 2, 1, 2), ids, "must not decrease"),
            (off(0, 1, 2, 2, dtype=torch.float32), ids, "exclude_offsets has dtype"),
            (off(0, 1, 2, 2), ids.double(), "exclude_ids has dtype torch.float64")]:
        with pytest.raises(negsamp.InvalidArgument, match=match):
            ops.mine_topk(q, corpus, 4, exclude_offsets=offsets, exclude_ids=exc_ids)
    with pytest.raises(negsamp.InvalidArgument,
                       match=r"^mine_topk: k \(1000000000000\) is larger than the corpus"):
        ops.mine_topk(q, corpus, 10**12)
    with pytest.raises(negsamp.InvalidArgument, match="corpus has dtype torch.int64"):
        ops.mine_topk(q, torch.ones(20, 4, dtype=torch.int64, device=device), 3)


@DEVICES
def test_filter_and_sample_ops_refuse_silent_conversions(gen, device):
    require("ns_filter", "ns_sample")
    cid = torch.arange(12, device=device).reshape(2, 6)
    s = _randn(gen, 2, 6, device=device)
    with pytest.raises(negsamp.InvalidArgument, match="candidate_id has dtype torch.float32"):
        ops.sample(cid.float() + 0.5, s, 2)  # used to be truncated to integer ids
    with pytest.raises(negsamp.InvalidArgument, match=r"^sample: m \(1000000000000\) is larger"):
        ops.sample(cid, s, 10**12)
    with pytest.raises(negsamp.InvalidArgument, match="sample: seed .-1. must be at least 0"):
        ops.sample(cid, s, 2, seed=-1)
    with pytest.raises(negsamp.InvalidArgument, match="positive.offsets.2. .9. is larger"):
        ops.filter(cid, s, s[:, 0].contiguous(), torch.tensor([0, 1, 9], device=device),
                   torch.tensor([3, 4], device=device), rules=negsamp._ffi.NS_FILTER_SAME_ID)


def test_infonce_op_refuses_out_of_range_positive_and_int_embeddings(gen):
    require("ns_infonce_forward")
    q, p = _randn(gen, 4, 8), _randn(gen, 6, 8)
    with pytest.raises(negsamp.InvalidArgument, match=r"infonce: positive\[2\] \(6\) is outside"):
        ops.infonce(q, p, positive=torch.tensor([0, 1, 6, 2]))
    with pytest.raises(negsamp.InvalidArgument, match="query has dtype torch.int32"):
        ops.infonce(torch.ones(4, 8, dtype=torch.int32), p)


@pytest.mark.skipif("cuda" not in _devices(), reason="needs a CUDA device for torch and "
                                                     "libnegsamp")
def test_tensors_on_two_devices_are_refused(gen):
    require("ns_infonce_forward", "ns_mine_topk")
    q = _randn(gen, 4, 8, device="cuda")
    with pytest.raises(negsamp.InvalidArgument, match="passage is on cpu but the call runs on"):
        ops.infonce(q, _randn(gen, 4, 8))
    with pytest.raises(negsamp.InvalidArgument, match="exclude_offsets is on cpu"):
        ops.mine_topk(q, _randn(gen, 9, 8, device="cuda"), 2,
                      exclude_offsets=torch.tensor([0, 0, 0, 0, 0]),
                      exclude_ids=torch.zeros(0, dtype=torch.int64, device="cuda"))


# ------------------------------------------------------------------ the module's own draws


def _draw_module(**sampler):
    return negsamp.InfoNCELoss(temperature=0.2, share_hard=False, hard_negatives=3,
                               sampler=dict(seed=5, **sampler))


def test_infonce_loss_default_strategy_is_top_with_or_without_a_sampler_dict(gen):
    # sampler={"seed": 5} (no strategy) drew by SimANS while no sampler drew the top h.
    require("ns_sample")
    B, C, d = 8, 9, 6
    q, p, cand = _randn(gen, B, d), _randn(gen, B, d), _randn(gen, B, C, d)
    top = torch.einsum("bd,bcd->bc", q, cand).argsort(dim=1, descending=True, stable=True)[:, :3]
    for mod in (_draw_module(), negsamp.InfoNCELoss(temperature=0.2, hard_negatives=3)):
        rows, _ = mod.select(q, p, cand)
        assert torch.equal(rows, top), (rows, top)


@pytest.mark.parametrize("with_ids", [False, True])
def test_infonce_loss_draws_do_not_depend_on_the_batch_split(gen, with_ids):
    require("ns_sample")
    B, C, d = 8, 9, 6
    q, p, cand = _randn(gen, B, d), _randn(gen, B, d), _randn(gen, B, C, d)
    hid = torch.randperm(10_000, generator=gen)[:B * C].reshape(B, C) if with_ids else None
    mod = _draw_module(strategy="uniform")
    whole, _ = mod.select(q, p, cand, hid, step=4, query_offset=100)
    parts = [mod.select(q[a:b], p[a:b], cand[a:b], None if hid is None else hid[a:b], step=4,
                        query_offset=100 + a)[0] for a, b in ((0, 3), (3, 4), (4, 8))]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    # Every query draws h distinct columns of its own row.
    assert whole.min() >= 0 and whole.max() < C
    assert all(len(set(r.tolist())) == 3 for r in whole)


@pytest.mark.parametrize("with_ids", [False, True])
def test_infonce_loss_draws_differ_between_query_offsets(gen, with_ids):
    """Two ranks (or two unrelated batches of one step) holding the same-shaped batch used to
    draw the same columns; keyed by the global query id they draw independently."""
    require("ns_sample")
    B, C, d = 16, 12, 4
    q, p, cand = _randn(gen, B, d), _randn(gen, B, d), _randn(gen, B, C, d)
    hid = torch.arange(B * C).reshape(B, C) if with_ids else None
    mod = _draw_module(strategy="uniform")
    r0, _ = mod.select(q, p, cand, hid, step=1, query_offset=0)
    r1, _ = mod.select(q, p, cand, hid, step=1, query_offset=B)
    same_rows = sum(bool((a.sort().values == b.sort().values).all()) for a, b in zip(r0, r1))
    # P(one row's 3-of-12 set repeats) = 1/220: 16 equal rows by chance is out of the question.
    assert same_rows < 4, (r0, r1)


def test_infonce_loss_draws_are_the_steps(gen):
    """The module's draw equals ns_step's (negsamp.Step) for the same batch, offset and step:
    the same keys (global query id, global slot id) on both sides."""
    require("ns_sample", "ns_step_forward")
    B, C, d, h = 6, 7, 5, 3
    q, p, cand = _randn(gen, B, d), _randn(gen, B, d), _randn(gen, B, C, d)
    mod = negsamp.InfoNCELoss(temperature=0.2, share_hard=False, hard_negatives=h,
                              sampler=dict(strategy="uniform", seed=9))
    rows, _ = mod.select(q, p, cand, step=3, query_offset=11)
    st = negsamp.Step(h, sampler=dict(strategy="uniform", seed=9))
    res = st.forward(q.numpy(), p.numpy(), cand.numpy(), query_offset=11, step=3)
    want = res.negative_row - (np.arange(B) * C)[:, None]
    np.testing.assert_array_equal(rows.numpy(), want)


def test_infonce_loss_default_offset_follows_the_rank(gen, monkeypatch):
    import torch.distributed as dist
    assert negsamp.InfoNCELoss.default_query_offset(8) == 0
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 3)
    assert negsamp.InfoNCELoss.default_query_offset(8) == 24


def test_infonce_loss_maps_a_drawn_id_to_its_kept_copy(gen):
    """An id present twice in a row whose first copy is filtered out: the drawn id's row is
    the kept copy, never the removed one."""
    require("ns_filter", "ns_sample")
    q = torch.tensor([[1.0, 0.0, 0.0]])
    p = torch.tensor([[0.0, 1.0, 0.0]])
    cand = torch.tensor([[[5.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.3, 0, 0]]])
    hid = torch.tensor([[7, 8, 7, 9]])  # id 7 in slots 0 (score 5, filtered) and 2
    mod = negsamp.InfoNCELoss(temperature=0.5, share_hard=False, hard_negatives=3,
                              filter=dict(max_score=1.0), sampler=dict(strategy="top"))
    rows, keep = mod.select(q, p, cand, hid, step=0, query_offset=0)
    assert sorted(rows[0].tolist()) == [1, 2, 3]  # ids 8, 7 (its kept copy), 9
