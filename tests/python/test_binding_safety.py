"""The binding's own checks: every buffer handed to C is checked for what only Python can see
(length, dtype, integer-ness, range, the lifetime of a mapped file), and refused with a negsamp
exception in the library's message style. Calls that used to crash the interpreter run in a
child process, so a regression fails one test instead of killing the suite."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import negsamp
from conftest import require

S = negsamp.NS_INFONCE_SAVED_PER_QUERY


def run_child(code: str):
    """Runs code in a fresh interpreter with this package; (returncode, stdout+stderr)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(negsamp.__file__).resolve().parents[1])] +
        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("NEGSAMP_LIBRARY", negsamp.library_path())
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


# ------------------------------------------------------------------ infonce_backward's saved

def _batch(rng, B=5, N=None, d=8):
    q = rng.standard_normal((B, d)).astype(np.float32)
    p = rng.standard_normal((N or B, d)).astype(np.float32)
    return q, p


def test_saved_is_a_matrix_per_query_and_its_length_is_checked(rng):
    require("ns_infonce_forward", "ns_infonce_backward")
    q, p = _batch(rng)
    fwd = negsamp.infonce_forward(q, p, temperature=0.2)
    assert fwd.saved.shape == (5, S) and fwd.saved.dtype == np.float32
    for bad in (fwd.saved[:4], fwd.saved[:, :4], fwd.saved.ravel()[:-1],
                np.zeros((0, S), np.float32), fwd.saved.ravel()):
        with pytest.raises(negsamp.InvalidArgument) as e:
            negsamp.infonce_backward(q, p, bad, temperature=0.2)
        assert str(e.value).startswith("infonce_backward: saved has shape")
        assert f"expected (5, {S})" in str(e.value)


def test_saved_dtype_is_not_converted(rng):
    require("ns_infonce_forward", "ns_infonce_backward")
    q, p = _batch(rng)
    fwd = negsamp.infonce_forward(q, p, temperature=0.2)
    for dt in (np.float64, np.float16, np.int32):
        with pytest.raises(negsamp.InvalidArgument, match="saved has dtype"):
            negsamp.infonce_backward(q, p, fwd.saved.astype(dt), temperature=0.2)


def test_saved_of_another_batch_is_refused(rng):
    require("ns_infonce_forward", "ns_infonce_backward")
    q, p = _batch(rng)
    q2, p2 = _batch(rng)
    other = negsamp.infonce_forward(q2, p2, temperature=0.05).saved
    with pytest.raises(negsamp.InvalidArgument) as e:
        negsamp.infonce_backward(q, p, other, temperature=0.05)
    assert "saved is not from the forward of these inputs" in str(e.value)
    # ... and so is the right batch's saved under another temperature.
    own = negsamp.infonce_forward(q, p, temperature=0.05).saved
    with pytest.raises(negsamp.InvalidArgument, match="saved is not from"):
        negsamp.infonce_backward(q, p, own, temperature=0.1)
    # ... or another positive assignment.
    with pytest.raises(negsamp.InvalidArgument, match="saved is not from"):
        negsamp.infonce_backward(q, p, own, temperature=0.05, positive=[1, 0, 2, 3, 4])


def test_saved_check_passes_large_logits_and_every_layout(rng):
    require("ns_infonce_forward", "ns_infonce_backward")
    # Long unnormalised rows and a small τ: logits in the thousands, f32 GEMM rounding large
    # in absolute terms; the check must not refuse the right saved.
    q, p = _batch(rng, B=7, N=9, d=1024)
    pos = rng.permutation(9)[:7]
    fwd = negsamp.infonce_forward(q, p, positive=pos, temperature=0.01)
    g = negsamp.infonce_backward(q, p, fwd.saved, positive=pos, temperature=0.01)
    # A non-contiguous saved with the same values gives the same gradients (copied, not
    # misread).
    fortran = np.asfortranarray(fwd.saved)
    assert not fortran.flags.c_contiguous
    g2 = negsamp.infonce_backward(q, p, fortran, positive=pos, temperature=0.01)
    np.testing.assert_array_equal(g.query, g2.query)
    np.testing.assert_array_equal(g.passage, g2.passage)


def test_saved_nonfinite_is_reported(rng):
    require("ns_infonce_forward", "ns_infonce_backward")
    q, p = _batch(rng)
    saved = negsamp.infonce_forward(q, p).saved.copy()
    saved[2, 1] = np.inf
    with pytest.raises(negsamp.NonFinite, match=r"saved\[2, 1\]"):
        negsamp.infonce_backward(q, p, saved)


def test_positive_rows_are_range_checked(rng):
    require("ns_infonce_forward")
    q, p = _batch(rng)
    for bad in ([0, 1, 2, 3, 5], [0, 1, -1, 3, 4]):
        with pytest.raises(negsamp.InvalidArgument, match=r"infonce_forward: positive\[\d\]"):
            negsamp.infonce_forward(q, p, positive=bad)
    with pytest.raises(negsamp.InvalidArgument, match="positive has dtype float64"):
        negsamp.infonce_forward(q, p, positive=[0.0, 1.0, 2.0, 3.0, 4.0])
    h = rng.standard_normal((11, 8)).astype(np.float32)  # 11 rows: not B·h
    with pytest.raises(negsamp.InvalidArgument, match="not a multiple"):
        negsamp.infonce_forward(q, p, hard=h)


# ------------------------------------------------------------------ exclusion lists

def test_exclusion_offsets_past_the_ids_are_refused(rng):
    require("ns_mine_topk")
    q = rng.standard_normal((3, 4)).astype(np.float32)
    c = rng.standard_normal((20, 4)).astype(np.float32)
    ids = np.array([1, 2], np.int64)
    with pytest.raises(negsamp.InvalidArgument) as e:
        negsamp.mine_topk(q, c, 4, exclude=(np.array([0, 1, 2, 1000000]), ids))
    assert str(e.value) == ("mine_topk: exclude.offsets[3] (1000000) is larger than the number "
                            "of ids (2)")


@pytest.mark.parametrize("offsets,ids,match", [
    ([0, 1, 2], [1, 2], "exclude has 2 lists"),              # queries + 1 entries expected
    ([0, 1, 1, 2, 2], [1, 2], "exclude has 4 lists"),
    ([1, 1, 2, 2], [1, 2], r"offsets\[0\] \(1\) must be 0"),
    ([0, 2, 1, 2], [1, 2], r"offsets\[2\] \(1\) is smaller than offsets\[1\] \(2\)"),
    ([0, 1, 2, 2], [1.0, 2.5], "exclude.ids has dtype float64"),   # not truncated to 1, 2
    ([0.0, 1.0, 2.0, 2.0], [1, 2], "exclude.offsets has dtype float64"),
    ([0, 1, 2, 2], np.array([1, 2**63], np.uint64), "larger than the int64 maximum"),
    ([[0, 1], [2, 2]], [1, 2], "offsets has shape"),
])
def test_exclusion_lists_are_validated(rng, offsets, ids, match):
    require("ns_mine_topk")
    q = rng.standard_normal((3, 4)).astype(np.float32)
    c = rng.standard_normal((20, 4)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument, match=match):
        negsamp.mine_topk(q, c, 4, exclude=(np.asarray(offsets), np.asarray(ids)))


def test_exclusion_list_of_lists_refuses_float_and_huge_ids(rng):
    require("ns_mine_topk")
    q = rng.standard_normal((2, 4)).astype(np.float32)
    c = rng.standard_normal((20, 4)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument, match=r"exclude\[1\] has dtype float64"):
        negsamp.mine_topk(q, c, 4, exclude=[[1], [2.7]])
    with pytest.raises(negsamp.InvalidArgument, match="outside int64"):
        negsamp.mine_topk(q, c, 4, exclude=[[1], [2**64]])
    # Integer ids in any integer dtype are fine, and empty lists too.
    i1, _ = negsamp.mine_topk(q, c, 4, exclude=[np.array([1], np.int32), []])
    i2, _ = negsamp.mine_topk(q, c, 4, exclude=[[1], []])
    np.testing.assert_array_equal(i1, i2)
    assert 1 not in i1[0]


def test_idlists_cannot_be_changed_under_the_library(rng):
    offsets, ids = np.array([0, 1, 2]), np.array([3, 4])
    lists = negsamp.IdLists(offsets=offsets, ids=ids)
    offsets[2] = 10 ** 6  # the caller's arrays are not the ones C reads
    assert lists.offsets[2] == 2
    with pytest.raises(ValueError):
        lists.offsets[2] = 10 ** 6
    with pytest.raises(AttributeError):
        lists.offsets = np.array([0, 10 ** 6, 10 ** 6])


def test_positive_id_lists_of_the_filter_are_validated(rng):
    require("ns_filter")
    cid = np.arange(6).reshape(2, 3)
    s = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument, match="larger than the number of ids"):
        negsamp.filter(cid, s, positive_ids=(np.array([0, 1, 50]), np.array([1, 2])))
    with pytest.raises(negsamp.InvalidArgument, match="positive_ids has 1 lists"):
        negsamp.filter(cid, s, positive_ids=[[1]])


# ------------------------------------------------------------------ mapped files

def test_closed_npyfile_is_refused_not_read(tmp_path, rng):
    require("ns_npy_open", "ns_mine_topk")
    corpus = rng.standard_normal((30, 6)).astype(np.float32)
    path = tmp_path / "c.npy"
    np.save(path, corpus)
    rc, out = run_child(f"""
        import numpy as np, negsamp
        f = negsamp.npy_open({str(path)!r})
        f.close()
        for use in (lambda: negsamp.mine_topk(np.ones((2, 6), np.float32), f, 3),
                    lambda: f.array, lambda: f.matrix):
            try:
                use()
                print("NO ERROR")
            except negsamp.InvalidArgument as e:
                print("refused:", e)
        """)
    assert rc == 0, out
    assert "NO ERROR" not in out
    assert out.count("is closed") == 3 and "mine_topk: NpyFile" in out


def test_arrays_of_an_npyfile_outlive_its_close(tmp_path, rng):
    require("ns_npy_open")
    corpus = rng.standard_normal((300, 64)).astype(np.float32)
    path = tmp_path / "c.npy"
    np.save(path, corpus)
    rc, out = run_child(f"""
        import gc, numpy as np, negsamp
        with negsamp.npy_open({str(path)!r}) as f:
            a = f.array
            b = f.array[10:20]
        del f
        gc.collect()
        junk = [np.ones(1 << 16) for _ in range(64)]  # reuse freed memory, if any were freed
        want = np.load({str(path)!r})
        print("equal", bool(np.array_equal(a, want)), bool(np.array_equal(b, want[10:20])))
        print("readonly", a.flags.writeable)
        """)
    assert rc == 0, out
    assert "equal True True" in out and "readonly False" in out


def test_npyfile_mines_the_same_after_the_array_is_taken(tmp_path, rng):
    require("ns_npy_open", "ns_mine_topk")
    corpus = rng.standard_normal((50, 8)).astype(np.float32)
    path = tmp_path / "c.npy"
    np.save(path, corpus)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    with negsamp.npy_open(path) as f:
        view = f.array
        i1, s1 = negsamp.mine_topk(q, f, 5)
    assert f.closed
    i2, s2 = negsamp.mine_topk(q, view, 5)  # the view after close: still the file's rows
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


# ------------------------------------------------------------------ handles that others use

def test_context_outlives_its_queue(rng):
    require("ns_queue_create", "ns_queue_push", "ns_queue_view")
    ctx = negsamp.Context("cpu")
    queue = negsamp.Queue(4, 3, ctx=ctx)
    freed = []
    destroy = ctx._h._free
    ctx._h._free = lambda v: (freed.append(v), destroy(v))[1]
    ctx.close()
    assert ctx.closed and freed == []  # the queue (its memory is the context's) holds it
    with pytest.raises(negsamp.InvalidArgument, match="context is closed"):
        queue.push(np.ones((1, 3), np.float32))
    queue.close()
    with pytest.raises(negsamp.InvalidArgument, match="queue is closed"):
        len(queue)
    del queue
    import gc
    gc.collect()
    assert len(freed) == 1  # freed once, when the queue let go


def test_step_refuses_a_closed_queue(rng):
    require("ns_step_forward", "ns_queue_create")
    B, C, d = 3, 4, 5
    queue = negsamp.Queue(8, d)
    st = negsamp.Step(2, queue=queue, enqueue=True)
    q = rng.standard_normal((B, d)).astype(np.float32)
    p = rng.standard_normal((B, d)).astype(np.float32)
    cand = rng.standard_normal((B, C, d)).astype(np.float32)
    st.forward(q, p, cand)
    queue.close()
    with pytest.raises(negsamp.InvalidArgument, match="Step.forward: the queue is closed"):
        st.forward(q, p, cand)


# ------------------------------------------------------------------ silent conversions

def test_integer_embeddings_are_refused_unless_a_dtype_says_how(rng):
    require("ns_mine_topk", "ns_similarity")
    q = rng.standard_normal((3, 8)).astype(np.float32)
    ints = rng.integers(-5, 5, (20, 8))
    with pytest.raises(negsamp.InvalidArgument) as e:
        negsamp.mine_topk(q, ints, 3)
    assert str(e.value).startswith("mine_topk: corpus has dtype int64; expected a "
                                   "floating-point array")
    with pytest.raises(negsamp.InvalidArgument, match="similarity: q has dtype bool"):
        negsamp.similarity(q > 0, q)
    # An explicit dtype converts: the same as converting by hand.
    i1, s1 = negsamp.mine_topk(q, ints, 3, dtype="float32")
    i2, s2 = negsamp.mine_topk(q, ints.astype(np.float32), 3)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    with pytest.raises(negsamp.InvalidArgument, match="dtype .'int8'. is not one of"):
        negsamp.mine_topk(q, ints, 3, dtype="int8")
    with pytest.raises(negsamp.InvalidArgument, match="reads bf16 bit patterns"):
        negsamp.mine_topk(q, ints, 3, dtype="bfloat16")


def test_bf16_bits_in_uint16_are_mined_as_bf16(rng):
    require("ns_mine_topk")
    q = rng.standard_normal((4, 16)).astype(np.float32)
    c32 = rng.standard_normal((40, 16)).astype(np.float32)
    bits = (c32.view(np.uint32) >> 16).astype(np.uint16)  # truncation to bf16
    with pytest.raises(negsamp.InvalidArgument, match="corpus has dtype uint16"):
        negsamp.mine_topk(q, bits, 5)  # never mined as the integers 0..65535
    index, score = negsamp.mine_topk(q, bits, 5, dtype="bfloat16")
    # Reference: the bf16 values widened exactly to float64.
    cref = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    S = q.astype(np.float64) @ cref.T
    want = np.argsort(-S, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(index, want)
    np.testing.assert_allclose(score, np.take_along_axis(S, want, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,message", [
    (5.7, "k (5.7) must be an integer, not float"),
    (5.0, "k (5.0) must be an integer, not float"),
    ("5", "k ('5') must be an integer, not str"),
    (True, "k (True) must be an integer, not bool"),
    (10**12, "k (1000000000000) is larger than the corpus (30 rows)"),
    (-1, "k (-1) must be at least 1"),
])
def test_k_is_a_checked_integer(rng, k, message):
    require("ns_mine_topk")
    q = rng.standard_normal((2, 4)).astype(np.float32)
    c = rng.standard_normal((30, 4)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument) as e:
        negsamp.mine_topk(q, c, k)
    assert str(e.value) == "mine_topk: " + message
    assert negsamp.mine_topk(q, c, np.int32(3))[0].shape == (2, 3)


def test_k_above_ns_max_k_is_refused_before_allocating(rng):
    require("ns_mine_topk")
    q = rng.standard_normal((1, 2)).astype(np.float32)
    c = np.zeros((negsamp.NS_MAX_K + 1, 2), np.float32)
    with pytest.raises(negsamp.InvalidArgument, match="larger than NS_MAX_K"):
        negsamp.mine_topk(q, c, negsamp.NS_MAX_K + 1)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "3"])
def test_seed_and_step_do_not_wrap(rng, seed):
    require("ns_sample")
    cid = np.arange(12).reshape(2, 6)
    s = rng.standard_normal((2, 6)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument, match="sample: seed"):
        negsamp.sample(cid, s, 2, seed=seed)
    with pytest.raises(negsamp.InvalidArgument, match="sample: step"):
        negsamp.sample(cid, s, 2, step=seed)


def test_seed_range_ends_are_distinct(rng):
    require("ns_sample")
    cid = np.arange(400).reshape(2, 200)
    s = rng.standard_normal((2, 200)).astype(np.float32)
    top = negsamp.sample(cid, s, 10, strategy="uniform", seed=2**64 - 1).index
    low = negsamp.sample(cid, s, 10, strategy="uniform", seed=0).index
    # -1 used to wrap to 2^64 - 1; now 2^64 - 1 is a seed of its own, not seed 0's twin.
    assert not np.array_equal(top, low)


def test_sample_m_is_checked_before_allocating(rng):
    require("ns_sample")
    cid = np.arange(12).reshape(2, 6)
    s = rng.standard_normal((2, 6)).astype(np.float32)
    with pytest.raises(negsamp.InvalidArgument,
                       match=r"^sample: m \(1000000000000\) is larger than the candidates per "
                             r"query \(6\)$"):
        negsamp.sample(cid, s, 10**12)
    with pytest.raises(negsamp.InvalidArgument, match="must be an integer"):
        negsamp.sample(cid, s, 2.5)
    with pytest.raises(negsamp.InvalidArgument, match="candidate_id has dtype float64"):
        negsamp.sample(cid.astype(np.float64), s, 2)
    with pytest.raises(negsamp.InvalidArgument, match="score has dtype int64"):
        negsamp.sample(cid, cid, 2)
    with pytest.raises(negsamp.InvalidArgument, match="keep has dtype float64"):
        negsamp.sample(cid, s, 2, keep=np.full((2, 6), 0.5))


@pytest.mark.parametrize("call,message", [
    (lambda: negsamp.Context("cpu", threads=2.5), "Context: threads (2.5) must be an integer"),
    (lambda: negsamp.Context("gpu"), "Context: backend ('gpu') is not one of"),
    (lambda: negsamp.Queue(4.0, 3), "Queue: capacity (4.0) must be an integer"),
    (lambda: negsamp.Queue(4, "3"), "Queue: dim ('3') must be an integer"),
    (lambda: negsamp.Step(2.5), "Step: hard_negatives (2.5) must be an integer"),
    (lambda: negsamp.filter(np.arange(6).reshape(2, 3), np.zeros((2, 3), np.float32),
                            rank=(0.5, 2)), "filter: rank[0] (0.5) must be an integer"),
    (lambda: negsamp.sample(np.arange(6).reshape(2, 3), np.zeros((2, 3), np.float32), 2,
                            query_offset=-1), "sample: query_offset (-1) must be at least 0"),
    (lambda: negsamp.similarity(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32),
                                scale="2"), "similarity: scale ('2') must be a real number"),
    (lambda: negsamp.Comm.nccl(bytes(128), 2, 5, negsamp.default_context()),
     "Comm.nccl: rank (5) is larger than 1"),
    (lambda: negsamp.Comm.nccl("id", 2, 0, negsamp.default_context()),
     "Comm.nccl: unique_id must be bytes"),
])
def test_every_integer_and_real_argument_is_checked(call, message):
    require("ns_context_create", "ns_queue_create", "ns_filter", "ns_sample", "ns_similarity")
    with pytest.raises(negsamp.InvalidArgument) as e:
        call()
    assert str(e.value).startswith(message), str(e.value)
