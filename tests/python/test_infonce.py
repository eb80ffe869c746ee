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
