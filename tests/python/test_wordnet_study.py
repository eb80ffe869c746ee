"""The WordNet study's own pieces on tiny hand-checked cases (bench/wordnet_study.py): the data
line parser, the false-negative check against a hand-built relation set, the retrieval
metrics against hand-computed values, the sparse TF-IDF scores against a dense reference and
the encoder's gradient against finite differences. Not the study itself (no WordNet needed)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "wordnet_study.py"
_spec = importlib.util.spec_from_file_location("wordnet_study", _PATH)
ws = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ws)


def test_parse_data_line():
    # A data.noun line in WordNet 3.0's layout (w_cnt is hexadecimal: 0c = 12 would be many).
    line = ("02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 003 @ 02083346 n 0000 "
            "~ 01322604 n 0000 %p 02158846 n 0000 | a member of the genus Canis (probably "
            "descended from the common wolf); occurs in many breeds; \"the dog barked all night\"")
    off, lemmas, ptrs, definition = ws.parse_data_line(line)
    assert off == 2084071
    assert lemmas == ["dog", "domestic dog", "Canis familiaris"]
    assert ptrs == [("@", 2083346, "n"), ("~", 1322604, "n"), ("%p", 2158846, "n")]
    assert definition == ("a member of the genus Canis (probably descended from the common "
                          "wolf); occurs in many breeds")
    hexline = "00000001 03 a 0b " + " ".join(f"w{i} 0" for i in range(11)) + " 000 | x"
    assert len(ws.parse_data_line(hexline)[1]) == 11
    adj = "00000002 00 a 01 big(a) 0 000 | large"
    assert ws.parse_data_line(adj)[1] == ["big"]


def _relations():
    # 0 bank (money), 1 Bank (river side), 2 slope (hypernym of 1), 3 depository (shares no
    # whole lemma with 0),
    # 4 cat (unrelated), 5 riverbank (hyponym of 1, shares no lemma)
    lemma_sets = [["bank", "depository financial institution"], ["Bank"], ["slope", "incline"],
                  ["depository"], ["cat"], ["riverbank", "riverside"]]
    links = [set(), {2, 5}, {1}, set(), set(), {1}]
    return ws.Relations(lemma_sets, links)


def test_false_negative_against_hand_built_relations():
    rel = _relations()
    cand = np.array([[1, 2, 3, 4, -1, 0],    # positive 0
                     [0, 2, 5, 4, 1, -1]])   # positive 1
    lem, anyrel = rel.false_negative(np.array([[0], [1]]), cand)
    # 0 and 1 share "bank" (case-insensitive); "depository" ≠ "depository financial
    # institution"; the positive itself and padding are never false negatives.
    assert lem.tolist() == [[True, False, False, False, False, False],
                            [True, False, False, False, False, False]]
    assert anyrel.tolist() == [[True, False, False, False, False, False],
                               [True, True, True, False, False, False]]


def test_build_task_links_are_symmetric():
    syn = {10: (["a"], [("@", 20)], "def a"), 20: (["b", "a"], [], "def b"),
           30: (["c"], [("~", 10), ("@", 99)], "def c")}
    queries, docs, rel = ws.build_task(syn, [10, 20, 30])
    assert queries == ["def a", "def b", "def c"] and docs == ["a", "b; a", "c"]
    assert rel.links == [{1, 2}, {0}, {0}]  # 99 is outside the subset
    assert rel.shares_lemma(0, 1) and not rel.shares_lemma(0, 2)


def test_rank_metrics_hand_computed():
    scores = np.array([[0.9, 0.1, 0.5, 0.2],    # relevant col 0: rank 1
                       [0.3, 0.2, 0.8, 0.9],    # relevant col 1: rank 4
                       [0.5, 0.7, 0.7, 0.1],    # relevant col 0: two above → rank 3
                       [0.5, 0.7, 0.7, 0.1]])   # relevant col 2: tied with col 1 → rank 1
    m = ws.rank_metrics(scores, np.array([0, 1, 0, 2]))
    assert m["ranks"].tolist() == [1, 4, 3, 1]
    assert m["R@1"] == pytest.approx(2 / 4)
    assert m["R@10"] == pytest.approx(1.0)
    assert m["MRR"] == pytest.approx((1 + 1 / 4 + 1 / 3 + 1) / 4)
    wide = np.zeros((1, 12))
    wide[0, :11] = 1.0  # the relevant column 11 is below 11 others: rank 12, outside R@10
    m = ws.rank_metrics(wide, np.array([11]))
    assert (m["R@10"], m["MRR"]) == (0.0, pytest.approx(1 / 12))


def _random_csr(rng, n, nb, per):
    dense = np.zeros((n, nb), np.float32)
    for i in range(n):
        k = rng.integers(0, per + 1)  # empty rows too
        cols = rng.choice(nb, size=k, replace=False)
        dense[i, cols] = rng.random(k).astype(np.float32) + 0.1
    indptr = np.concatenate([[0], np.cumsum((dense > 0).sum(1))]).astype(np.int64)
    idx = np.concatenate([np.flatnonzero(r) for r in dense] + [np.zeros(0, int)]).astype(np.int64)
    w = dense[dense > 0].astype(np.float32)
    return dense, (indptr, idx, w)


def test_sparse_scores_match_dense_reference(rng, monkeypatch):
    monkeypatch.setattr(ws, "NBUCKETS", 40)
    dq, q = _random_csr(rng, 7, 40, 6)
    dd, d = _random_csr(rng, 9, 40, 4)
    rows = np.array([3, 0, 6, 6])
    full = ws.tfidf_scores_all(q, rows, d)
    np.testing.assert_allclose(full, dq[rows].astype(np.float64) @ dd.T.astype(np.float64),
                               rtol=1e-5, atol=1e-6)
    cand = np.array([[0, 8, -1], [2, 2, 5], [7, 1, 0], [4, -1, 3]])
    pair = ws.sparse_pair_dots(q, rows, d, cand)
    ref = np.array([[dq[r] @ dd[c] if c >= 0 else 0 for c in cr] for r, cr in zip(rows, cand)])
    np.testing.assert_allclose(pair, ref, rtol=1e-5, atol=1e-6)


def test_segment_sum_with_empty_segments(rng):
    x = rng.standard_normal((5, 3)).astype(np.float32)
    indptr = np.array([0, 0, 2, 2, 5, 5])
    ref = np.array([x[a:b].sum(0) if b > a else np.zeros(3) for a, b in
                    zip(indptr[:-1], indptr[1:])])
    np.testing.assert_allclose(ws.segment_sum(x, indptr), ref, rtol=1e-6, atol=1e-6)


def test_encoder_gradient_finite_differences(rng, monkeypatch):
    monkeypatch.setattr(ws, "NBUCKETS", 30)
    _, csr = _random_csr(rng, 4, 30, 5)
    csr = (csr[0], csr[1], csr[2])
    rows = np.array([i for i in range(4) if csr[0][i + 1] > csr[0][i]])
    enc = ws.Encoder(6, seed=3, lr=0.1)
    enc.E = enc.E.astype(np.float64)
    r = rng.standard_normal((len(rows), 6))
    z, cache = enc.embed(csr, rows)
    ix, g = ws.Encoder.grad_rows(cache, r)  # d(sum z*r)/dE, per feature occurrence
    grad = np.zeros_like(enc.E)
    np.add.at(grad, ix, g)
    for f in np.unique(ix)[:4]:
        for c in range(6):
            old = enc.E[f, c]
            enc.E[f, c] = old + 1e-6
            up = np.sum(enc.embed(csr, rows)[0] * r)
            enc.E[f, c] = old - 1e-6
            dn = np.sum(enc.embed(csr, rows)[0] * r)
            enc.E[f, c] = old
            assert grad[f, c] == pytest.approx((up - dn) / 2e-6, rel=1e-4, abs=1e-7)
