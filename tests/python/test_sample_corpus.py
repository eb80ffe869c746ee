"""negsamp.sample_corpus (ns_sample_corpus): the law of one draw, exclusions, padding,
determinism across batch splits, and the strict argument checks."""
import numpy as np
import pytest

import negsamp
from conftest import require


def test_one_draw_follows_weight_alpha():
    require("ns_sample_corpus")
    w = np.array([1, 4, 9, 0, 16], np.float32)
    B = 20000
    r = negsamp.sample_corpus(w, B, 1, alpha=0.5, seed=3)
    assert r.index.shape == (B, 1) and r.index.dtype == np.int64 and (r.count == 1).all()
    p = np.array([1, 2, 3, 0, 4], np.float64) / 10
    f = np.bincount(r.index[:, 0], minlength=5) / B
    assert f[3] == 0
    assert np.all(np.abs(f - p) < 5 * np.sqrt(p * (1 - p) / B) + 1e-12)


def test_exclusions_padding_and_distinct_rows():
    require("ns_sample_corpus")
    rng = np.random.default_rng(0)
    w = rng.integers(0, 50, 3000).astype(np.int64)  # counts are accepted
    ex = [rng.integers(0, 3000, rng.integers(0, 40)).tolist() for _ in range(64)]
    r = negsamp.sample_corpus(w, 64, 12, alpha=0.75, exclude=ex, seed=9, step=2)
    for i in range(64):
        row = r.index[i]
        assert r.count[i] == 12 and len(set(row.tolist())) == 12
        assert not set(row.tolist()) & set(ex[i])
        assert (w[row] > 0).all()
    p = negsamp.sample_corpus(None, 2, 3, rows=4, exclude=[[0, 1, 2], [3, 2, 1, 0]])
    assert p.count.tolist() == [1, 0]
    assert p.index.tolist() == [[3, -1, -1], [-1, -1, -1]]


def test_batch_split_and_seed():
    require("ns_sample_corpus")
    w = np.random.default_rng(1).random(5000).astype(np.float32)
    full = negsamp.sample_corpus(w, 40, 5, seed=7, query_offset=100)
    a = negsamp.sample_corpus(w, 15, 5, seed=7, query_offset=100)
    b = negsamp.sample_corpus(w, 25, 5, seed=7, query_offset=115)
    np.testing.assert_array_equal(np.concatenate([a.index, b.index]), full.index)
    assert not np.array_equal(negsamp.sample_corpus(w, 40, 5, seed=8, query_offset=100).index,
                              full.index)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(weight=[1, -2, 3], queries=2, m=1), r"weight\[1\] \(-2.0\)"),
    (dict(weight=[1, np.nan, 3], queries=2, m=1), r"weight\[1\] \(nan\)"),
    (dict(weight=[0, 0], queries=2, m=1), "no positive entry"),
    (dict(weight=[[1, 2]], queries=2, m=1), "1-D"),
    (dict(weight=["a", "b"], queries=2, m=1), "dtype"),
    (dict(weight=[1, 2, 3], queries=2, m=4), r"m \(4\) is larger than the corpus \(3 rows\)"),
    (dict(weight=[1, 2, 3], queries=2, m=0), r"m \(0\)"),
    (dict(weight=[1, 2, 3], queries=2, m=1.0), "must be an integer"),
    (dict(weight=[1, 2, 3], queries=-1, m=1), r"queries \(-1\)"),
    (dict(weight=[1, 2, 3], queries=2, m=1, alpha=float("inf")), r"alpha \(inf\)"),
    (dict(weight=[1, 2, 3], queries=2, m=1, alpha=100), r"alpha \(100.0\)"),
    (dict(weight=[1, 2, 3], queries=2, m=1, exclude=[[0], [5]]), r"ids\[1\] \(5\)"),
    (dict(weight=[1, 2, 3], queries=2, m=1, exclude=[[0]]), "exclude"),
    (dict(weight=None, queries=2, m=1), "rows"),
    (dict(weight=[1, 2, 3], rows=4, queries=2, m=1), r"rows \(4\) differs"),
    (dict(weight=[1, 2, 3], queries=2, m=1, seed=-1), r"seed \(-1\)"),
])
def test_bad_arguments_name_the_argument(kwargs, needle):
    require("ns_sample_corpus")
    with pytest.raises(negsamp.InvalidArgument, match=needle):
        negsamp.sample_corpus(**kwargs)
