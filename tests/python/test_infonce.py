"""infonce_forward/backward against a double-precision reference written here; gradients
against central finite differences of that reference."""
import numpy as np
import pytest

import negsamp
from conftest import require


def _lse(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return m + np.log(np.exp(x - m).sum())


def ref_infonce(q, P, H=None, E=None, *, positive=None, h=0, hard_keep=None, passage_id=None,
                hard_id=None, extra_id=None, temperature=0.05, symmetric=False,
                mask_same_id=True, tau_plus=0.0, beta=0.0, share_hard=False):
    q = np.asarray(q, np.float64)
    P = np.asarray(P, np.float64)
    B, N = len(q), len(P)
    tau = float(temperature)
    pos = np.arange(B) if positive is None else np.asarray(positive)
    pid = np.arange(N) if passage_id is None else np.asarray(passage_id)
    per = np.zeros(B)
    for i in range(B):
        pj = pos[i]
        posid = pid[pj]
        lp = q[i] @ P[pj] / tau
        negs = [q[i] @ P[j] / tau for j in range(N)
                if j != pj and not (mask_same_id and pid[j] == posid)]
        if H is not None:
            rows = range(len(H)) if share_hard else range(i * h, i * h + h)
            for r in rows:
                if hard_keep is not None and not hard_keep[r]:
                    continue
                if hard_id is not None and (hard_id[r] == -1 or
                                            (mask_same_id and hard_id[r] == posid)):
                    continue
                negs.append(q[i] @ np.asarray(H[r], np.float64) / tau)
        if E is not None:
            for e in range(len(E)):
                if extra_id is not None and mask_same_id and extra_id[e] == posid:
                    continue
                negs.append(q[i] @ np.asarray(E[e], np.float64) / tau)
        if tau_plus == 0 and beta == 0:
            L = _lse([lp] + negs) - lp
        elif not negs:
            L = 0.0
        else:
            x = np.array(negs)
            n = len(x)
            rw = n * np.exp((1 + beta) * x).sum() / np.exp(beta * x).sum()
            ng = max((rw - tau_plus * n * np.exp(lp)) / (1 - tau_plus), n * np.exp(-1 / tau))
            L = -lp + np.log(np.exp(lp) + ng)
        if symmetric:
            col = [q[k] @ P[pj] / tau for k in range(B)
                   if k == i or not (mask_same_id and pid[pos[k]] == posid)]
            L = 0.5 * (L + _lse(col) - lp)
        per[i] = L
    return per.mean(), per


def _fd(f, x, eps=1e-5):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        a = f()
        x[idx] = old - eps
        b = f()
        x[idx] = old
        g[idx] = (a - b) / (2 * eps)
    return g


CASES = {
    "plain": dict(),
    "hard": dict(h=2),
    "hard_masked": dict(h=3, keep=True, hard_ids=True),
    "share_hard": dict(h=2, share_hard=True),
    "extra": dict(E=4, extra_ids=True),
    "symmetric": dict(symmetric=True),
    "symmetric_dup_ids": dict(symmetric=True, dup_ids=True, h=1),
    "positive_rows": dict(N=7, positive=True, h=1),
    "debiased": dict(tau_plus=0.1, h=2),
    "reweighted": dict(tau_plus=0.05, beta=0.5, h=2),
    "beta_only": dict(beta=1.0, E=3),
}


def _make(rng, case, B=4, d=5, dtype=np.float32):
    c = CASES[case]
    N = c.get("N", B)
    q = rng.standard_normal((B, d)).astype(dtype) * 0.5
    P = rng.standard_normal((N, d)).astype(dtype) * 0.5
    kw = dict(temperature=0.5, symmetric=c.get("symmetric", False),
              tau_plus=c.get("tau_plus", 0.0), beta=c.get("beta", 0.0),
              share_hard=c.get("share_hard", False))
    arrays = dict(query=q, passage=P)
    h = c.get("h", 0)
    if h:
        arrays["hard"] = (rng.standard_normal((B, h, d)) * 0.5).astype(dtype)
        if c.get("keep"):
            keep = rng.random((B, h)) < 0.7
            keep[0] = False
            arrays["hard_keep"] = keep
        if c.get("hard_ids"):
            hid = rng.integers(0, N, size=B * h)
            hid[1] = -1
            arrays["hard_id"] = hid
    if c.get("E"):
        arrays["extra"] = (rng.standard_normal((c["E"], d)) * 0.5).astype(dtype)
        if c.get("extra_ids"):
            arrays["extra_id"] = np.array([0, 1, 99, 100][:c["E"]])
    if c.get("positive"):
        arrays["positive"] = rng.permutation(N)[:B]
    if c.get("dup_ids"):
        pid = np.arange(N)
        pid[1] = pid[0]  # two queries share a positive document
        arrays["passage_id"] = pid
    return arrays, kw, h


def _ref_kwargs(arrays, kw, h):
    hard = arrays.get("hard")
    return dict(H=None if hard is None else hard.reshape(-1, hard.shape[-1]),
                E=arrays.get("extra"), positive=arrays.get("positive"), h=h,
                hard_keep=None if "hard_keep" not in arrays else arrays["hard_keep"].ravel(),
                passage_id=arrays.get("passage_id"), hard_id=arrays.get("hard_id"),
                extra_id=arrays.get("extra_id"), **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_infonce_forward_and_backward_match_reference(rng, case):
    require("ns_infonce_forward", "ns_infonce_backward")
    arrays, kw, h = _make(rng, case)
    fwd = negsamp.infonce_forward(**arrays, **kw)
    rk = _ref_kwargs(arrays, kw, h)
    q64 = arrays["query"].astype(np.float64)
    P64 = arrays["passage"].astype(np.float64)
    H64 = None if rk["H"] is None else rk["H"].astype(np.float64)
    rk["H"] = H64
    loss, per = ref_infonce(q64, P64, **rk)
    np.testing.assert_allclose(fwd.loss, loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fwd.per_query, per, rtol=1e-5, atol=1e-5)
    assert fwd.saved.shape == (len(q64), negsamp.NS_INFONCE_SAVED_PER_QUERY)

    g = negsamp.infonce_backward(**arrays, saved=fwd.saved, grad_loss=0.7, **kw)
    f = lambda: 0.7 * ref_infonce(q64, P64, **rk)[0]  # noqa: E731
    np.testing.assert_allclose(g.query, _fd(f, q64), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(g.passage, _fd(f, P64), rtol=1e-3, atol=1e-4)
    if H64 is not None:
        assert g.hard.shape == arrays["hard"].shape
        np.testing.assert_allclose(g.hard.reshape(H64.shape), _fd(f, H64), rtol=1e-3,
                                   atol=1e-4)
    tau = np.array([kw["temperature"]], np.float64)

    def ft():
        return 0.7 * ref_infonce(q64, P64, **{**rk, "temperature": tau[0]})[0]
    np.testing.assert_allclose(g.temperature, _fd(ft, tau)[0], rtol=1e-3, atol=1e-4)


def test_infonce_f16_strided_and_selected_gradients(rng):
    require("ns_infonce_forward", "ns_infonce_backward")
    wide = rng.standard_normal((5, 16)).astype(np.float32)
    q = wide[:, :6]
    P = rng.standard_normal((5, 6)).astype(np.float16)
    fwd = negsamp.infonce_forward(q, P, temperature=0.2)
    loss, per = ref_infonce(q, P, temperature=0.2)
    np.testing.assert_allclose(fwd.per_query, per, rtol=1e-4, atol=1e-4)
    g = negsamp.infonce_backward(q, P, fwd.saved, temperature=0.2, want=("query",))
    assert g.passage is None and g.hard is None and g.temperature is None
    full = negsamp.infonce_backward(q, P, fwd.saved, temperature=0.2)
    np.testing.assert_allclose(g.query, full.query, rtol=1e-6)


def test_infonce_errors(rng):
    require("ns_infonce_forward", "ns_infonce_backward")
    q = rng.standard_normal((3, 4)).astype(np.float32)
    P = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument, match="temperature"):
        negsamp.infonce_forward(q, P, temperature=0.0)
    with pytest.raises(negsamp.InvalidArgument, match="positive"):
        negsamp.infonce_forward(q, P, positive=[0, 1, 5])
    with pytest.raises(negsamp.InvalidArgument, match="passage"):
        negsamp.infonce_forward(q, P[:, :3])
    bad = q.copy()
    bad[2, 1] = np.inf
    with pytest.raises(negsamp.NonFinite) as e:
        negsamp.infonce_forward(bad, P)
    assert "ns_infonce_forward" in str(e.value)
    with pytest.raises(negsamp.InvalidArgument):
        negsamp.infonce_forward(q, P, hard=np.ones((2, 1, 4), np.float32))


def ref_grouped(q, P, H, h, qg, pg, hg, eg, E, weight, tau):
    """The same-group rule in float64, written out: loss and dL/dq, dL/dP, dL/dH, dL/dE of the
    mean over queries of lse(row) − l⁺, where a candidate of the query's group (ids >= 0,
    equal; never the query's own positive, passage i) gets log(weight) added to its logit
    (−inf at weight 0). Gradients: (softmax of the adjusted row − one-hot) · raw dl/dx."""
    B, N = len(q), len(P)
    adj_of = lambda g, i: (np.log(weight) if weight > 0 else -np.inf) \
        if g is not None and qg[i] >= 0 and g == qg[i] else 0.0  # noqa: E731
    dq, dP = np.zeros_like(q), np.zeros_like(P)
    dH = np.zeros_like(H) if H is not None else None
    dE = np.zeros_like(E) if E is not None else None
    total = 0.0
    for i in range(B):
        cols = []  # (logit, which, row)
        for j in range(N):
            a = 0.0 if j == i else adj_of(None if pg is None else pg[j], i)
            cols.append((q[i] @ P[j] / tau + a, "p", j))
        for r in range(i * h, i * h + h):
            cols.append((q[i] @ H[r] / tau + adj_of(None if hg is None else hg[r], i), "h", r))
        for e in range(0 if E is None else len(E)):
            cols.append((q[i] @ E[e] / tau + adj_of(None if eg is None else eg[e], i), "e", e))
        x = np.array([c[0] for c in cols])
        lse = _lse(x[np.isfinite(x)])
        total += lse - x[i]
        G = np.where(np.isfinite(x), np.exp(x - lse), 0.0)
        G[i] -= 1.0
        for g, (_, which, r) in zip(G, cols):
            rows = {"p": P, "h": H, "e": E}[which]
            dq[i] += g * rows[r] / tau
            {"p": dP, "h": dH, "e": dE}[which][r] += g * q[i] / tau
    return total / B, dq / B, dP / B, (None if dH is None else dH / B), \
        (None if dE is None else dE / B)


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_infonce_groups_match_float64_reference(rng, weight):
    """query_group / passage_group / hard_group / extra_group of infonce_forward and
    infonce_backward (ns_loss_groups): masked (weight 0) and down-weighted same-group
    candidates against the float64 reference, gradients of every input."""
    require("ns_infonce_forward", "ns_infonce_backward")
    B, d, h, E = 6, 5, 2, 3
    q = (rng.standard_normal((B, d)) * 0.5).astype(np.float32)
    P = (rng.standard_normal((B, d)) * 0.5).astype(np.float32)
    H = (rng.standard_normal((B * h, d)) * 0.5).astype(np.float32)
    X = (rng.standard_normal((E, d)) * 0.5).astype(np.float32)
    qg = np.array([0, 1, 0, 2, -1, 1])           # query 4 is in no group
    pg = np.array([0, 0, 0, 1, 1, -1])           # passage 0 is query 2's group: masked for 2
    hg = np.array([1, 0, 1, 1, 0, 5, 2, 2, 0, 0, 1, -1])
    eg = np.array([2, 0, -1])
    groups = dict(query_group=qg, passage_group=pg, hard_group=hg, extra_group=eg,
                  group_weight=weight)
    kw = dict(temperature=0.5, mask_same_id=False, hard=H, extra=X)
    fwd = negsamp.infonce_forward(q, P, **kw, **groups)
    ref = ref_grouped(*(a.astype(np.float64) for a in (q, P, H)), h, qg, pg, hg, eg,
                      X.astype(np.float64), weight, 0.5)
    np.testing.assert_allclose(fwd.loss, ref[0], rtol=1e-5, atol=1e-6)
    plain = negsamp.infonce_forward(q, P, **kw)
    assert abs(plain.loss - fwd.loss) > 1e-3  # the groups changed the loss
    g = negsamp.infonce_backward(q, P, fwd.saved, **kw, **groups)
    np.testing.assert_allclose(g.query, ref[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.passage, ref[2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.hard, ref[3], rtol=1e-4, atol=1e-5)
    # the query and candidate group ids are checked like every other argument
    with pytest.raises(negsamp.InvalidArgument, match="query_group"):
        negsamp.infonce_forward(q, P, query_group=qg[:5])
    with pytest.raises(negsamp.InvalidArgument, match="hard_group"):
        negsamp.infonce_forward(q, P, hard=H, query_group=qg, hard_group=hg[:3])
    with pytest.raises(negsamp.InvalidArgument, match="without query_group"):
        negsamp.infonce_forward(q, P, passage_group=pg)
    with pytest.raises(negsamp.InvalidArgument, match="group_weight|weight"):
        negsamp.infonce_forward(q, P, query_group=qg, passage_group=pg, group_weight=1.5)
