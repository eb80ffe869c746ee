"""The cluster study (bench/cluster_study.py) in its quick mode: every strategy reported with
metrics in range, the cluster-aware batches group-pure (checked batch by batch against the
k-means labels), the digits' false-negative shares against the labels, k-means' inertia beside
faiss's, and a seed that reproduces its run bit for bit."""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import negsamp

_PATH = Path(__file__).resolve().parents[2] / "bench" / "cluster_study.py"
_spec = importlib.util.spec_from_file_location("cluster_study", _PATH)
cs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cs)

pytestmark = pytest.mark.skipif(not hasattr(negsamp, "plan_batches")
                                or not hasattr(negsamp, "kmeans"),
                                reason="needs negsamp.kmeans and negsamp.plan_batches")


def _cf(*extra):
    cf = cs.config(["--quick", *extra])
    if not os.path.exists(cf.data):
        pytest.skip(f"digits data not found: {cf.data}")
    return cf


@pytest.fixture(scope="module")
def study():
    return cs.run_study(_cf(), negsamp, quiet=True)


def test_every_strategy_is_reported_with_metrics_in_range(study):
    with_mask = cs.loss_has_groups(negsamp)
    expected = [s for s, v in cs.ALL_STRATEGIES.items() if with_mask or not v[3]]
    assert "digits" in study["tasks"]
    assert set(study["skipped"]) == set(cs.ALL_STRATEGIES) - set(expected)
    for tname, t in study["tasks"].items():
        assert list(t["summary"]) == expected
        for s in expected:
            runs = t["runs"][s]
            assert len(runs) == study["config"]["seeds"]
            for r in runs:
                assert 0 <= r["R@1"] <= r["MRR"] <= 1 and r["R@1"] <= r["R@10"] <= 1, (tname, s)
                assert 0 <= r["fn_share"] <= 1
    # Trained on real labels, every strategy retrieves far above chance (0.1) on digits.
    assert all(study["tasks"]["digits"]["summary"][s]["R@1"][0] > 0.6 for s in expected)


def test_cluster_batches_are_group_pure_in_the_study(study):
    for tname, t in study["tasks"].items():
        summ = t["summary"]
        # TAS-B: one cluster per batch, a second only where the planner spills at a cluster's end
        assert summ["tasb"]["purity"][0] >= 0.8, tname
        assert summ["tasb"]["groups_per_batch"][0] <= 2.0, tname
        assert summ["ngame"]["groups_per_batch"][0] <= cs.NGAME_GROUPS + 1, tname
        assert summ["random"].get("purity") is None


def test_plans_against_the_labels_batch_by_batch():
    cf = _cf()
    task = cs.DigitsTask(cf.data, limit=600)
    model = task.model(cf, 0)
    z = model.all_q(task.train_rows)
    labels, cents = cs.cluster_queries(negsamp, z, cf.batch, 0, 0, cf.cluster_batches)
    assert len(cents) >= cs.NGAME_GROUPS + 1  # else NGAME batches could not differ
    nb = cs.nearest_groups(cents, cs.NGAME_GROUPS - 1)
    n, rng = len(labels), np.random.default_rng(0)
    for kind in ("tasb", "ngame"):
        batches = cs.make_batches(negsamp, kind, n, labels, nb, cf.batch, rng, 0, 0)
        seen = np.concatenate(batches)
        assert len(np.unique(seen)) == len(seen)  # no query twice
        assert all(len(b) == cf.batch for b in batches)  # drop_last
        assert n - len(seen) < cf.batch  # only the last, short batch dropped
        for b in batches:
            g = labels[b]
            if kind == "tasb":  # the batch's first cluster, then at most the spill's
                assert len(np.unique(g)) <= 2
            else:  # a seed cluster and at most its groups_per_batch - 1 nearest ones
                assert len(np.unique(g)) <= cs.NGAME_GROUPS
                assert any(set(g.tolist()) <= {s, *nb[s]} for s in np.unique(g))
    # purity() against a hand count
    p, k = cs.purity([np.array([0, 1, 2, 3]), np.array([4, 5])], np.array([7, 7, 7, 1, 2, 3]))
    assert p == pytest.approx((3 / 4 + 1 / 2) / 2) and k == pytest.approx((2 + 2) / 2)


def test_digits_false_negative_shares_follow_the_labels(study):
    d = study["tasks"]["digits"]["summary"]
    # Random batches: another query's positive has the anchor's class about 1 time in 10.
    assert 0.05 < d["random"]["fn_share"][0] < 0.16
    # Single-cluster batches gather same-class images: more in-batch false negatives.
    assert d["tasb"]["fn_share"][0] > d["random"]["fn_share"][0]


def test_kmeans_cost_beside_faiss(study):
    c = study["cost"]
    assert set(c["seconds"]) >= {"negsamp.kmeans", "negsamp.kmeans balanced",
                                 "plan_batches tasb", "plan_batches ngame"}
    assert all(s > 0 for s in c["seconds"].values())
    ours = c["inertia"]["negsamp.kmeans"]
    assert 0 < ours < c["n"]  # 1 - cos a row, far below 1 for clustered embeddings
    # the balanced centroids, each row to its nearest: close to the unconstrained ones' cost
    assert abs(c["inertia"]["negsamp.kmeans balanced"] - ours) <= 0.1 * ours
    try:
        import faiss  # noqa: F401
    except ImportError:
        assert "faiss" in c and "faiss.Kmeans" not in c["seconds"]
        return
    theirs = c["inertia"]["faiss.Kmeans"]
    assert abs(ours - theirs) <= 0.1 * theirs  # both Lloyd from random rows: close local optima


def test_a_seed_reproduces_its_run():
    cf = _cf()
    task = cs.DigitsTask(cf.data, limit=600)
    a = cs.train_run(negsamp, cf, task, "hard4+rand4", 1)
    b = cs.train_run(negsamp, cf, task, "hard4+rand4", 1)
    c = cs.train_run(negsamp, cf, task, "hard4+rand4", 2)
    keys = ["R@1", "R@10", "MRR", "fn_share"]
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert [a[k] for k in keys] != [c[k] for k in keys]
    t1 = cs.train_run(negsamp, cf, task, "tasb", 1)
    t2 = cs.train_run(negsamp, cf, task, "tasb", 1)
    assert [t1[k] for k in keys + ["purity"]] == [t2[k] for k in keys + ["purity"]]


def test_masked_loss_gradient_against_a_float64_reference():
    """The mask arm's loss (branch `loss`): in-batch InfoNCE where another row's positive in
    the anchor's group is no negative; dL/dq by central differences of a float64 loss."""
    if not cs.loss_has_groups(negsamp):
        pytest.skip("the loss takes no group ids in this build (branch `loss` not merged)")
    r = np.random.default_rng(0)
    B, d, tau = 6, 4, 0.5
    zq = r.standard_normal((B, d)).astype(np.float32)
    zp = r.standard_normal((B, d)).astype(np.float32)
    g = np.array([0, 0, 1, 1, 1, 2])
    gq, _ = cs.masked_infonce_grads(zq, zp, np.arange(B), g, tau)

    def loss(q):
        s = q @ zp.astype(np.float64).T / tau
        masked = (g[:, None] == g[None, :]) & ~np.eye(B, dtype=bool)
        s = np.where(masked, -np.inf, s)
        return np.mean(np.log(np.exp(s).sum(1)) - np.diag(s))

    q, eps = zq.astype(np.float64), 1e-6
    num = np.zeros_like(q)
    for i in range(B):
        for j in range(d):
            up, dn = q.copy(), q.copy()
            up[i, j] += eps
            dn[i, j] -= eps
            num[i, j] = (loss(up) - loss(dn)) / (2 * eps)
    np.testing.assert_allclose(gq, num, rtol=1e-4, atol=1e-6)
