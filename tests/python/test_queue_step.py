"""Queue and the orchestrated Step against compositions of the individually tested ops and
the double-precision InfoNCE reference."""
import numpy as np
import pytest

import negsamp
from conftest import require
from test_infonce import ref_infonce


def test_queue_fifo_and_view(rng):
    require("ns_queue_create", "ns_queue_push", "ns_queue_view")
    q = negsamp.Queue(5, 3)
    assert len(q) == 0
    rows, ids = q.view()
    assert rows.shape == (0, 3) and ids.shape == (0,)
    a = rng.standard_normal((3, 3)).astype(np.float32)
    q.push(a, ids=[10, 11, 12])
    rows, ids = q.view()
    assert len(q) == 3
    got = {int(i): tuple(r) for r, i in zip(rows, ids)}
    assert got == {10 + k: tuple(a[k]) for k in range(3)}
    b = rng.standard_normal((4, 3)).astype(np.float32)
    q.push(b)  # no ids: -1; the two oldest rows are dropped
    rows, ids = q.view()
    assert len(q) == 5
    want = sorted([tuple(r) for r in a[2:]] + [tuple(r) for r in b])
    assert sorted(tuple(r) for r in rows) == want
    assert sorted(ids.tolist()) == [-1, -1, -1, -1, 12]
    q.push(rng.standard_normal((7, 3)).astype(np.float32)[::2])  # row-strided input
    assert len(q) == 5


def test_queue_errors(rng):
    require("ns_queue_create", "ns_queue_push")
    with pytest.raises(negsamp.InvalidArgument, match="capacity"):
        negsamp.Queue(0, 3)
    q = negsamp.Queue(4, 3)
    with pytest.raises(negsamp.InvalidArgument, match="ns_queue_push"):
        q.push(np.ones((2, 4), np.float32))
    bad = np.ones((1, 3), np.float32)
    bad[0, 1] = np.nan
    with pytest.raises(negsamp.NonFinite):
        q.push(bad)
    assert len(q) == 0


def test_queue_as_extra_negatives(rng):
    require("ns_queue_create", "ns_infonce_forward", "ns_infonce_backward")
    B, d = 4, 6
    qe = negsamp.Queue(6, d)
    past = rng.standard_normal((5, d)).astype(np.float32)
    qe.push(past, ids=[0, 1, 100, 101, 102])
    query = rng.standard_normal((B, d)).astype(np.float32)
    pas = rng.standard_normal((B, d)).astype(np.float32)
    out = negsamp.infonce_forward(query, pas, extra=qe, temperature=0.5)
    rows, ids = qe.view()
    loss, per = ref_infonce(query, pas, E=rows, extra_id=ids, temperature=0.5)
    np.testing.assert_allclose(out.per_query, per, rtol=1e-5, atol=1e-5)
    g = negsamp.infonce_backward(query, pas, out.saved, extra=qe, temperature=0.5)
    g2 = negsamp.infonce_backward(query, pas, out.saved, extra=rows, extra_id=ids,
                                  temperature=0.5)
    np.testing.assert_allclose(g.query, g2.query, rtol=1e-6, atol=1e-7)


def _step_reference(q, p, cand, h, cid, pid, filt, sampler, loss_kw, query_offset, step):
    B, C, d = cand.shape
    s = np.einsum("bd,bcd->bc", q, cand).astype(np.float32)
    sp = np.einsum("bd,bd->b", q, p).astype(np.float32)
    ids = cid if cid is not None else (query_offset * C + np.arange(B * C)).reshape(B, C)
    keep, counts = negsamp.filter(ids, s, sp, [[x] for x in pid],
                                  **{"same_id": cid is not None, **filt})
    smp = negsamp.sample(ids, s, h, positive_score=sp, keep=keep, step=step,
                         query_offset=query_offset, **sampler)
    rows = np.full((B, h), -1)
    for i in range(B):
        for r in range(h):
            if smp.index[i, r] >= 0:
                rows[i, r] = i * C + list(ids[i]).index(smp.index[i, r])
    hard = np.where(rows[..., None] >= 0, cand.reshape(B * C, d)[rows.clip(0)], 0)
    return smp, rows, counts, hard


@pytest.mark.parametrize("with_ids", [False, True])
def test_step_equals_filter_sample_infonce(rng, with_ids):
    require("ns_step_forward", "ns_step_backward")
    B, C, h, d = 5, 7, 3, 8
    q = rng.standard_normal((B, d)).astype(np.float32) * 0.5
    p = rng.standard_normal((B, d)).astype(np.float32) * 0.5
    cand = rng.standard_normal((B, C, d)).astype(np.float32) * 0.5
    pid = np.arange(B) + 40 if with_ids else np.arange(B) + 3
    cid = None
    if with_ids:
        cid = rng.permutation(1000)[:B * C].reshape(B, C) + 100
        cid[1, 2] = pid[1]          # the positive among the candidates: the same-id rule
        cid[2, 0] = -1              # an empty slot
    filt = dict(max_score=0.8)
    sampler = dict(strategy="simans", simans_a=1.0, simans_b=0.1, seed=9)
    loss_kw = dict(temperature=0.3)
    st = negsamp.Step(h, filter=filt, sampler=sampler, loss=loss_kw)
    res = st.forward(q, p, cand, candidate_id=cid,
                     positive_id=pid if with_ids else None, query_offset=3, step=2)
    smp, rows, counts, hard = _step_reference(q, p, cand, h, cid, pid, filt, sampler, loss_kw,
                                              3, 2)
    np.testing.assert_array_equal(res.negative_id, smp.index if with_ids else
                                  np.where(rows >= 0, smp.index, -1))
    np.testing.assert_array_equal(res.negative_row, rows)
    np.testing.assert_array_equal(res.negative_count, smp.count)
    assert res.filtered == counts
    hard_keep = rows >= 0
    hard_id = smp.index.ravel() if with_ids else None
    loss, per = ref_infonce(q, p, hard.reshape(B * h, d), h=h, hard_keep=hard_keep.ravel(),
                            passage_id=pid, hard_id=hard_id, **loss_kw)
    np.testing.assert_allclose(res.loss, loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.per_query, per, rtol=1e-5, atol=1e-5)

    g = st.backward(0.5)
    ref = negsamp.infonce_forward(q, p, hard=hard, hard_keep=hard_keep, passage_id=pid,
                                  hard_id=hard_id, **loss_kw)
    rg = negsamp.infonce_backward(q, p, ref.saved, grad_loss=0.5, hard=hard,
                                  hard_keep=hard_keep, passage_id=pid, hard_id=hard_id,
                                  **loss_kw)
    np.testing.assert_allclose(g.query, rg.query, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.positive, rg.passage, rtol=1e-5, atol=1e-6)
    gc = np.zeros((B * C, d), np.float32)
    for i in range(B):
        for r in range(h):
            if rows[i, r] >= 0:
                gc[rows[i, r]] += rg.hard[i, r]
    assert g.candidate.shape == cand.shape
    np.testing.assert_allclose(g.candidate.reshape(B * C, d), gc, rtol=1e-5, atol=1e-6)


def test_step_forward_only_gives_the_same_loss_and_gradients(rng):
    # The CPU step computes its gradients in the forward unless forward_only: both give the
    # same loss, and the backward after a forward_only forward the same gradients.
    require("ns_step_forward", "ns_step_backward")
    B, C, h, d = 6, 5, 2, 8
    q, p = (rng.standard_normal((B, d)).astype(np.float32) for _ in range(2))
    cand = rng.standard_normal((B, C, d)).astype(np.float32)
    out = []
    for fo in (False, True):
        st = negsamp.Step(h, sampler=dict(strategy="uniform", seed=3), forward_only=fo)
        r = st.forward(q, p, cand)
        out.append((r.loss, st.backward(0.7)))
    assert out[0][0] == out[1][0]
    for a, b in zip(out[0][1][:3], out[1][1][:3]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(negsamp.InvalidArgument, match="forward_only"):
        negsamp.Step(h, forward_only=2)


def test_step_with_queue_enqueues_positives(rng):
    require("ns_step_forward", "ns_step_backward", "ns_queue_create")
    B, C, d = 4, 3, 6
    queue = negsamp.Queue(16, d)
    st = negsamp.Step(2, sampler=dict(strategy="top"), loss=dict(temperature=0.5),
                      queue=queue, enqueue=True)
    q, p = (rng.standard_normal((B, d)).astype(np.float32) for _ in range(2))
    cand = rng.standard_normal((B, C, d)).astype(np.float32)
    r1 = st.forward(q, p, cand)
    st.backward()
    assert len(queue) == B
    rows, ids = queue.view()
    assert sorted(map(tuple, rows)) == sorted(map(tuple, p))
    # The next step contrasts against the queued positives too.
    r2 = st.forward(q, p, cand)
    assert r2.loss > r1.loss


def test_step_errors(rng):
    require("ns_step_forward", "ns_step_backward")
    st = negsamp.Step(4)
    q = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument, match="hard_negatives"):
        st.forward(q, q, rng.standard_normal((2, 3, 3)).astype(np.float32))
    with pytest.raises(negsamp.InvalidArgument, match="positive"):
        st.forward(q, q[:1], rng.standard_normal((2, 5, 3)).astype(np.float32))
    with pytest.raises(negsamp.InvalidArgument):
        negsamp.Step(1).backward()


def test_comm_without_transport_reports_clearly():
    require("ns_comm_create_nccl_id", "ns_nccl_unique_id", "ns_comm_create_mpi")
    ctx = negsamp.Context("cpu")
    with pytest.raises(negsamp.InvalidArgument, match=r"rank \(3\)"):
        negsamp.Comm.nccl(bytes(128), 2, 3, ctx)
    if not negsamp.cuda_built():
        with pytest.raises(negsamp.Unsupported, match="ns_nccl_unique_id"):
            negsamp.nccl_unique_id()
    with pytest.raises(negsamp.InvalidArgument, match="mpi_comm"):
        negsamp.Comm.mpi(0, ctx)
