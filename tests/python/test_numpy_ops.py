"""The numpy API against double-precision references written here."""
import numpy as np
import pytest

import negsamp
from conftest import require


def ref_scores(q, p, scale=1.0, normalize=False):
    q = np.asarray(q, np.float64)
    p = np.asarray(p, np.float64)
    if normalize:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
    return scale * (q @ p.T)


# ------------------------------------------------------------------ similarity

@pytest.mark.parametrize("B,N,d", [(1, 1, 1), (3, 5, 7), (17, 33, 64), (2, 70, 3)])
def test_similarity_matches_reference(rng, B, N, d):
    require("ns_similarity")
    q = rng.standard_normal((B, d)).astype(np.float32)
    p = rng.standard_normal((N, d)).astype(np.float32)
    s = negsamp.similarity(q, p, scale=0.5)
    assert s.shape == (B, N) and s.dtype == np.float32
    np.testing.assert_allclose(s, ref_scores(q, p, 0.5), rtol=1e-5, atol=1e-5 * np.sqrt(d))
    s = negsamp.similarity(q, p, normalize=True)
    np.testing.assert_allclose(s, ref_scores(q, p, normalize=True), rtol=1e-5, atol=1e-5)


def test_similarity_row_strided_f16_and_f64_inputs(rng):
    require("ns_similarity")
    wide = rng.standard_normal((6, 20)).astype(np.float32)
    q = wide[:, :8]                      # ld = 20 > cols: passed without a copy
    p16 = rng.standard_normal((9, 8)).astype(np.float16)
    s = negsamp.similarity(q, p16)
    np.testing.assert_allclose(s, ref_scores(q, p16), rtol=1e-4, atol=1e-4)
    s64 = negsamp.similarity(q.astype(np.float64), p16.astype(np.float64))
    np.testing.assert_allclose(s64, ref_scores(q, p16), rtol=1e-4, atol=1e-4)
    # Column-strided views are copied into a usable layout.
    qt = np.asfortranarray(q)
    np.testing.assert_allclose(negsamp.similarity(qt, p16), s, rtol=1e-6)


def test_similarity_errors_carry_the_library_message(rng):
    require("ns_similarity")
    q = rng.standard_normal((2, 3)).astype(np.float32)
    p = rng.standard_normal((2, 4)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument) as e:
        negsamp.similarity(q, p)
    assert "ns_similarity" in str(e.value) and e.value.status == 1
    assert isinstance(e.value, ValueError)
    q[1, 2] = np.nan
    with pytest.raises(negsamp.NonFinite) as e:
        negsamp.similarity(q, q)
    assert "ns_similarity" in str(e.value) and e.value.status == 7
    with pytest.raises(negsamp.InvalidArgument):
        negsamp.similarity(np.ones(3, np.float32), p)  # 1-D: rejected in Python


# ------------------------------------------------------------------ mine_topk

def ref_topk(q, c, k, exclude=None, scale=1.0, normalize=False):
    S = ref_scores(q, c, scale, normalize)
    B, N = S.shape
    idx = np.full((B, k), -1, np.int64)
    sc = np.full((B, k), -np.inf)
    for i in range(B):
        allowed = [j for j in range(N) if not exclude or j not in set(exclude[i])]
        order = sorted(allowed, key=lambda j: (-S[i, j], j))[:k]
        idx[i, :len(order)] = order
        sc[i, :len(order)] = S[i, order]
    return idx, sc, S


@pytest.mark.parametrize("B,N,d,k", [(1, 1, 1, 1), (4, 50, 8, 1), (5, 37, 16, 37),
                                     (3, 300, 5, 20)])
def test_mine_topk_matches_reference(rng, B, N, d, k):
    require("ns_mine_topk")
    q = rng.standard_normal((B, d)).astype(np.float32)
    c = rng.standard_normal((N, d)).astype(np.float32)
    index, score = negsamp.mine_topk(q, c, k, scale=2.0)
    ridx, rsc, S = ref_topk(q, c, k, scale=2.0)
    assert index.shape == (B, k) and index.dtype == np.int64 and score.dtype == np.float32
    np.testing.assert_allclose(score, rsc, rtol=1e-5, atol=1e-5)
    # The returned indices point at the returned scores, without duplicates.
    np.testing.assert_allclose(np.take_along_axis(S, index, 1), score, rtol=1e-5, atol=1e-5)
    for i in range(B):
        assert len(set(index[i])) == k
    # Where the reference's neighbours are well separated, the order is the same.
    gaps = np.abs(np.diff(rsc, axis=1)).min(initial=1.0) if k > 1 else 1.0
    if gaps > 1e-4:
        np.testing.assert_array_equal(index, ridx)


def test_mine_topk_exclusions_lists_and_csr(rng):
    require("ns_mine_topk")
    q = rng.standard_normal((3, 6)).astype(np.float32)
    c = rng.standard_normal((8, 6)).astype(np.float32)
    exclude = [[0, 1, 2], [], list(range(7))]
    index, score = negsamp.mine_topk(q, c, 4, exclude=exclude)
    ridx, rsc, _ = ref_topk(q, c, 4, exclude)
    np.testing.assert_array_equal(index, ridx)
    np.testing.assert_allclose(score[np.isfinite(rsc)], rsc[np.isfinite(rsc)], rtol=1e-5)
    assert np.all(score[2, 1:] == -np.inf) and np.all(index[2, 1:] == -1)
    offsets = np.array([0, 3, 3, 10])
    ids = np.array([0, 1, 2] + list(range(7)))
    i2, s2 = negsamp.mine_topk(q, c, 4, exclude=(offsets, ids))
    np.testing.assert_array_equal(i2, index)
    i3, _ = negsamp.mine_topk(q, c, 4, exclude=negsamp.IdLists(offsets=offsets, ids=ids))
    np.testing.assert_array_equal(i3, index)


def test_mine_topk_progress_and_cancel(rng):
    require("ns_mine_topk")
    q = rng.standard_normal((4, 8)).astype(np.float32)
    c = rng.standard_normal((100, 8)).astype(np.float32)
    seen = []
    negsamp.mine_topk(q, c, 3, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1]
    with pytest.raises(negsamp.InvalidArgument, match="cancel"):
        negsamp.mine_topk(q, c, 3, progress=lambda done, total: True)

    class Boom(Exception):
        pass

    def boom(done, total):
        raise Boom()
    with pytest.raises(Boom):
        negsamp.mine_topk(q, c, 3, progress=boom)


def test_mine_topk_errors(rng):
    require("ns_mine_topk")
    q = rng.standard_normal((2, 4)).astype(np.float32)
    c = rng.standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument) as e:
        negsamp.mine_topk(q, c, 11)
    # Checked in Python before the B×k outputs are allocated, in the library's words.
    assert str(e.value) == "mine_topk: k (11) is larger than the corpus (10 rows)"
    with pytest.raises(negsamp.InvalidArgument, match="k"):
        negsamp.mine_topk(q, c, 0)
    c[3, 1] = np.nan  # what only the library sees still carries its message
    with pytest.raises(negsamp.NonFinite) as e:
        negsamp.mine_topk(q, c, 2)
    assert "ns_mine_topk" in str(e.value)


def test_mine_topk_workspace_bytes(rng):
    """The CUDA device workspace budget reaches the options (the CPU ignores it: same result);
    a negative or non-integer budget is an argument error."""
    require("ns_mine_topk")
    q = rng.standard_normal((3, 8)).astype(np.float32)
    c = rng.standard_normal((50, 8)).astype(np.float32)
    i0, s0 = negsamp.mine_topk(q, c, 5)
    i1, s1 = negsamp.mine_topk(q, c, 5, workspace_bytes=1 << 20)
    assert np.array_equal(i0, i1) and np.array_equal(s0, s1)
    with pytest.raises(negsamp.InvalidArgument, match="workspace_bytes"):
        negsamp.mine_topk(q, c, 5, workspace_bytes=-1)
    with pytest.raises(negsamp.InvalidArgument, match="workspace_bytes"):
        negsamp.mine_topk(q, c, 5, workspace_bytes=1.5)


# ------------------------------------------------------------------ .npy


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_npy_open_maps_and_mines(rng, tmp_path, dtype):
    require("ns_npy_open", "ns_mine_topk")
    corpus = rng.standard_normal((40, 12)).astype(dtype)
    path = tmp_path / "corpus.npy"
    np.save(path, corpus)
    with negsamp.npy_open(path) as f:
        assert f.shape == (40, 12) and f.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(f.array, corpus)
        q = rng.standard_normal((3, 12)).astype(np.float32)
        i1, s1 = negsamp.mine_topk(q, f, 5)
        i2, s2 = negsamp.mine_topk(q, corpus, 5)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)


def test_npy_errors(tmp_path):
    require("ns_npy_open")
    with pytest.raises(negsamp.IOError) as e:
        negsamp.npy_open(tmp_path / "missing.npy")
    assert e.value.status == 8 and "missing.npy" in str(e.value)
    assert isinstance(e.value, OSError) and isinstance(e.value, negsamp.NegsampError)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(negsamp.IOError):
        negsamp.npy_open(bad)
    np.save(tmp_path / "int.npy", np.arange(6, dtype=np.int32).reshape(2, 3))
    with pytest.raises(negsamp.NegsampError):
        negsamp.npy_open(tmp_path / "int.npy")


# ------------------------------------------------------------------ filter


def ref_filter(ids, s, sp, pos_ids=None, g=None, gp=None, same_id=False, max_score=None,
               min_score=None, margin=None, rel_margin=None, rank=None, guide_margin=None,
               guide_relative=False):
    B, C = s.shape
    keep = np.zeros((B, C), bool)
    counts = dict(same_id=0, max_score=0, min_score=0, margin=0, rel_margin=0, rank=0, guide=0,
                  empty=0)
    for i in range(B):
        for j in range(C):
            if ids[i, j] == -1:
                counts["empty"] += 1
                continue
            v = float(s[i, j])
            hits = {
                "same_id": same_id and ids[i, j] in set(pos_ids[i]),
                "max_score": max_score is not None and v > max_score,
                "min_score": min_score is not None and v < min_score,
                "margin": margin is not None and v > float(sp[i]) - margin,
                "rel_margin": rel_margin is not None and v > float(sp[i]) - abs(float(sp[i])) * rel_margin,
                "rank": rank is not None and not (rank[0] <= j < rank[1]),
                "guide": guide_margin is not None and (
                    float(g[i, j]) > float(gp[i]) - (abs(float(gp[i])) * guide_margin
                                                      if guide_relative else guide_margin)),
            }
            for k, hit in hits.items():
                counts[k] += hit
            keep[i, j] = not any(hits.values())
    counts["kept"] = int(keep.sum())
    counts["examined"] = B * C
    counts["removed"] = B * C - counts["kept"] - counts["empty"]
    return keep, counts


@pytest.mark.parametrize("B,C", [(1, 1), (5, 9), (16, 40)])
def test_filter_matches_reference(rng, B, C):
    require("ns_filter")
    ids = rng.integers(0, 3 * C, size=(B, C))
    ids[rng.random((B, C)) < 0.1] = -1
    s = rng.standard_normal((B, C)).astype(np.float32)
    sp = rng.standard_normal(B).astype(np.float32)
    g = rng.standard_normal((B, C)).astype(np.float32)
    gp = rng.standard_normal(B).astype(np.float32)
    pos = [list(rng.integers(0, 3 * C, size=rng.integers(0, 3))) for _ in range(B)]
    configs = [dict(),
               dict(same_id=True),
               dict(max_score=0.5, min_score=-1.0),
               dict(margin=0.1),
               dict(rel_margin=0.05),
               dict(rank=(1, max(2, C // 2))),
               dict(guide_margin=0.2),
               dict(guide_margin=0.1, guide_relative=True),
               dict(same_id=True, max_score=1.0, margin=0.3, rank=(0, C), guide_margin=0.5)]
    for cfg in configs:
        keep, counts = negsamp.filter(ids, s, sp, pos, guide_score=g, guide_positive_score=gp,
                                      **{"same_id": False, **cfg})
        rkeep, rcounts = ref_filter(ids, s, sp, pos, g, gp, **cfg)
        assert keep.dtype == np.bool_
        np.testing.assert_array_equal(keep, rkeep, err_msg=str(cfg))
        for k, v in rcounts.items():
            assert counts[k] == v, (cfg, k, counts)


def test_filter_same_id_on_by_default_with_positive_ids_and_errors(rng):
    require("ns_filter")
    ids = np.array([[1, 2, 3], [4, 5, -1]])
    s = np.zeros((2, 3), np.float32) + 0.5
    keep, counts = negsamp.filter(ids, s, positive_ids=[[2], [4, 5]])
    np.testing.assert_array_equal(keep, [[1, 0, 1], [0, 0, 0]])
    assert counts["same_id"] == 3 and counts["empty"] == 1
    with pytest.raises(negsamp.InvalidArgument, match="positive_score"):
        negsamp.filter(ids, s, margin=0.1)
    s[0, 1] = np.inf
    with pytest.raises(negsamp.NonFinite, match=r"score\[1\]"):
        negsamp.filter(ids, s)
    with pytest.raises(negsamp.InvalidArgument, match="rank_max"):
        negsamp.filter(ids, np.zeros((2, 3), np.float32), rank=(2, 1))


# ------------------------------------------------------------------ sample


def test_sample_top_is_the_m_best_kept(rng):
    require("ns_sample")
    B, C, m = 6, 12, 4
    ids = np.arange(B * C).reshape(B, C) + 100
    s = rng.standard_normal((B, C)).astype(np.float32)
    keep = rng.random((B, C)) < 0.7
    keep[0] = False
    keep[1, :2] = True
    keep[1, 2:] = False
    r = negsamp.sample(ids, s, m, keep=keep, strategy="top")
    for i in range(B):
        kept = [j for j in range(C) if keep[i, j]]
        best = sorted(kept, key=lambda j: (-s[i, j], j))[:m]
        assert r.count[i] == len(best)
        np.testing.assert_array_equal(r.index[i, :len(best)], ids[i, best])
        np.testing.assert_array_equal(r.score[i, :len(best)], s[i, best])
        assert np.all(r.index[i, len(best):] == -1) and np.all(np.isnan(r.score[i, len(best):]))


@pytest.mark.parametrize("strategy", ["uniform", "simans", "softmax"])
def test_sample_draws_distinct_kept_and_is_reproducible(rng, strategy):
    require("ns_sample")
    B, C, m = 8, 20, 5
    ids = rng.permutation(1000)[:B * C].reshape(B, C)
    ids[:, 3] = -1
    s = rng.standard_normal((B, C)).astype(np.float32)
    sp = rng.standard_normal(B).astype(np.float32)
    keep = rng.random((B, C)) < 0.8
    a = negsamp.sample(ids, s, m, positive_score=sp, keep=keep, strategy=strategy, seed=7)
    b = negsamp.sample(ids, s, m, positive_score=sp, keep=keep, strategy=strategy, seed=7)
    np.testing.assert_array_equal(a.index, b.index)
    for i in range(B):
        allowed = {ids[i, j] for j in range(C) if keep[i, j] and ids[i, j] != -1}
        got = a.index[i, :a.count[i]]
        assert a.count[i] == min(m, len(allowed))
        assert len(set(got)) == len(got) and set(got) <= allowed
        for idv, sv in zip(got, a.score[i, :a.count[i]]):
            assert s[i][list(ids[i]).index(idv)] == sv
    # The draw depends on the seed, the step and the query's global id.
    others = [negsamp.sample(ids, s, m, positive_score=sp, keep=keep, strategy=strategy,
                             seed=8).index,
              negsamp.sample(ids, s, m, positive_score=sp, keep=keep, strategy=strategy,
                             seed=7, step=1).index]
    if strategy != "top":
        assert any(not np.array_equal(o, a.index) for o in others)
    # A batch split gives the same draws when query_offset carries the global id.
    half = negsamp.sample(ids[4:], s[4:], m, positive_score=sp[4:], keep=keep[4:],
                          strategy=strategy, seed=7, query_offset=4)
    np.testing.assert_array_equal(half.index, a.index[4:])


def _chi2(counts, probs):
    n = counts.sum()
    e = n * probs
    return float(((counts - e) ** 2 / e).sum())


@pytest.mark.parametrize("strategy", ["softmax", "simans"])
def test_sample_follows_the_weights(strategy):
    """Many queries, each an independent draw of m=2 ordered from C=3 candidates: ordered
    pairs follow sequential weighted sampling without replacement (chi-square, 5 df)."""
    require("ns_sample")
    B, C = 6000, 3
    s = np.tile(np.array([0.3, -0.2, 0.9], np.float32), (B, 1))
    sp = np.full(B, 0.5, np.float32)
    ids = np.tile(np.arange(C), (B, 1))
    if strategy == "softmax":
        tau = 0.7
        w = np.exp(s[0].astype(np.float64) / tau)
        r = negsamp.sample(ids, s, 2, strategy="softmax", temperature=tau, seed=3)
    else:
        a_, b_ = 2.0, -0.1
        w = np.exp(-a_ * (s[0].astype(np.float64) - 0.5 - b_) ** 2)
        r = negsamp.sample(ids, s, 2, positive_score=sp, strategy="simans", simans_a=a_,
                           simans_b=b_, seed=3)
    pairs = [(x, y) for x in range(C) for y in range(C) if x != y]
    probs = np.array([w[x] / w.sum() * w[y] / (w.sum() - w[x]) for x, y in pairs])
    counts = np.array([np.sum((r.index[:, 0] == x) & (r.index[:, 1] == y)) for x, y in pairs])
    assert counts.sum() == B
    # 5 degrees of freedom: P(chi2 > 30) ≈ 1.5e-5.
    assert _chi2(counts, probs) < 30, (counts, probs * B)


def test_sample_errors(rng):
    require("ns_sample")
    ids = np.arange(6).reshape(2, 3)
    s = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument, match="m"):
        negsamp.sample(ids, s, 0, strategy="top")
    with pytest.raises(negsamp.InvalidArgument, match="strategy"):
        negsamp.sample(ids, s, 1, strategy="nope")
    with pytest.raises(negsamp.InvalidArgument, match="temperature"):
        negsamp.sample(ids, s, 1, strategy="softmax", temperature=0.0)
