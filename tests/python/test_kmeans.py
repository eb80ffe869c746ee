"""negsamp.kmeans: the numpy binding of ns_kmeans — labels agree with the exact nearest
centroid (float64 here), separated clusters are found, the balance bound, the same bits for a
seed (and for an NpyFile / torch input of the same data), argument errors before any call."""
import numpy as np
import pytest

import negsamp
from negsamp import InvalidArgument, NonFinite

try:  # before libnegsamp loads: a CUDA build's NCCL must not shadow torch's
    import torch
except ImportError:
    torch = None


def blobs(n, d, k, seed, spread=0.05, share=None):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = g.choice(k, size=n, p=share)
    x = centres[truth] + spread * g.normal(size=(n, d))
    return x.astype(np.float32), truth


def nearest(x, c, spherical):
    x, c = x.astype(np.float64), c.astype(np.float64)
    g = x @ c.T - (0 if spherical else 0.5 * (c * c).sum(1))
    return g.argmax(1)


@pytest.mark.parametrize("spherical", [False, True])
def test_labels_are_the_nearest_centroid_and_inertia_matches(spherical):
    x = np.random.default_rng(1).normal(size=(600, 12)).astype(np.float32)
    r = negsamp.kmeans(x, 9, spherical=spherical, seed=3, iterations=8)
    assert r.labels.dtype == np.int64 and r.labels.shape == (600,)
    assert r.centroids.shape == (9, 12) and r.centroids.dtype == np.float32
    assert len(r.inertia) == r.iterations + 1 and 1 <= r.iterations <= 8
    np.testing.assert_array_equal(r.labels, nearest(x, r.centroids, spherical))
    c = r.centroids[r.labels].astype(np.float64)
    xd = x.astype(np.float64)
    if spherical:
        cost = 1 - (xd * c).sum(1) / np.linalg.norm(xd, axis=1)
    else:
        cost = ((xd - c) ** 2).sum(1)
    assert r.inertia[-1] == pytest.approx(cost.sum(), rel=1e-9)
    assert np.all(np.diff(r.inertia) <= 1e-9 * r.inertia[:-1])


def test_finds_separated_clusters_and_is_deterministic():
    x, truth = blobs(900, 10, 5, 2, spread=0.03)
    r = negsamp.kmeans(x, 5, seed=11)
    pairs = set(zip(truth.tolist(), r.labels.tolist()))
    assert len(pairs) == 5  # each blob one label, each label one blob
    again = negsamp.kmeans(x, 5, seed=11)
    np.testing.assert_array_equal(r.labels, again.labels)
    assert r.centroids.tobytes() == again.centroids.tobytes()
    other = negsamp.kmeans(x, 5, seed=12, init="random")
    assert other.labels.max() < 5


@pytest.mark.parametrize("slack", [True, 0.2])
def test_balanced_bound(slack):
    x, _ = blobs(800, 6, 4, 5, spread=0.2, share=[0.7, 0.1, 0.1, 0.1])
    r = negsamp.kmeans(x, 4, balanced=slack, seed=1, iterations=5)
    s = 0.0 if slack is True else slack
    assert np.bincount(r.labels, minlength=4).max() <= int(np.ceil(800 / 4 * (1 + s)))


def test_init_centroids_npy_file_and_torch_give_the_same_bits(tmp_path):
    x, _ = blobs(500, 8, 3, 7, spread=0.4)
    start = x[:3].copy()
    a = negsamp.kmeans(x, 3, init=start, iterations=4)
    np.testing.assert_array_equal(a.labels, nearest(x, a.centroids, False))
    p = tmp_path / "x.npy"
    np.save(p, x.astype(np.float16))
    with negsamp.npy_open(str(p)) as f:
        b = negsamp.kmeans(f, 3, init=start, iterations=4)
    c = negsamp.kmeans(x.astype(np.float16).astype(np.float32), 3, init=start, iterations=4)
    np.testing.assert_array_equal(b.labels, c.labels)
    assert b.centroids.tobytes() == c.centroids.tobytes()
    if torch is None:
        pytest.skip("torch is not installed")
    t = negsamp.kmeans(torch.from_numpy(x), 3, init=start, iterations=4)
    np.testing.assert_array_equal(t.labels, a.labels)


def test_progress_and_cancel():
    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    seen = []
    negsamp.kmeans(x, 3, iterations=2, tolerance=0, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] <= seen[-1][1]
    with pytest.raises(InvalidArgument, match="cancelled"):
        negsamp.kmeans(x, 3, progress=lambda d, t: True)


def test_bad_arguments_name_the_argument():
    x = np.ones((10, 3), np.float32) + np.arange(30, dtype=np.float32).reshape(10, 3)
    with pytest.raises(InvalidArgument, match=r"k \(11\) is larger"):
        negsamp.kmeans(x, 11)
    with pytest.raises(InvalidArgument, match=r"k \(0\)"):
        negsamp.kmeans(x, 0)
    with pytest.raises(InvalidArgument, match="k"):
        negsamp.kmeans(x, 2.5)
    with pytest.raises(InvalidArgument, match="balanced"):
        negsamp.kmeans(x, 2, balanced=-0.5)
    with pytest.raises(InvalidArgument, match="init"):
        negsamp.kmeans(x, 2, init="kmeans||")
    with pytest.raises(InvalidArgument, match=r"init has shape \(3, 3\)"):
        negsamp.kmeans(x, 2, init=np.zeros((3, 3)))
    with pytest.raises(InvalidArgument, match="iterations"):
        negsamp.kmeans(x, 2, iterations=-1)
    with pytest.raises(InvalidArgument, match="tolerance"):
        negsamp.kmeans(x, 2, tolerance=float("nan"))
    with pytest.raises(InvalidArgument, match="2-D"):
        negsamp.kmeans(x[0], 1)
    with pytest.raises(InvalidArgument, match="dtype"):
        negsamp.kmeans(x.astype(np.int32), 2)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(NonFinite, match=r"x\[4\]\[1\]"):
        negsamp.kmeans(bad, 2)
    z = x.copy()
    z[2] = 0
    with pytest.raises(InvalidArgument, match="row 2 is zero"):
        negsamp.kmeans(z, 2, spherical=True)
