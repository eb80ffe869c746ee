"""Random + hard mixing from Python: negsamp.Step(random_negatives=, random_pool=) with a pool
of negsamp.sample_corpus rows, and mine_hard_negatives(random_negatives=M): the random ones are
never a positive or a hard one, the hard ones are unchanged."""
import numpy as np
import pytest

try:  # before libnegsamp loads: torch's own NCCL must be the libnccl.so.2 the process holds
    import torch  # noqa: F401
except ImportError:
    torch = None

import negsamp


def test_step_mixes_a_corpus_pool():
    r = np.random.default_rng(0)
    B, d, N, C_hard, R, h, hr = 16, 8, 200, 6, 5, 2, 3
    corpus = r.standard_normal((N, d)).astype(np.float32)
    q = r.standard_normal((B, d)).astype(np.float32)
    pos_id = r.choice(N, B, replace=False)
    hard_id = np.stack([r.choice(np.setdiff1d(np.arange(N), [p]), C_hard, replace=False)
                        for p in pos_id])
    pool = negsamp.sample_corpus(r.uniform(0.1, 1, N), B, R, exclude=[[p] for p in pos_id],
                                 seed=1).index
    cand_id = np.concatenate([hard_id, pool], 1)
    cand = corpus[cand_id]
    step = negsamp.Step(h, sampler={"strategy": "top"}, random_negatives=hr, random_pool=R)
    res = step.forward(q, corpus[pos_id], cand, candidate_id=cand_id, positive_id=pos_id)
    assert res.negative_id.shape == (B, h + hr)
    plain = negsamp.Step(h, sampler={"strategy": "top"})
    ref = plain.forward(q, corpus[pos_id], cand[:, :C_hard], candidate_id=hard_id,
                        positive_id=pos_id)
    assert np.array_equal(res.negative_id[:, :h], ref.negative_id)
    for i in range(B):
        rnd = res.negative_id[i, h:]
        assert set(rnd.tolist()) <= set(pool[i].tolist()) - set(res.negative_id[i, :h].tolist())
        assert len(set(rnd.tolist())) == hr and pos_id[i] not in rnd
    assert np.isfinite(res.loss)


def test_mine_hard_negatives_random_padding():
    datasets = pytest.importorskip("datasets")
    r = np.random.default_rng(2)
    n, d, M = 30, 8, 2
    ds = datasets.Dataset.from_dict({"anchor": [f"q{i}" for i in range(n)],
                                     "positive": [f"p{i}" for i in range(n)]})
    qe = r.standard_normal((n, d)).astype(np.float32)
    ce = r.standard_normal((n, d)).astype(np.float32)
    from negsamp import sentence_transformers as nst
    kw = dict(query_embeddings=qe, corpus_embeddings=ce, num_negatives=3,
              output_format="n-tuple", seed=4)
    base = nst.mine_hard_negatives(ds, **kw)
    mixed = nst.mine_hard_negatives(ds, random_negatives=M, **kw)
    assert mixed.column_names == base.column_names + ["negative_4", "negative_5"]
    for b, m in zip(base, mixed):
        hard = [b[f"negative_{j}"] for j in (1, 2, 3)]
        assert [m[f"negative_{j}"] for j in (1, 2, 3)] == hard
        rnd = [m["negative_4"], m["negative_5"]]
        assert len(set(rnd)) == 2 and m["positive"] not in rnd and not set(rnd) & set(hard)
    with pytest.raises(negsamp.InvalidArgument, match="random_negatives"):
        nst.mine_hard_negatives(ds, random_negatives=-1, **kw)
