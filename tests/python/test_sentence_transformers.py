"""negsamp.sentence_transformers against sentence-transformers itself, offline.

The model is a StaticEmbedding over a word-level tokenizer built here from a word list (no hub
download; HF_HUB_OFFLINE=1), so every test runs in seconds on a CPU. The references are
sentence_transformers.util.mine_hard_negatives and the sentence-transformers losses, called on
the same model and data; sampling is checked against its weights by a chi-square statistic.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

torch = pytest.importorskip("torch", reason="torch is not installed (tools/install_deps.sh)")
st = pytest.importorskip("sentence_transformers",
                         reason="sentence-transformers is not installed (tools/install_deps.sh)")
datasets = pytest.importorskip("datasets", reason="datasets is not installed "
                               "(tools/install_deps.sh)")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed")

import negsamp  # noqa: E402
from negsamp import sentence_transformers as nst  # noqa: E402

WORDS = ("apple banana cherry grape lemon mango melon peach pear plum river lake ocean sea "
         "stream mountain hill valley cliff rock car bus train plane boat bike road rail "
         "track bridge red blue green yellow black white purple orange brown grey small big "
         "fast slow hot cold old new dark light happy sad loud quiet soft hard sweet sour "
         "north south east west").split()


def tiny_model(dim=16, seed=0):
    """A SentenceTransformer of one StaticEmbedding over a locally built WordLevel tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.models import StaticEmbedding
    vocab = {"[UNK]": 0, "[PAD]": 1}
    for w in WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(len(vocab), dim, generator=g)
    emb = StaticEmbedding(tok, embedding_weights=weights)
    return SentenceTransformer(modules=[emb], device="cpu")


def pairs(n, seed=0, words=4, repeat_anchor=1):
    """n (anchor, positive) rows of random words; the positive shares half the anchor's words.
    repeat_anchor=r: each anchor appears r times with r different positives."""
    r = np.random.default_rng(seed)
    anchors, positives = [], []
    for i in range(n):
        a = list(r.choice(WORDS, words, replace=False))
        for _ in range(repeat_anchor):
            p = a[: words // 2] + list(r.choice(WORDS, words - words // 2, replace=False))
            anchors.append(" ".join(a) + f" {i}")
            positives.append(" ".join(p))
    return datasets.Dataset.from_dict({"query": anchors, "answer": positives})


def corpus_words(n, seed=1, words=5):
    r = np.random.default_rng(seed)
    return [" ".join(r.choice(WORDS, words, replace=False)) for _ in range(n)]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _st_mine(ds, model, **kw):
    from sentence_transformers.util import mine_hard_negatives
    return mine_hard_negatives(ds, model, verbose=False, **kw)


def _assert_same(ours, ref):
    assert ours.column_names == ref.column_names
    assert len(ours) == len(ref), (len(ours), len(ref))
    a, b = ours.to_dict(), ref.to_dict()
    for col in a:
        x, y = a[col], b[col]
        if col in ("score", "scores"):
            flat = (lambda v: np.concatenate([np.ravel(np.asarray(e, float)) for e in v])
                    if v else np.zeros(0))
            assert [np.size(e) for e in x] == [np.size(e) for e in y], col
            np.testing.assert_allclose(flat(x), flat(y), atol=2e-5, err_msg=col)
        else:
            bad = [i for i, (u, v) in enumerate(zip(x, y)) if u != v]
            assert not bad, f"column {col}: {len(bad)} rows differ, first {bad[0]}: " \
                            f"{x[bad[0]]!r} vs {y[bad[0]]!r}"


# ------------------------------------------------------------------ mining


@pytest.mark.parametrize("output_format", ["triplet", "n-tuple", "labeled-pair", "labeled-list"])
@pytest.mark.parametrize("output_scores", [False, True])
def test_mine_equals_sentence_transformers_top(model, output_format, output_scores):
    ds = pairs(40)
    corpus = corpus_words(150)
    kw = dict(corpus=corpus, num_negatives=4, sampling_strategy="top",
              output_format=output_format, output_scores=output_scores)
    _assert_same(nst.mine_hard_negatives(ds, model, **kw), _st_mine(ds, model, **kw))


@pytest.mark.parametrize("rules", [dict(absolute_margin=0.05), dict(relative_margin=0.1),
                                   dict(max_score=0.5, min_score=-0.2),
                                   dict(absolute_margin=0.0, max_score=0.6, range_max=30)])
def test_mine_equals_sentence_transformers_rules(model, rules):
    ds = pairs(40, seed=3)
    corpus = corpus_words(200, seed=4)
    for fmt in ("triplet", "n-tuple"):
        kw = dict(corpus=corpus, num_negatives=3, output_format=fmt, output_scores=True,
                  **rules)
        _assert_same(nst.mine_hard_negatives(ds, model, **kw), _st_mine(ds, model, **kw))


def test_mine_equals_sentence_transformers_several_positives(model):
    # Every query has 2 positives (sentence-transformers indexes the positive scores right
    # when all queries have the same count; see the docstring for the other case).
    ds = pairs(25, seed=5, repeat_anchor=2)
    corpus = corpus_words(120, seed=6)
    for fmt in ("triplet", "labeled-pair", "n-tuple", "labeled-list"):
        kw = dict(corpus=corpus, num_negatives=3, output_format=fmt, output_scores=True,
                  absolute_margin=0.02)
        _assert_same(nst.mine_hard_negatives(ds, model, **kw), _st_mine(ds, model, **kw))


@pytest.mark.parametrize("strategy", ["top", "random", "simans", "softmax"])
def test_mine_negatives_never_positives(model, strategy):
    # Repeated anchors with several positives, a corpus holding the positives again (the
    # de-duplication must not let a positive back in as a negative).
    ds = pairs(20, seed=7, repeat_anchor=3)
    positives = {}
    for a, p in zip(ds["query"], ds["answer"]):
        positives.setdefault(a, set()).add(p)
    corpus = corpus_words(60, seed=8) + list(ds["answer"])
    out = nst.mine_hard_negatives(ds, model, corpus=corpus, num_negatives=5,
                                  sampling_strategy=strategy, output_format="triplet", seed=3)
    assert len(out) > 0
    for a, n in zip(out["query"], out["negative"]):
        assert n not in positives[a], (a, n)
    out = nst.mine_hard_negatives(ds, model, corpus=corpus, num_negatives=5,
                                  sampling_strategy=strategy, output_format="n-tuple", seed=3)
    for row in out:
        negs = [row[f"negative_{i}"] for i in range(1, 6)]
        assert not positives[row["query"]] & set(negs)
        assert len(set(negs)) == 5  # drawn without replacement


def test_mine_seed_reproduces(model):
    ds = pairs(30, seed=9)
    corpus = corpus_words(150, seed=10)
    kw = dict(corpus=corpus, num_negatives=3, sampling_strategy="simans", range_max=50,
              output_format="n-tuple")
    a = nst.mine_hard_negatives(ds, model, seed=11, **kw).to_dict()
    b = nst.mine_hard_negatives(ds, model, seed=11, **kw).to_dict()
    c = nst.mine_hard_negatives(ds, model, seed=12, **kw).to_dict()
    assert a == b
    assert a != c


def test_mine_precomputed_embeddings_equal_model(model):
    ds = pairs(30, seed=13)
    corpus = corpus_words(100, seed=14)
    qe = model.encode(list(ds["query"]), normalize_embeddings=True)
    ce = model.encode(corpus + list(ds["answer"]), normalize_embeddings=True)
    for strategy in ("top", "simans"):
        kw = dict(num_negatives=3, sampling_strategy=strategy, output_format="triplet",
                  output_scores=True, relative_margin=0.05, seed=2, range_max=40)
        ours = nst.mine_hard_negatives(ds, model, corpus=corpus + list(ds["answer"]), **kw)
        pre = nst.mine_hard_negatives(ds, corpus=corpus + list(ds["answer"]),
                                      query_embeddings=qe, corpus_embeddings=ce, **kw)
        _assert_same(pre, ours)
    # Without a corpus: one corpus row per dataset row.
    pe = model.encode(list(ds["answer"]), normalize_embeddings=True)
    _assert_same(nst.mine_hard_negatives(ds, query_embeddings=qe, corpus_embeddings=pe),
                 nst.mine_hard_negatives(ds, model))


def _weights(strategy, s, s_plus, a=0.5, b=0.0, t=1.0):
    if strategy == "simans":
        return np.exp(-a * (s - s_plus - b) ** 2)
    return np.exp(s / t)


@pytest.mark.parametrize("strategy", ["simans", "softmax"])
def test_mine_sampling_follows_weights(strategy):
    # 3000 queries with one and the same embedding draw 1 negative each among 8 candidates
    # (draws of different queries are independent): the counts against the weights by
    # chi-square (7 degrees of freedom; 99.99 % quantile 28.5 → 35 leaves no flaky margin).
    r = np.random.default_rng(0)
    d, n_q, n_c = 8, 3000, 8
    q = r.standard_normal(d).astype(np.float32)
    q /= np.linalg.norm(q)
    c = r.standard_normal((n_c + 1, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    ds = datasets.Dataset.from_dict({"q": [f"q{i}" for i in range(n_q)], "p": ["pos"] * n_q})
    texts = ["pos"] + [f"c{j}" for j in range(n_c)]
    kw = dict(corpus=texts, query_embeddings=np.tile(q, (n_q, 1)), corpus_embeddings=c,
              num_negatives=1, range_max=n_c, sampling_strategy=strategy, seed=5,
              output_format="triplet", simans_a=2.0, softmax_temperature=0.5)
    out = nst.mine_hard_negatives(ds, **kw)
    s = (c[1:] @ q).astype(np.float64)
    w = _weights(strategy, s, float(c[0] @ q), a=2.0, t=0.5)
    p = w / w.sum()
    counts = np.array([sum(1 for x in out["negative"] if x == f"c{j}") for j in range(n_c)])
    assert counts.sum() == n_q
    chi2 = float(((counts - n_q * p) ** 2 / (n_q * p)).sum())
    assert chi2 < 35.0, (chi2, counts, n_q * p)
    top = nst.mine_hard_negatives(ds, **{**kw, "sampling_strategy": "top"})
    assert set(top["negative"]) == {f"c{int(np.argmax(s))}"}
    assert len(set(out["negative"])) > 1


def test_mine_guide_filter(model):
    ds = pairs(30, seed=15)
    corpus = corpus_words(120, seed=16)
    guide = tiny_model(seed=1)
    out, counts = nst.mine_hard_negatives(ds, model, corpus=corpus, num_negatives=3,
                                          guide_model=guide, guide_margin=0.0,
                                          output_format="triplet", return_counts=True)
    assert sum(v for k, v in counts.items() if "guide" in k) > 0, counts
    gq = guide.encode(list(out["query"]), normalize_embeddings=True)
    gp = guide.encode(list(out["answer"]), normalize_embeddings=True)
    gn = guide.encode(list(out["negative"]), normalize_embeddings=True)
    assert np.all((gq * gn).sum(1) <= (gq * gp).sum(1) + 1e-5)


def test_mine_beyond_max_k_is_exact():
    # range_max above NS_MAX_K takes the blocked path: compare with a brute-force sort.
    r = np.random.default_rng(1)
    n_c, d = negsamp.NS_MAX_K + 40, 4
    c = r.standard_normal((n_c, d)).astype(np.float32)
    q = r.standard_normal((3, d)).astype(np.float32)
    texts = [f"c{j}" for j in range(n_c)]
    ds = datasets.Dataset.from_dict({"q": ["a", "b", "c"], "p": texts[:3]})
    out = nst.mine_hard_negatives(ds, corpus=texts, query_embeddings=q, corpus_embeddings=c,
                                  similarity="dot", num_negatives=2, range_min=n_c - 10,
                                  range_max=n_c, output_format="n-tuple", output_scores=True)
    for i in range(3):
        s = c.astype(np.float64) @ q[i].astype(np.float64)
        order = np.argsort(-s, kind="stable")
        tail = [j for j in order[n_c - 10:] if j != i]  # raw ranks; the positive dropped
        want = [f"c{j}" for j in tail[:2]]
        assert [out[i]["negative_1"], out[i]["negative_2"]] == want


def test_mine_arguments_checked(model):
    ds = pairs(5)
    with pytest.raises(negsamp.InvalidArgument, match="output_format"):
        nst.mine_hard_negatives(ds, model, output_format="pairs")
    with pytest.raises(negsamp.InvalidArgument, match="sampling_strategy"):
        nst.mine_hard_negatives(ds, model, sampling_strategy="best")
    with pytest.raises(negsamp.InvalidArgument, match="query_embeddings"):
        nst.mine_hard_negatives(ds, query_embeddings=np.zeros((4, 3), np.float32),
                                corpus_embeddings=np.zeros((5, 3), np.float32))
    with pytest.raises(negsamp.InvalidArgument, match="give a model"):
        nst.mine_hard_negatives(ds)
    with pytest.raises(negsamp.Unsupported, match="cross_encoder"):
        nst.mine_hard_negatives(ds, model, cross_encoder=object())
