"""negsamp for sentence-transformers users: hard-negative mining that returns the datasets
sentence-transformers trains on, and losses that SentenceTransformerTrainer accepts.

- ``mine_hard_negatives(dataset, model=None, ...)``: the arguments and output formats of
  ``sentence_transformers.util.mine_hard_negatives``, mined exactly by negsamp (``mine_topk``,
  CPU or CUDA, no FAISS k ≤ 2048 cap), filtered by ``negsamp.filter`` and drawn by
  ``negsamp.sample`` (seeded; "top", "random", "simans", "softmax"); precomputed embeddings
  instead of a model; a guide model (GISTEmbed-style) as one more filter.
- ``NegsampLoss`` and the drop-ins ``MultipleNegativesRankingLoss``,
  ``CachedMultipleNegativesRankingLoss`` and ``GISTEmbedLoss``: the InfoNCE of
  ``torch.ops.negsamp.infonce`` (the B×N logits are never formed) over the trainer's
  (anchor, positive, negative_1..n) columns.

sentence-transformers and datasets are imported when used, so ``import negsamp`` never needs
them. Nothing here downloads anything.
"""
from __future__ import annotations

import numpy as np

from . import _core
from ._errors import InvalidArgument, Unsupported
from ._ffi import NS_MAX_K

__all__ = ["mine_hard_negatives", "NegsampLoss", "MultipleNegativesRankingLoss",
           "CachedMultipleNegativesRankingLoss", "GISTEmbedLoss"]

_FORMATS = ("triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "labeled-list")
_STRATEGIES = ("top", "random", "simans", "softmax")


def _encode(model, texts, *, query: bool, batch_size, prompt_name, prompt):
    """Unit-length float32 embeddings, as sentence-transformers' miner makes them
    (encode_query / encode_document where the model has them, else encode)."""
    fn = getattr(model, "encode_query" if query else "encode_document", None) or model.encode
    kw = dict(batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
              show_progress_bar=False)
    if prompt_name is not None:
        kw["prompt_name"] = prompt_name
    if prompt is not None:
        kw["prompt"] = prompt
    return np.ascontiguousarray(fn(list(texts), **kw), dtype=np.float32)


def _similarity_name(model, similarity):
    if similarity is None:
        similarity = getattr(model, "similarity_fn_name", None) or "cosine"
    similarity = str(similarity)
    if similarity not in ("cosine", "dot"):
        raise Unsupported(f"mine_hard_negatives: similarity ({similarity!r}) is not 'cosine' or "
                          f"'dot' (negsamp mines by inner products)")
    return similarity


def _rows_for(emb, n_rows, name, what):
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != n_rows:
        raise InvalidArgument(f"mine_hard_negatives: {name} has shape {emb.shape}; expected "
                              f"({n_rows}, d): one row per {what}")
    return np.ascontiguousarray(emb, dtype=np.float32)


def _mine(q, c, k, exclude, normalize, device):
    """Exact top-k of q against c (positives of each query excluded): (index, score), -1 / -inf
    padded. CUDA through torch.ops.negsamp.mine_topk; k > NS_MAX_K through negsamp.similarity in
    query blocks and a stable sort (ties by the lower corpus index, as mine_topk)."""
    k = min(k, c.shape[0])
    if device is not None and str(device).startswith("cuda"):
        import torch
        from . import torch_ops  # noqa: F401  (registers torch.ops.negsamp)
        dev = torch.device(device)
        off = np.zeros(len(exclude) + 1, np.int64)
        np.cumsum([len(x) for x in exclude], out=off[1:])
        ids = np.concatenate([np.asarray(x, np.int64) for x in exclude] + [np.zeros(0, np.int64)])
        if k <= NS_MAX_K:
            idx, sc = torch.ops.negsamp.mine_topk(
                torch.from_numpy(q).to(dev), torch.from_numpy(c).to(dev), k, 1.0, normalize,
                torch.from_numpy(off).to(dev), torch.from_numpy(ids).to(dev))
            return idx.cpu().numpy(), sc.cpu().numpy()
    elif k <= NS_MAX_K:
        return _core.mine_topk(q, c, k, normalize=normalize, exclude=exclude)
    # Beyond NS_MAX_K: full rows of scores, a block of queries at a time.
    index = np.full((q.shape[0], k), -1, np.int64)
    score = np.full((q.shape[0], k), -np.inf, np.float32)
    block = max(1, (1 << 26) // max(1, c.shape[0]))
    for b0 in range(0, q.shape[0], block):
        s = _core.similarity(q[b0:b0 + block], c, normalize=normalize)
        for r in range(s.shape[0]):
            s[r, np.asarray(exclude[b0 + r], np.int64)] = -np.inf
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        got = np.take_along_axis(s, order, 1)
        index[b0:b0 + s.shape[0]] = np.where(np.isfinite(got), order, -1)
        score[b0:b0 + s.shape[0]] = got
    return index, score


def _pair_scores(a, b, normalize):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if normalize:
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1).astype(np.float32)


def mine_hard_negatives(dataset, model=None, anchor_column_name: str | None = None,
                        positive_column_name: str | None = None, corpus: list | None = None, *,
                        cross_encoder=None, range_min: int = 0, range_max: int | None = None,
                        max_score: float | None = None, min_score: float | None = None,
                        absolute_margin: float | None = None,
                        relative_margin: float | None = None, num_negatives: int = 3,
                        sampling_strategy: str = "top", query_prompt_name: str | None = None,
                        query_prompt: str | None = None, corpus_prompt_name: str | None = None,
                        corpus_prompt: str | None = None, include_positives: bool = False,
                        output_format: str = "triplet", output_scores: bool = False,
                        include_scores: bool | None = None, batch_size: int = 32,
                        use_faiss: bool = False, verbose: bool = False,
                        as_triplets: bool | None = None, margin: float | None = None,
                        query_embeddings=None, corpus_embeddings=None,
                        similarity: str | None = None, device: str | None = None,
                        seed: int = 0, simans_a: float = 0.5, simans_b: float = 0.0,
                        softmax_temperature: float = 1.0, guide_model=None,
                        guide_query_embeddings=None, guide_corpus_embeddings=None,
                        guide_margin: float = 0.0, guide_relative: bool = False,
                        return_counts: bool = False, **ignored):
    """Adds mined hard negatives to a dataset of (anchor, positive) pairs, as
    ``sentence_transformers.util.mine_hard_negatives`` does, and returns a ``datasets.Dataset``
    with the same columns in the same row order (sentence-transformers 6.x): ``output_format``
    "triplet" (anchor, positive, negative [, scores = [s⁺, s⁻]]), "n-tuple" (anchor, positive,
    negative_1..n [, scores]), "labeled-pair" (anchor, passage, label | score), "labeled-list"
    (anchor, [passages], labels | scores); ``output_scores`` (``include_scores``, its older
    name) gives the scores. The corpus is ``corpus`` plus the positives,
    de-duplicated by text; repeated anchors are one query with several positives.

    What negsamp adds:

    - ``query_embeddings`` / ``corpus_embeddings``: precomputed embeddings instead of a model.
      ``query_embeddings`` has one row per dataset row (the first row of a repeated anchor is
      used); ``corpus_embeddings`` one row per entry of ``corpus`` (then every positive text must
      be in ``corpus``) or, without ``corpus``, one row per dataset row (its positive).
      ``similarity``: "cosine" (default; rows normalised) or "dot".
    - Exact mining with no k limit: negsamp's ``mine_topk`` (up to NS_MAX_K = 16384 per query;
      beyond, full score rows in blocks), on the CPU or, with ``device="cuda[:n]"``, on a GPU;
      no FAISS-GPU cap of 2048.
    - ``sampling_strategy``: "top", "random" (uniform), "simans"
      (w = exp(−a·(s − s⁺ − b)²), ``simans_a``, ``simans_b``) or "softmax" (w = exp(s/τ),
      ``softmax_temperature``), drawn without replacement by ``negsamp.sample`` keyed by
      ``seed`` and the corpus id: the same seed gives the same dataset.
    - A guide (GISTEmbed-style) as one more filter: ``guide_model`` (or
      ``guide_query_embeddings`` / ``guide_corpus_embeddings``, shaped like the embeddings
      above) drops candidate j when g_j > g⁺ − ``guide_margin`` (``guide_relative``: g_j >
      g⁺ − |g⁺|·margin), g⁺ the guide's lowest positive score.
    - ``return_counts=True`` returns (dataset, counts): candidates each rule removed.

    Where the semantics differ from sentence-transformers', on purpose:

    - The candidates are those of sentence-transformers: the top ``range_max + max_positives``
      corpus rows, the query's positives removed (the same-id rule), at most ``range_max``
      survivors. ``range_min`` counts raw ranks in that list, before any other rule (rank
      filter ``[range_min, ·)``); sentence-transformers drops the
      ``range_min`` best candidates *after* the margin / score filters, so a filter that already
      removed near-duplicates at the top makes it skip good negatives further down; range_min
      exists to skip the top ranks where false negatives live, which is a property of the
      retrieval, not of the other rules. The two agree when range_min is 0 or when no other
      rule removes a candidate above rank range_min.
    - Several positives per query: s⁺ (margins, SimANS, guide) is the lowest of the query's
      positive scores, as in sentence-transformers; every positive of the query is removed from
      its candidates by corpus id (negsamp's same-id rule, always on), so a positive never comes
      back as a negative whatever the other rules.
    - "random" is seeded (``seed``), not Python's global ``random``; fewer survivors than
      ``num_negatives`` give fewer negatives, never a filtered one.
    - ``include_positives=True`` keeps the positives among the candidates (their ranks count);
      the output format is forced to "n-tuple" as in sentence-transformers.
    - ``cross_encoder`` rescoring is not supported (raises Unsupported); ``use_faiss`` and other
      FAISS / multi-process arguments are accepted and ignored (negsamp's search is exact).
    """
    fn = "mine_hard_negatives"
    try:
        from datasets import Dataset
    except ImportError as e:  # pragma: no cover - exercised where datasets is missing
        raise ImportError(f"{fn}: needs the datasets package (pip install datasets)") from e
    if cross_encoder is not None:
        raise Unsupported(f"{fn}: cross_encoder rescoring is not supported by negsamp's miner")
    unknown = set(ignored) - {"faiss_batch_size", "use_multi_process", "cache_folder"}
    if unknown:
        raise TypeError(f"{fn}: unexpected keyword arguments {sorted(unknown)}")
    if include_scores is not None:  # the name before sentence-transformers 5
        output_scores = bool(include_scores)
    if as_triplets is not None:
        output_format = "triplet" if as_triplets else "n-tuple"
    if margin is not None:
        absolute_margin = margin
    if include_positives:
        output_format = "n-tuple"
    if output_format not in _FORMATS:
        raise InvalidArgument(f"{fn}: output_format ({output_format!r}) is not one of {_FORMATS}")
    if output_format == "n-tuple-scores":
        output_format, output_scores = "n-tuple", True
    if sampling_strategy not in _STRATEGIES:
        raise InvalidArgument(f"{fn}: sampling_strategy ({sampling_strategy!r}) is not one of "
                              f"{_STRATEGIES}")
    if not isinstance(num_negatives, (int, np.integer)) or num_negatives < 1:
        raise InvalidArgument(f"{fn}: num_negatives ({num_negatives!r}) must be an integer ≥ 1")
    if not isinstance(range_min, (int, np.integer)) or range_min < 0:
        raise InvalidArgument(f"{fn}: range_min ({range_min!r}) must be an integer ≥ 0")
    if range_max is not None and range_min >= range_max:
        raise InvalidArgument(f"{fn}: range_min ({range_min}) must be smaller than range_max "
                              f"({range_max})")
    if range_max is not None and num_negatives > range_max - range_min:
        raise InvalidArgument(f"{fn}: num_negatives ({num_negatives}) is more than the "
                              f"{range_max - range_min} candidates between range_min "
                              f"({range_min}) and range_max ({range_max})")
    if model is None and (query_embeddings is None or corpus_embeddings is None):
        raise InvalidArgument(f"{fn}: give a model, or both query_embeddings and "
                              f"corpus_embeddings")

    cols = dataset.column_names
    anchor_column_name = anchor_column_name or cols[0]
    positive_column_name = positive_column_name or cols[1]
    for name in (anchor_column_name, positive_column_name):
        if name not in cols:
            raise InvalidArgument(f"{fn}: column {name!r} is not in the dataset ({cols})")
    rows_q = list(dataset[anchor_column_name])
    rows_p = list(dataset[positive_column_name])
    n_rows = len(rows_q)
    if n_rows == 0:
        raise InvalidArgument(f"{fn}: the dataset has no rows")

    given_corpus = corpus is not None
    texts = list(dict.fromkeys((list(corpus) if given_corpus else []) + rows_p))
    text_id = {t: i for i, t in enumerate(texts)}
    queries = list(dict.fromkeys(rows_q))
    query_id = {t: i for i, t in enumerate(queries)}
    Q = len(queries)
    pos_of = [[] for _ in range(Q)]       # corpus ids of each unique query's positives
    for a, p in zip(rows_q, rows_p):
        if text_id[p] not in pos_of[query_id[a]]:  # a repeated (anchor, positive) row: once
            pos_of[query_id[a]].append(text_id[p])
    n_pos = [len(x) for x in pos_of]
    max_pos = max(n_pos)

    # ---- embeddings
    if query_embeddings is not None or corpus_embeddings is not None:
        if query_embeddings is None or corpus_embeddings is None:
            raise InvalidArgument(f"{fn}: give both query_embeddings and corpus_embeddings")
        similarity = _similarity_name(None, similarity or "cosine")
        qe_rows = _rows_for(query_embeddings, n_rows, "query_embeddings", "dataset row")
        first = {}
        for r, a in enumerate(rows_q):
            first.setdefault(a, r)
        qe = qe_rows[[first[a] for a in queries]]
        if given_corpus:
            ce_rows = _rows_for(corpus_embeddings, len(corpus), "corpus_embeddings",
                                "entry of corpus")
            src = {}
            for r, t in enumerate(corpus):
                src.setdefault(t, r)
            missing = [t for t in texts if t not in src]
            if missing:
                raise InvalidArgument(f"{fn}: with corpus_embeddings, every positive must be "
                                      f"in corpus; {len(missing)} are not (first: "
                                      f"{missing[0]!r})")
            ce = ce_rows[[src[t] for t in texts]]
        else:
            ce_rows = _rows_for(corpus_embeddings, n_rows, "corpus_embeddings", "dataset row")
            src = {}
            for r, t in enumerate(rows_p):
                src.setdefault(t, r)
            ce = ce_rows[[src[t] for t in texts]]
        normalize = similarity == "cosine"
    else:
        similarity = _similarity_name(model, similarity)
        ce = _encode(model, texts, query=False, batch_size=batch_size,
                     prompt_name=corpus_prompt_name, prompt=corpus_prompt)
        qe = _encode(model, queries, query=True, batch_size=batch_size,
                     prompt_name=query_prompt_name, prompt=query_prompt)
        normalize = False  # unit rows already: cosine = dot

    # ---- the candidates: exact top range_max of the non-positive rows
    filtering = (absolute_margin is not None or relative_margin is not None
                 or max_score is not None
                 or guide_model is not None or guide_query_embeddings is not None)
    if range_max is None:  # sentence-transformers' default, so "top" mines the same rows
        range_max = range_min + num_negatives * (10 if filtering else 1) + max_pos
    # The window of sentence-transformers: the top range_max + max_positives rows, positives
    # then dropped by the same-id rule, and at most range_max survivors kept.
    k = int(min(range_max + (0 if include_positives else max_pos), len(texts)))
    if k < 1:
        raise InvalidArgument(f"{fn}: range_max ({range_max}) leaves no candidates")
    index, score = _mine(qe, ce, k, [[] for _ in range(Q)], normalize, device)

    pos_score = _pair_scores(np.repeat(qe, n_pos, axis=0),
                             ce[np.concatenate([np.asarray(p) for p in pos_of])], normalize)
    bounds = np.concatenate([[0], np.cumsum(n_pos)])
    s_plus = np.array([pos_score[bounds[i]:bounds[i + 1]].min() for i in range(Q)], np.float32)

    # ---- the filter: negsamp.filter, one rule per argument
    valid = index >= 0
    ids = np.where(valid, index, -1)
    sc = np.where(valid, score, np.float32(-3.0e38)).astype(np.float32)
    fkw = {}
    if guide_model is not None or guide_query_embeddings is not None:
        if guide_model is not None:
            gq = _encode(guide_model, queries, query=True, batch_size=batch_size,
                         prompt_name=None, prompt=None)
            gc = _encode(guide_model, texts, query=False, batch_size=batch_size,
                         prompt_name=None, prompt=None)
            gnorm = False
        else:
            if guide_corpus_embeddings is None:
                raise InvalidArgument(f"{fn}: give guide_query_embeddings and "
                                      f"guide_corpus_embeddings together")
            gq_rows = _rows_for(guide_query_embeddings, n_rows, "guide_query_embeddings",
                                "dataset row")
            gq = gq_rows[[rows_q.index(a) for a in queries]]
            n_c = len(corpus) if given_corpus else n_rows
            gc_rows = _rows_for(guide_corpus_embeddings, n_c, "guide_corpus_embeddings",
                                "entry of corpus" if given_corpus else "dataset row")
            srcs = list(corpus) if given_corpus else rows_p
            first_c = {}
            for r, t in enumerate(srcs):
                first_c.setdefault(t, r)
            gc = gc_rows[[first_c[t] for t in texts]]
            gnorm = similarity == "cosine"
        if gnorm:
            gq = gq / np.maximum(np.linalg.norm(gq, axis=1, keepdims=True), 1e-12)
            gc = gc / np.maximum(np.linalg.norm(gc, axis=1, keepdims=True), 1e-12)
        g = np.einsum("qd,qkd->qk", gq, gc[np.maximum(ids, 0)]).astype(np.float32)
        gp = _pair_scores(np.repeat(gq, n_pos, axis=0),
                          gc[np.concatenate([np.asarray(p) for p in pos_of])], False)
        g_plus = np.array([gp[bounds[i]:bounds[i + 1]].min() for i in range(Q)], np.float32)
        fkw.update(guide_score=g, guide_positive_score=g_plus, guide_margin=guide_margin,
                   guide_relative=guide_relative)
    keep, counts = _core.filter(
        ids, sc, s_plus, None if include_positives else pos_of,
        same_id=not include_positives, max_score=max_score, min_score=min_score,
        margin=absolute_margin, rel_margin=relative_margin,
        rank=(range_min, k) if range_min else None, **fkw)
    keep &= valid
    keep &= np.cumsum(keep, axis=1) <= range_max

    # ---- the draw: negsamp.sample, then best first (as sentence-transformers orders them)
    strategy = {"random": "uniform"}.get(sampling_strategy, sampling_strategy)
    m = min(num_negatives, k)
    drawn = _core.sample(ids, sc, m, positive_score=s_plus, keep=keep, strategy=strategy,
                         simans_a=simans_a, simans_b=simans_b, temperature=softmax_temperature,
                         seed=seed)
    neg = drawn.index
    neg_s = np.where(neg >= 0, drawn.score, -np.inf).astype(np.float32)
    order = np.argsort(-neg_s, axis=1, kind="stable")
    neg = np.take_along_axis(neg, order, 1)
    neg_s = np.take_along_axis(neg_s, order, 1)
    if m < num_negatives:
        pad = num_negatives - m
        neg = np.concatenate([neg, np.full((Q, pad), -1, np.int64)], 1)
        neg_s = np.concatenate([neg_s, np.full((Q, pad), -np.inf, np.float32)], 1)

    out = _format(output_format, output_scores, anchor_column_name, positive_column_name,
                  queries, texts, pos_of, pos_score, bounds, neg, neg_s, num_negatives)
    if verbose:
        kept = int((neg >= 0).sum())
        print(f"{fn}: {Q} queries, corpus of {len(texts)}, {k} candidates each; rules removed "
              f"{counts}; {kept} negatives drawn ({Q * num_negatives - kept} missing)")
    ds = Dataset.from_dict(out)
    return (ds, counts) if return_counts else ds


def _format(output_format, scores, a_col, p_col, queries, texts, pos_of, pos_score, bounds, neg,
            neg_s, n):
    """The columns of sentence-transformers' (6.x) output formats, rows grouped by unique query
    (in first-appearance order), then by positive, as it writes them."""
    found = neg >= 0
    if output_format == "triplet":
        out = {a_col: [], p_col: [], "negative": []}
        if scores:
            out["scores"] = []
        for qi, q in enumerate(queries):
            for j, p in enumerate(pos_of[qi]):
                for c in range(n):
                    if not found[qi, c]:
                        continue
                    out[a_col].append(q)
                    out[p_col].append(texts[p])
                    out["negative"].append(texts[neg[qi, c]])
                    if scores:
                        out["scores"].append([float(pos_score[bounds[qi] + j]),
                                              float(neg_s[qi, c])])
    elif output_format == "labeled-pair":
        last = "score" if scores else "label"
        out = {a_col: [], p_col: [], last: []}
        for qi, q in enumerate(queries):
            rows = [(texts[p], 1, pos_score[bounds[qi] + j]) for j, p in enumerate(pos_of[qi])]
            rows += [(texts[neg[qi, c]], 0, neg_s[qi, c]) for c in range(n) if found[qi, c]]
            for t, lab, sc in rows:
                out[a_col].append(q)
                out[p_col].append(t)
                out[last].append(float(sc) if scores else lab)
    elif output_format == "n-tuple":
        out = {a_col: [], p_col: [], **{f"negative_{c + 1}": [] for c in range(n)}}
        if scores:
            out["scores"] = []
        for qi, q in enumerate(queries):
            if not found[qi].all():
                continue
            for j, p in enumerate(pos_of[qi]):
                out[a_col].append(q)
                out[p_col].append(texts[p])
                for c in range(n):
                    out[f"negative_{c + 1}"].append(texts[neg[qi, c]])
                if scores:
                    out["scores"].append([float(pos_score[bounds[qi] + j])]
                                         + [float(x) for x in neg_s[qi]])
    else:  # labeled-list
        last = "scores" if scores else "labels"
        out = {a_col: [], p_col: [], last: []}
        for qi, q in enumerate(queries):
            if not found[qi].any():
                continue
            cs = [c for c in range(n) if found[qi, c]]
            for j, p in enumerate(pos_of[qi]):
                out[a_col].append(q)
                out[p_col].append([texts[p]] + [texts[neg[qi, c]] for c in cs])
                out[last].append([float(pos_score[bounds[qi] + j])]
                                 + [float(neg_s[qi, c]) for c in cs] if scores
                                 else [1] + [0] * len(cs))
    return out
