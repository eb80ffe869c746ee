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


def tiny_bert(path, seed=0):
    """A SentenceTransformer over a 1-layer, 16-wide BERT made from a local config (random
    weights, no dropout) and the local word-level tokenizer, saved to path and loaded back."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    from sentence_transformers import SentenceTransformer
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for w in WORDS + [f"x{i}" for i in range(100)]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return SentenceTransformer(str(path), device="cpu")


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


def test_mine_prompts_and_batch_size_equal_sentence_transformers(model):
    # query/corpus prompts reach the encoder as sentence-transformers passes them ("query" is
    # an unknown word of the tiny vocabulary: its token shifts every query's embedding).
    ds = pairs(30, seed=50)
    corpus = corpus_words(100, seed=51)
    kw = dict(corpus=corpus, num_negatives=3, output_format="n-tuple", output_scores=True,
              query_prompt="query: red ", corpus_prompt="passage: ", batch_size=7)
    ours = nst.mine_hard_negatives(ds, model, **kw)
    _assert_same(ours, _st_mine(ds, model, **kw))
    plain = nst.mine_hard_negatives(ds, model, **{k: v for k, v in kw.items()
                                                  if "prompt" not in k})
    assert ours["scores"] != plain["scores"]


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
    # one column: it was an IndexError (list index out of range)
    with pytest.raises(negsamp.InvalidArgument, match=r"columns \['query'\]; expected"):
        nst.mine_hard_negatives(ds.select_columns(["query"]), model)
    with pytest.raises(negsamp.InvalidArgument, match="scores per pair"):
        nst.mine_hard_negatives(ds, model, cross_encoder=StubCrossEncoder(tiny_model(), width=2))


class StubCrossEncoder:
    """CrossEncoder.predict's interface over a bi-encoder: the score of (query, passage) is
    5·cos of another tiny model's embeddings plus 0.1·(number of shared words), so it ranks
    differently from the miner's model. Test-only."""

    def __init__(self, model, width=1):
        self.model, self.width, self.calls = model, width, 0

    def predict(self, pairs, batch_size=32, show_progress_bar=None, convert_to_numpy=True,
                convert_to_tensor=False, pool=None, **kw):
        self.calls += 1
        a = self.model.encode([x for x, _ in pairs], normalize_embeddings=True)
        b = self.model.encode([y for _, y in pairs], normalize_embeddings=True)
        shared = [len(set(x.split()) & set(y.split())) for x, y in pairs]
        s = 5.0 * (a * b).sum(1) + 0.1 * np.asarray(shared, np.float32)
        s = np.repeat(s[:, None], self.width, 1) if self.width > 1 else s
        return torch.from_numpy(s.astype(np.float32)) if convert_to_tensor else s


@pytest.mark.parametrize("kw", [dict(absolute_margin=0.0, output_format="n-tuple"),
                                dict(relative_margin=0.05, output_format="triplet"),
                                dict(max_score=3.0, min_score=-1.0,
                                     output_format="labeled-list")])
def test_mine_cross_encoder_equals_sentence_transformers(model, kw):
    # With a score rule sentence-transformers rescores the candidates with the cross-encoder
    # and filters / ranks by its scores: negsamp gives the same rows and scores.
    ds = pairs(30, seed=41)
    corpus = corpus_words(120, seed=42)
    ce = StubCrossEncoder(tiny_model(seed=43))
    kw = dict(corpus=corpus, num_negatives=3, output_scores=True, **kw)
    ours = nst.mine_hard_negatives(ds, model, cross_encoder=ce, **kw)
    assert ce.calls >= 2
    _assert_same(ours, _st_mine(ds, model, cross_encoder=ce, **kw))


def tiny_cross_encoder(path, seed=0):
    """A sentence-transformers CrossEncoder over a 1-layer, 16-wide BERT with one output (random
    weights) and the local word-level tokenizer, saved to path and loaded back: no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast
    from sentence_transformers import CrossEncoder
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for w in WORDS + [f"x{i}" for i in range(100)]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=1,
                     initializer_range=0.5)  # spread scores: no ties among the candidates
    BertForSequenceClassification(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return CrossEncoder(str(path), device="cpu")


def test_mine_real_cross_encoder_equals_sentence_transformers(model, tmp_path):
    # A real (tiny, local) CrossEncoder through its own predict: the same rows and scores as
    # sentence-transformers' miner given that cross-encoder.
    ds = pairs(12, seed=47)
    corpus = corpus_words(50, seed=48)
    ce = tiny_cross_encoder(tmp_path / "ce", seed=49)
    kw = dict(corpus=corpus, num_negatives=2, absolute_margin=0.0, output_format="n-tuple",
              output_scores=True)
    _assert_same(nst.mine_hard_negatives(ds, model, cross_encoder=ce, **kw),
                 _st_mine(ds, model, cross_encoder=ce, **kw))


def test_mine_cross_encoder_filters_above_the_positive(model):
    # The NV-Retriever rule on cross-encoder scores: no negative scores above 95% of the
    # positive's cross-encoder score, checked with the stub's own scores.
    ds = pairs(25, seed=44)
    corpus = corpus_words(100, seed=45) + list(ds["answer"][:5])
    ce = StubCrossEncoder(tiny_model(seed=46))
    out, counts = nst.mine_hard_negatives(ds, model, corpus=corpus, cross_encoder=ce,
                                          relative_margin=0.05, num_negatives=4,
                                          output_format="triplet", return_counts=True)
    assert len(out) > 0 and sum(counts.values()) > 0, counts
    sp = ce.predict(list(zip(out["query"], out["answer"])))
    sn = ce.predict(list(zip(out["query"], out["negative"])))
    assert np.all(sn <= sp - np.abs(sp) * 0.05 + 1e-5)


# ------------------------------------------------------------------ losses


def _batch(model, n=8, negs=2, seed=0):
    """Tokenised (anchor, positive, negative_1..negs) columns of n rows, all texts distinct."""
    r = np.random.default_rng(seed)
    cols = [[" ".join(r.choice(WORDS, 4, replace=False)) + f" x{c * n + i}" for i in range(n)]
            for c in range(2 + negs)]
    tok = getattr(model, "preprocess", None) or model.tokenize
    return [tok(c) for c in cols], cols


def _loss_and_grad(model, loss_fn, feats):
    model.zero_grad()
    loss = loss_fn([dict(f) for f in feats], None)
    loss.backward()
    g = torch.cat([p.grad.reshape(-1).clone() for p in model.parameters() if p.grad is not None])
    return float(loss.detach()), g


def _assert_close_loss_grad(a, b, rtol=2e-4, atol=2e-6):
    assert abs(a[0] - b[0]) <= atol + rtol * abs(b[0]), (a[0], b[0])
    torch.testing.assert_close(a[1], b[1], rtol=rtol, atol=atol)


@pytest.mark.parametrize("similarity", ["cos_sim", "dot_score"])
@pytest.mark.parametrize("negs", [0, 1, 3])
def test_mnrl_equals_sentence_transformers(similarity, negs):
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers import util
    model = tiny_model(seed=2)
    feats, _ = _batch(model, n=8, negs=negs, seed=negs)
    fct = getattr(util, similarity)
    scale = 20.0 if similarity == "cos_sim" else 1.0
    ref = _loss_and_grad(model, losses.MultipleNegativesRankingLoss(model, scale, fct), feats)
    ours = _loss_and_grad(model, nst.MultipleNegativesRankingLoss(model, scale, fct), feats)
    _assert_close_loss_grad(ours, ref)
    # NegsampLoss with temperature = 1/scale is the same loss.
    ours_t = _loss_and_grad(model, nst.NegsampLoss(model, similarity_fct=fct,
                                                   temperature=1.0 / scale), feats)
    _assert_close_loss_grad(ours_t, ref)


def test_cached_mnrl_equals_sentence_transformers(tmp_path):
    from sentence_transformers.sentence_transformer import losses
    model = tiny_bert(tmp_path / "bert", seed=3)
    feats, _ = _batch(model, n=10, negs=1, seed=4)
    ref = _loss_and_grad(model, losses.CachedMultipleNegativesRankingLoss(
        model, mini_batch_size=3), feats)
    ours = _loss_and_grad(model, nst.CachedMultipleNegativesRankingLoss(
        model, mini_batch_size=3), feats)
    plain = _loss_and_grad(model, losses.MultipleNegativesRankingLoss(model), feats)
    _assert_close_loss_grad(ours, ref)
    _assert_close_loss_grad(ours, plain)


def _st_gist(model, guide, **kw):
    # sentence-transformers' own GISTEmbedLoss.forward; its constructor refuses a
    # StaticEmbedding's tokenizers.Tokenizer, so the instance is assembled here (same tokenizer:
    # no re-tokenising, which is what its constructor would decide).
    from sentence_transformers.sentence_transformer import losses
    L = losses.GISTEmbedLoss.__new__(losses.GISTEmbedLoss)
    torch.nn.Module.__init__(L)
    L.model, L.guide = model, guide
    L.temperature = kw.get("temperature", 0.01)
    L.similarity_fct = torch.nn.CosineSimilarity(dim=-1)
    L.must_retokenize = False
    L.margin_strategy = kw.get("margin_strategy", "absolute")
    L.margin = kw.get("margin", 0.0)
    L.contrast_anchors = kw.get("contrast_anchors", True)
    L.contrast_positives = kw.get("contrast_positives", True)
    L.gather_across_devices = False
    L.cross_entropy_loss = torch.nn.CrossEntropyLoss()
    return L


@pytest.mark.parametrize("kw", [dict(), dict(contrast_anchors=False),
                                dict(contrast_positives=False),
                                dict(contrast_anchors=False, contrast_positives=False),
                                dict(margin_strategy="relative", margin=0.1),
                                dict(margin=-0.3, temperature=0.05)])
@pytest.mark.parametrize("negs", [0, 1])
def test_gist_equals_sentence_transformers(kw, negs):
    model, guide = tiny_model(seed=5), tiny_model(seed=6)
    feats, _ = _batch(model, n=12, negs=negs, seed=7)
    ref = _loss_and_grad(model, _st_gist(model, guide, **kw), feats)
    ours_fn = nst.GISTEmbedLoss(model, guide, **kw)
    ours = _loss_and_grad(model, ours_fn, feats)
    _assert_close_loss_grad(ours, ref, rtol=5e-4, atol=1e-5)
    with pytest.raises(negsamp.Unsupported, match="queue_size"):
        nst.GISTEmbedLoss(model, guide, queue_size=4)


@pytest.mark.parametrize("directions,partition_mode", [
    (("query_to_doc", "query_to_query"), "joint"),
    (("query_to_doc", "doc_to_query"), "joint"),
    (("query_to_doc", "doc_to_doc"), "joint"),
    (("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), "joint"),
    (("query_to_doc", "doc_to_query"), "per_direction"),
    (("query_to_doc",), "per_direction")])
@pytest.mark.parametrize("similarity,negs", [("cos_sim", 2), ("dot_score", 1), ("cos_sim", 0)])
def test_mnrl_directions_equal_sentence_transformers(directions, partition_mode, similarity,
                                                     negs):
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers import util
    model = tiny_model(seed=24)
    feats, _ = _batch(model, n=7, negs=negs, seed=25 + negs)
    fct = getattr(util, similarity)
    scale = 20.0 if similarity == "cos_sim" else 1.0
    kw = dict(directions=directions, partition_mode=partition_mode)
    ref = _loss_and_grad(model, losses.MultipleNegativesRankingLoss(model, scale, fct, **kw),
                         feats)
    ours = _loss_and_grad(model, nst.MultipleNegativesRankingLoss(model, scale, fct, **kw),
                          feats)
    _assert_close_loss_grad(ours, ref)


def test_mnrl_arguments_that_cannot_be_supported_are_named():
    model = tiny_model(seed=26)
    for mode in ("in_batch_negatives", "hard_negatives", "all_negatives"):
        with pytest.raises(negsamp.Unsupported, match=f"hardness_mode='{mode}'"):
            nst.MultipleNegativesRankingLoss(model, hardness_mode=mode, hardness_strength=5.0)
    # hardness_strength 0 has no effect in sentence-transformers either: accepted.
    nst.MultipleNegativesRankingLoss(model, hardness_mode="hard_negatives")
    with pytest.raises(negsamp.InvalidArgument, match="hardness_mode"):
        nst.MultipleNegativesRankingLoss(model, hardness_mode="hardest")
    with pytest.raises(negsamp.InvalidArgument, match="directions"):
        nst.MultipleNegativesRankingLoss(model, directions=("doc_to_query",))
    with pytest.raises(negsamp.InvalidArgument, match="per_direction"):
        nst.MultipleNegativesRankingLoss(model, directions=("query_to_doc", "query_to_query"),
                                         partition_mode="per_direction")
    with pytest.raises(negsamp.Unsupported, match="doc_to_doc with beta"):
        nst.MultipleNegativesRankingLoss(model, directions=("query_to_doc", "doc_to_doc"),
                                         beta=0.5)


def _queue_reference(model, feats, queue_texts, scale=20.0, mask=True):
    """MNRL in float64 over [positives; negatives; queue] (queue without gradient), a
    queued text equal to the anchor's positive masked for that anchor."""
    def loss(features, labels):
        e = [torch.nn.functional.normalize(model(f)["sentence_embedding"].double(), dim=-1)
             for f in features]
        with torch.no_grad():
            qe = torch.nn.functional.normalize(
                torch.from_numpy(model.encode(queue_texts)).double(), dim=-1)
        logits = e[0] @ torch.cat(e[1:] + [qe]).T * scale
        pos_texts = features_texts[1]
        for i, t in enumerate(pos_texts):
            for j, u in enumerate(queue_texts):
                if t == u and mask:
                    logits[i, len(pos_texts) * (len(e) - 1) + j] = float("-inf")
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(pos_texts)))
    features_texts = feats
    return loss


def test_queue_equals_float64_reference():
    # capacity 10, batches of 6: after two batches the queue holds b1's last 4 positives and
    # b2's 6 (FIFO); b3's loss and gradient equal the float64 MNRL with those 10 extra
    # negatives, the one whose text is b3's first positive masked for anchor 0.
    model = tiny_model(seed=27)
    tok = getattr(model, "preprocess", None) or model.tokenize
    loss_fn = nst.MultipleNegativesRankingLoss(model, queue_size=10)
    batches = [_batch(model, n=6, negs=1, seed=28 + b)[1] for b in range(3)]
    for b in range(2):
        for c in range(3):
            batches[b][c] = [t + f" b{b}" for t in batches[b][c]]
    batches[2][1][0] = batches[1][1][3]  # b3's first positive was queued in b2 ...
    batches[2][0][0] = batches[1][1][3]  # ... and is its anchor: the copy's logit is the max
    for cols in batches[:2]:
        _loss_and_grad(model, loss_fn, [tok(c) for c in cols])
    queued = batches[0][1][2:] + batches[1][1]
    rows, ids = loss_fn.queue_view()
    assert rows.shape == (10, 16) and ids.shape == (10,)
    want = torch.nn.functional.normalize(torch.from_numpy(model.encode(queued)), dim=-1)
    got_sorted = sorted(map(tuple, rows.numpy().round(5)))
    assert got_sorted == sorted(map(tuple, want.numpy().round(5)))
    feats = [tok(c) for c in batches[2]]
    ours = _loss_and_grad(model, loss_fn, feats)
    ref = _loss_and_grad(model, _queue_reference(model, batches[2], queued), feats)
    _assert_close_loss_grad(ours, ref)
    # mask_same_id=False keeps the queued copy of the positive: the unmasked reference
    nomask = nst.MultipleNegativesRankingLoss(model, queue_size=10, mask_same_id=False)
    for cols in batches[:2]:
        _loss_and_grad(model, nomask, [tok(c) for c in cols])
    ref_nomask = _loss_and_grad(model, _queue_reference(model, batches[2], queued, mask=False),
                                feats)
    assert ref_nomask[0] > ref[0] + 0.05
    _assert_close_loss_grad(_loss_and_grad(model, nomask, feats), ref_nomask)
    # no push without gradients (evaluation) or in eval mode
    n_pushed = loss_fn._queue_pushed
    with torch.no_grad():
        loss_fn([tok(c) for c in batches[0]], None)
    loss_fn.eval()
    loss_fn([tok(c) for c in batches[0]], None)
    assert loss_fn._queue_pushed == n_pushed
    with pytest.raises(negsamp.InvalidArgument, match="queue_size"):
        nst.MultipleNegativesRankingLoss(model, queue_size=-1)


def test_same_id_masking_equals_masked_reference():
    # A positive text repeated in the batch: negsamp masks the copy for the other anchor, which
    # is MultipleNegativesRankingLoss on logits with that entry at −inf.
    from sentence_transformers import util
    model = tiny_model(seed=8)
    _, cols = _batch(model, n=6, negs=1, seed=9)
    cols[1][4] = cols[1][1]
    tok = getattr(model, "preprocess", None) or model.tokenize
    feats = [tok(c) for c in cols]
    ours = _loss_and_grad(model, nst.MultipleNegativesRankingLoss(model), feats)

    def ref_loss(features, labels):
        e = [model(f)["sentence_embedding"] for f in features]
        s = util.cos_sim(e[0], torch.cat(e[1:])) * 20.0
        s = s.clone()
        s[1, 4] = float("-inf")
        s[4, 1] = float("-inf")
        return torch.nn.functional.cross_entropy(s, torch.arange(6))
    ref = _loss_and_grad(model, ref_loss, feats)
    _assert_close_loss_grad(ours, ref)
    unmasked = _loss_and_grad(model, nst.MultipleNegativesRankingLoss(model, mask_same_id=False),
                              feats)
    assert unmasked[0] > ours[0]


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_group_false_negatives_equal_masked_reference(weight):
    # Rows in one group (the trainer's labels): another row's positive in the anchor's group is
    # masked (weight 0) or down-weighted (+ log w) — MNRL on logits with those entries changed;
    # negative columns are in no group.
    from sentence_transformers import util
    model = tiny_model(seed=18)
    feats, _ = _batch(model, n=6, negs=1, seed=19)
    groups = torch.tensor([0, 1, 0, 2, 1, -1])
    loss = nst.MultipleNegativesRankingLoss(model, group_weight=weight)
    ours = _loss_and_grad(model, lambda f, _: loss(f, groups), feats)

    def ref_loss(features, labels):
        e = [model(f)["sentence_embedding"] for f in features]
        s = (util.cos_sim(e[0], torch.cat(e[1:])) * 20.0).clone()
        same = (groups.unsqueeze(1) == groups.unsqueeze(0)) & (groups.unsqueeze(1) >= 0)
        same.fill_diagonal_(False)
        adj = float("-inf") if weight == 0 else float(np.log(weight))
        s[:, :6] = torch.where(same, s[:, :6] + adj, s[:, :6])
        return torch.nn.functional.cross_entropy(s, torch.arange(6))
    ref = _loss_and_grad(model, ref_loss, feats)
    _assert_close_loss_grad(ours, ref)
    with pytest.raises(negsamp.InvalidArgument, match="group_weight"):
        nst.MultipleNegativesRankingLoss(model, group_weight=1.5)


def test_hard_negative_selection_inside_the_loss():
    # 4 candidate columns, h = 1 drawn per anchor by "top" after a filter that drops everything
    # above the positive: equals MNRL over the one column of the best surviving candidates.
    from sentence_transformers import util
    model = tiny_model(seed=10)
    feats, _ = _batch(model, n=6, negs=4, seed=11)
    loss_fn = nst.MultipleNegativesRankingLoss(model, hard_negatives=1, filter=dict(margin=0.0),
                                               sampler=dict(strategy="top"))
    ours = _loss_and_grad(model, loss_fn, feats)

    def ref_loss(features, labels):
        e = [torch.nn.functional.normalize(model(f)["sentence_embedding"], dim=-1)
             for f in features]
        q, p, h = e[0], e[1], torch.stack(e[2:], 1)
        with torch.no_grad():
            s = torch.einsum("bd,bcd->bc", q, h)
            sp = (q * p).sum(-1, keepdim=True)
            s = s.masked_fill(s > sp, float("-inf"))
            best = s.argmax(1)
            ok = torch.isfinite(s.max(1).values)
        chosen = h[torch.arange(6), best][ok]
        logits = q @ torch.cat([p, chosen]).T * 20.0
        return torch.nn.functional.cross_entropy(logits, torch.arange(6))
    ref = _loss_and_grad(model, ref_loss, feats)
    _assert_close_loss_grad(ours, ref)


def test_filter_applies_when_h_covers_every_column():
    # 2 negative columns and hard_negatives=2 (or none): the margin filter still drops the
    # candidates above the positive (it was skipped unless h < the column count).
    model = tiny_model(seed=10)
    feats, _ = _batch(model, n=6, negs=2, seed=11)

    def ref_loss(features, labels):
        e = [torch.nn.functional.normalize(model(f)["sentence_embedding"], dim=-1)
             for f in features]
        q, p, h = e[0], e[1], torch.stack(e[2:], 1)
        with torch.no_grad():
            keep = torch.einsum("bd,bcd->bc", q, h) <= (q * p).sum(-1, keepdim=True)
        seen["kept"] = int(keep.sum())
        logits = q @ torch.cat([p, h[keep]]).T * 20.0
        return torch.nn.functional.cross_entropy(logits, torch.arange(6))
    seen = {}
    ref = _loss_and_grad(model, ref_loss, feats)
    assert 0 < seen["kept"] < 12, seen  # the filter removes some, not all
    for h in (2, None):
        loss_fn = nst.MultipleNegativesRankingLoss(model, hard_negatives=h,
                                                   filter=dict(margin=0.0))
        _assert_close_loss_grad(_loss_and_grad(model, loss_fn, feats), ref)


def test_doc_to_doc_after_selection_masks_the_anchors_own_documents():
    # hard_negatives=1 of 4 columns, then directions query_to_doc + doc_to_doc (joint): row i
    # is q_i·[P; chosen] and p_i·[P; chosen] with p_i's own positive and own chosen negative
    # masked; the chosen rows follow their anchor (owner) through the selection.
    # The margin filter leaves some anchors without a negative, so the chosen rows are not
    # one per anchor in order.
    model = tiny_model(seed=10)
    feats, _ = _batch(model, n=6, negs=4, seed=12)
    loss_fn = nst.MultipleNegativesRankingLoss(
        model, hard_negatives=1, filter=dict(margin=0.0), sampler=dict(strategy="top"),
        directions=("query_to_doc", "doc_to_doc"))
    ours = _loss_and_grad(model, loss_fn, feats)
    seen = {}

    def ref_loss(features, labels):
        e = [torch.nn.functional.normalize(model(f)["sentence_embedding"].double(), dim=-1)
             for f in features]
        q, p, h = e[0], e[1], torch.stack(e[2:], 1)
        with torch.no_grad():
            s = torch.einsum("bd,bcd->bc", q, h)
            s = s.masked_fill(s > (q * p).sum(-1, keepdim=True), float("-inf"))
            best, ok = s.argmax(1), torch.isfinite(s.max(1).values)
        seen["ok"] = ok
        docs = torch.cat([p, h[torch.arange(6), best][ok]])
        own = torch.cat([torch.eye(6), torch.eye(6)[:, ok]], 1).bool()
        d2d = (p @ docs.T).masked_fill(own, float("-inf"))
        logits = torch.cat([q @ docs.T, d2d], 1) * 20.0
        return torch.nn.functional.cross_entropy(logits, torch.arange(6))
    _assert_close_loss_grad(ours, _loss_and_grad(model, ref_loss, feats))
    assert 0 < int(seen["ok"].sum()) < 6 and not bool(seen["ok"][0]), seen  # rows shift


def test_learn_temperature_gets_a_gradient():
    model = tiny_model(seed=12)
    feats, _ = _batch(model, n=6, negs=1, seed=13)
    loss_fn = nst.MultipleNegativesRankingLoss(model, learn_temperature=True, symmetric=True,
                                               tau_plus=0.0, beta=0.5)
    loss = loss_fn([dict(f) for f in feats], None)
    loss.backward()
    assert loss_fn.log_temperature.grad is not None and torch.isfinite(loss_fn.log_temperature.grad)


def _train(loss_name, tmp_path):
    from sentence_transformers import (SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    torch.manual_seed(0)
    model = tiny_model(seed=14)
    r = np.random.default_rng(15)
    ds = pairs(64, seed=16)
    ds = ds.add_column("negative", [" ".join(r.choice(WORDS, 4, replace=False))
                                    for _ in range(len(ds))])
    if loss_name == "mnrl":
        loss = nst.MultipleNegativesRankingLoss(model, hard_negatives=None)
    elif loss_name == "cached":
        model = tiny_bert(tmp_path / "bert", seed=14)
        loss = nst.CachedMultipleNegativesRankingLoss(model, mini_batch_size=8)
    elif loss_name == "gist":
        loss = nst.GISTEmbedLoss(model, tiny_model(seed=17), temperature=0.05)
    elif loss_name == "queue":
        loss = nst.MultipleNegativesRankingLoss(model, queue_size=40,
                                                directions=("query_to_doc", "query_to_query"))
    else:
        loss = nst.NegsampLoss(model, temperature=0.05, symmetric=True, beta=0.5,
                               learn_temperature=True)
    steps = 12 if loss_name == "cached" else 24  # a BERT layer costs more than a lookup
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=16,
        learning_rate=0.2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, loss


@pytest.mark.parametrize("loss_name", ["mnrl", "cached", "gist", "extras", "queue"])
def test_trainer_end_to_end(loss_name, tmp_path):
    losses, loss = _train(loss_name, tmp_path)
    assert len(losses) >= 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    if loss_name == "queue":  # the trainer's steps filled the queue (capacity 40)
        assert loss.queue_view()[0].shape[0] == 40
    if loss_name == "extras":  # the trainer's optimizer also updates the loss's temperature
        assert abs(loss.temperature - 0.05) > 1e-4, loss.temperature


@pytest.mark.parametrize("tau_plus,beta", [(0.1, 0.0), (0.05, 0.5), (0.0, 1.0)])
def test_debiased_and_reweighted_equal_float64_reference(tau_plus, beta):
    # DESIGN.md's estimator (Chuang et al. debiasing, Robinson et al. reweighting) written
    # here in float64 torch over the whole candidate set: the loss and the model's gradient.
    model = tiny_model(seed=18)
    feats, _ = _batch(model, n=8, negs=1, seed=19)
    tau = 0.05
    ours = _loss_and_grad(model, nst.NegsampLoss(model, temperature=tau, tau_plus=tau_plus,
                                                 beta=beta), feats)

    def ref_loss(features, labels):
        e = [torch.nn.functional.normalize(model(f)["sentence_embedding"].double(), dim=-1)
             for f in features]
        logits = e[0] @ torch.cat(e[1:]).T / tau
        B = logits.shape[0]
        per = []
        for i in range(B):
            lp = logits[i, i]
            x = torch.cat([logits[i, :i], logits[i, i + 1:]])
            n = x.numel()
            rw = n * torch.exp((1 + beta) * x).sum() / torch.exp(beta * x).sum()
            floor = n * torch.exp(torch.tensor(-1.0 / tau, dtype=torch.float64))
            ng = torch.maximum((rw - tau_plus * n * torch.exp(lp)) / (1 - tau_plus), floor)
            per.append(-lp + torch.log(torch.exp(lp) + ng))
        return torch.stack(per).mean()
    _assert_close_loss_grad(ours, _loss_and_grad(model, ref_loss, feats))
    plain = _loss_and_grad(model, nst.NegsampLoss(model, temperature=tau), feats)
    assert abs(ours[0] - plain[0]) > 1e-4  # the estimator changes the loss


_DIRECTIONS_TRIED = [("query_to_doc",),
                     ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")]


def _gather_worker(rank, world, init_file, out, sizes):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model = tiny_model(seed=20)
        cols = _gather_columns(sizes)
        lo = sum(sizes[:rank])
        tok = getattr(model, "preprocess", None) or model.tokenize
        feats = [tok(c[lo:lo + sizes[rank]]) for c in cols]
        got = []
        for directions in _DIRECTIONS_TRIED:  # one process group for all: spawning is slow
            model.zero_grad()
            loss_fn = nst.MultipleNegativesRankingLoss(model, gather_across_devices=True,
                                                       directions=directions)
            loss = loss_fn([dict(f) for f in feats], None)
            loss.backward()
            g = torch.cat([p.grad.reshape(-1) for p in model.parameters()
                           if p.grad is not None])
            dist.all_reduce(g)
            g /= world  # what DistributedDataParallel does with the ranks' gradients
            total = loss.detach().clone()
            dist.all_reduce(total)
            got.append({"grad": g, "loss": total / world})
        if rank == 0:
            torch.save(got, out)
    finally:
        dist.destroy_process_group()


def _gather_columns(sizes):
    r = np.random.default_rng(22)
    n = sum(sizes)
    cols = [[" ".join(r.choice(WORDS, 4, replace=False)) + f" c{c}r{i}" for i in range(n)]
            for c in range(3)]
    cols[1][n - 1] = cols[1][0]  # one positive text on both ranks: masked across ranks too
    return cols


def test_gather_across_devices_gradient_equals_single_process(tmp_path):
    # 2 CPU processes (gloo), uneven batches (5 + 3): the DDP-averaged gradient equals the
    # gradient of the whole batch of 8 in one process, and so does the mean loss; with every
    # direction too (the gathered candidates then hold the other ranks' anchors).
    import torch.distributed as dist
    import torch.multiprocessing as mp
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    sizes = (5, 3)
    out = tmp_path / "rank0.pt"
    # spawn (fork after torch's thread pools exist can hang): the workers import torch and
    # sentence-transformers again, the slow part of this test.
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(out), sizes), nprocs=2,
             join=True)
    model = tiny_model(seed=20)
    tok = getattr(model, "preprocess", None) or model.tokenize
    feats = [tok(c) for c in _gather_columns(sizes)]
    for directions, got in zip(_DIRECTIONS_TRIED, torch.load(out)):
        loss, g = _loss_and_grad(
            model, nst.MultipleNegativesRankingLoss(model, directions=directions), feats)
        torch.testing.assert_close(got["grad"], g, rtol=1e-4, atol=1e-6)
        # Each rank's loss is scaled by world · B_rank / B_global: their mean is the global mean.
        assert abs(float(got["loss"]) - loss) < 1e-4 * max(1.0, abs(loss)), directions


def test_mine_guide_embeddings_equal_guide_model(model):
    ds = pairs(20, seed=23)
    corpus = corpus_words(80, seed=24) + list(ds["answer"])
    guide = tiny_model(seed=1)
    kw = dict(corpus=corpus, num_negatives=3, output_format="n-tuple", guide_margin=0.0)
    by_model = nst.mine_hard_negatives(ds, model, guide_model=guide, **kw)
    by_emb = nst.mine_hard_negatives(
        ds, model, guide_query_embeddings=guide.encode(list(ds["query"])),
        guide_corpus_embeddings=guide.encode(corpus), **kw)
    _assert_same(by_emb, by_model)
    with pytest.raises(negsamp.InvalidArgument, match="every positive must be in corpus"):
        nst.mine_hard_negatives(ds, model, corpus=corpus[:80],
                                guide_query_embeddings=guide.encode(list(ds["query"])),
                                guide_corpus_embeddings=guide.encode(corpus[:80]),
                                **{k: v for k, v in kw.items() if k != "corpus"})
