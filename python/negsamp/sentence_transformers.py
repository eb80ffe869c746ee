"""negsamp for sentence-transformers users: hard-negative mining that returns the datasets
sentence-transformers trains on, and losses that SentenceTransformerTrainer accepts.

- ``mine_hard_negatives(dataset, model=None, ...)``: the arguments and output formats of
  ``sentence_transformers.util.mine_hard_negatives``, mined exactly by negsamp (``mine_topk``,
  CPU or CUDA, no FAISS k ≤ 2048 cap), filtered by ``negsamp.filter`` and drawn by
  ``negsamp.sample`` (seeded; "top", "random", "simans", "softmax"); precomputed embeddings
  instead of a model; a guide model (GISTEmbed-style) as one more filter.
- ``cluster_batch_sampler(group_ids, ...)``: the ``batch_sampler`` of
  SentenceTransformerTrainingArguments for batches of one cluster (TAS-B) or of nearest
  clusters (NGAME), planned by ``negsamp.plan_batches`` (``ClusterBatchSampler``).
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

__all__ = ["mine_hard_negatives", "cluster_batch_sampler", "ClusterBatchSampler", "NegsampLoss",
           "MultipleNegativesRankingLoss",
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
                        random_negatives: int = 0, return_counts: bool = False, **ignored):
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
      beyond, full score rows in blocks), on the CPU or, with ``device="cuda[:n]"``, on a GPU
      through ``torch.ops.negsamp.mine_topk`` (untested on GPU so far); no FAISS-GPU cap of
      2048.
    - ``sampling_strategy``: "top", "random" (uniform), "simans"
      (w = exp(−a·(s − s⁺ − b)²), ``simans_a``, ``simans_b``) or "softmax" (w = exp(s/τ),
      ``softmax_temperature``), drawn without replacement by ``negsamp.sample`` keyed by
      ``seed`` and the corpus id: the same seed gives the same dataset.
    - A guide (GISTEmbed-style) as one more filter: ``guide_model`` (or
      ``guide_query_embeddings`` / ``guide_corpus_embeddings``, shaped like the embeddings
      above) drops candidate j when g_j > g⁺ − ``guide_margin`` (``guide_relative``: g_j >
      g⁺ − |g⁺|·margin), g⁺ the guide's lowest positive score.
    - ``random_negatives=M``: M more negatives per query after the hard ones (random padding,
      as FlagEmbedding and contrastors add): corpus entries drawn uniformly without replacement
      by ``negsamp.sample_corpus`` (seeded by ``seed``), never a positive or one of the query's
      hard negatives; n-tuple rows get num_negatives + M negative columns, hard ones first.
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
    - ``cross_encoder`` (anything with sentence-transformers' ``CrossEncoder.predict``, one
      score per (query, passage) pair): the mined candidates and the positives are rescored by
      it, the candidates re-ordered by its scores (ties keep the bi-encoder's order), and every
      rule (margins — the FlagEmbedding / NV-Retriever practice of dropping candidates the
      cross-encoder scores near or above the positive —, max/min score, range_min counted in
      the re-ordered list, the draw) and the output scores use the cross-encoder's scores.
      sentence-transformers rescores only when a margin or score rule is given and ignores the
      cross-encoder otherwise; negsamp always rescores when one is given. With a rule the two
      agree.
    - ``use_faiss`` and other FAISS / multi-process arguments are accepted and ignored
      (negsamp's search is exact).
    """
    fn = "mine_hard_negatives"
    try:
        from datasets import Dataset
    except ImportError as e:  # pragma: no cover - exercised where datasets is missing
        raise ImportError(f"{fn}: needs the datasets package (pip install datasets)") from e
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
    if not isinstance(random_negatives, (int, np.integer)) or random_negatives < 0:
        raise InvalidArgument(f"{fn}: random_negatives ({random_negatives!r}) must be an "
                              f"integer ≥ 0")
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
    if len(cols) < 2 and not (anchor_column_name and positive_column_name):
        raise InvalidArgument(f"{fn}: the dataset has columns {cols}; expected (anchor, "
                              f"positive) pairs: the first two columns, or "
                              f"anchor_column_name and positive_column_name")
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
                 or max_score is not None or (cross_encoder is not None and min_score is not None)
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
    if cross_encoder is not None:
        index, score, pos_score = _rescore(cross_encoder, queries, texts, pos_of, index, score,
                                           batch_size)
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
            first_q = {}
            for r, a in enumerate(rows_q):
                first_q.setdefault(a, r)
            gq = gq_rows[[first_q[a] for a in queries]]
            n_c = len(corpus) if given_corpus else n_rows
            gc_rows = _rows_for(guide_corpus_embeddings, n_c, "guide_corpus_embeddings",
                                "entry of corpus" if given_corpus else "dataset row")
            srcs = list(corpus) if given_corpus else rows_p
            first_c = {}
            for r, t in enumerate(srcs):
                first_c.setdefault(t, r)
            missing = [t for t in texts if t not in first_c]
            if missing:
                raise InvalidArgument(f"{fn}: with guide_corpus_embeddings, every positive must "
                                      f"be in corpus; {len(missing)} are not (first: "
                                      f"{missing[0]!r})")
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

    if random_negatives:  # scored as the hard ones are: by the cross-encoder when given
        def score_pairs(qi, ci):
            if cross_encoder is not None:
                return _cross_encoder_scores(cross_encoder, [(queries[a], texts[c]) for a, c in
                                                             zip(qi, ci)], batch_size)
            return _pair_scores(qe[qi], ce[ci], normalize)
        neg, neg_s = _add_random(neg, neg_s, random_negatives, pos_of, len(texts), seed,
                                 score_pairs)
        num_negatives += random_negatives
    out = _format(output_format, output_scores, anchor_column_name, positive_column_name,
                  queries, texts, pos_of, pos_score, bounds, neg, neg_s, num_negatives)
    if verbose:
        kept = int((neg >= 0).sum())
        print(f"{fn}: {Q} queries, corpus of {len(texts)}, {k} candidates each; rules removed "
              f"{counts}; {kept} negatives drawn ({Q * num_negatives - kept} missing)")
    ds = Dataset.from_dict(out)
    return (ds, counts) if return_counts else ds


def _add_random(neg, neg_s, M, pos_of, N, seed, score_pairs):
    """M more negatives per query after the hard ones: corpus rows (of N) drawn uniformly
    without replacement by negsamp.sample_corpus, never a positive or a hard one; scored by
    score_pairs(query rows, corpus rows) like the hard ones."""
    from ._weighted import sample_corpus
    Q = neg.shape[0]
    ex = [list(pos_of[i]) + [int(x) for x in neg[i] if x >= 0] for i in range(Q)]
    rid = sample_corpus(None, Q, min(M, N), rows=N, exclude=ex, seed=seed).index
    if M > N:
        rid = np.concatenate([rid, np.full((Q, M - N), -1, np.int64)], 1)
    qi, ci = np.nonzero(rid >= 0)
    rsc = np.full(rid.shape, -np.inf, np.float32)
    if qi.size:
        rsc[qi, ci] = np.asarray(score_pairs(qi, rid[qi, ci]), np.float32)
    return np.concatenate([neg, rid], 1), np.concatenate([neg_s, rsc], 1)


def _cross_encoder_scores(cross_encoder, pairs, batch_size):
    out = cross_encoder.predict(pairs, batch_size=batch_size, show_progress_bar=False)
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    out = np.asarray(out, dtype=np.float32).reshape(len(pairs), -1)
    if out.shape[1] != 1:
        raise InvalidArgument(f"mine_hard_negatives: cross_encoder.predict gave {out.shape[1]} "
                              f"scores per pair; expected one (a CrossEncoder with num_labels=1)")
    if not np.isfinite(out).all():
        raise InvalidArgument(f"mine_hard_negatives: cross_encoder.predict gave "
                              f"{int((~np.isfinite(out)).sum())} non-finite scores")
    return out[:, 0]


def _rescore(cross_encoder, queries, texts, pos_of, index, score, batch_size):
    """The candidates and positives scored by the cross-encoder, the candidates re-ordered by
    those scores (stable: ties keep the bi-encoder's order; padding stays last). One predict
    call per query, then one for the positives, as sentence-transformers batches them: a
    model's scores can depend on the padding of its batch."""
    ce_score = np.full(index.shape, -np.inf, np.float32)
    for a in range(len(queries)):
        cs = np.nonzero(index[a] >= 0)[0]
        if cs.size:
            ce_score[a, cs] = _cross_encoder_scores(
                cross_encoder, [(queries[a], texts[index[a, c]]) for c in cs], batch_size)
    pos_pairs = [(queries[a], texts[p]) for a in range(len(queries)) for p in pos_of[a]]
    pos_score = _cross_encoder_scores(cross_encoder, pos_pairs, batch_size)
    order = np.argsort(-ce_score, axis=1, kind="stable")
    return (np.take_along_axis(index, order, 1), np.take_along_axis(ce_score, order, 1),
            pos_score)


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


# ====================================================================== losses


def _row_ids(features):
    """One int64 id per text of a tokenised column (equal texts, equal ids; the same on every
    rank: a CRC of the token ids, not Python's salted hash), or None when the features do not
    say which tokens belong to which row."""
    import zlib
    import torch
    ids = features.get("input_ids")
    if not isinstance(ids, torch.Tensor):
        return None
    rows = []
    if ids.dim() == 2:
        mask = features.get("attention_mask")
        a = ids.detach().cpu().numpy()
        m = None if mask is None else mask.detach().cpu().numpy().astype(bool)
        rows = [a[i][m[i]] if m is not None else a[i] for i in range(a.shape[0])]
    elif ids.dim() == 1 and isinstance(features.get("offsets"), torch.Tensor):
        a = ids.detach().cpu().numpy()
        off = features["offsets"].detach().cpu().numpy().tolist() + [a.shape[0]]
        rows = [a[off[i]:off[i + 1]] for i in range(len(off) - 1)]
    else:
        return None
    out = []
    for r in rows:
        b = np.ascontiguousarray(r, dtype=np.int64).tobytes()
        out.append(((zlib.crc32(b) << 31) ^ zlib.adler32(b)) & ((1 << 62) - 1))
    return torch.tensor(out, dtype=torch.int64, device=ids.device)


def _is_cosine(similarity_fct) -> bool:
    if similarity_fct is None:
        return True
    if isinstance(similarity_fct, str):
        name = similarity_fct
    else:
        name = getattr(similarity_fct, "__name__", type(similarity_fct).__name__)
    if name in ("cos_sim", "cosine", "pairwise_cos_sim", "CosineSimilarity"):
        return True
    if name in ("dot_score", "dot", "pairwise_dot_score"):
        return False
    raise Unsupported(f"NegsampLoss: similarity_fct ({name}) is not cos_sim or dot_score (negsamp's "
                      f"InfoNCE works on inner products)")


def _gather_rows(t):
    """All ranks' rows (sizes may differ), concatenated in rank order, with gradient back to the
    owner's rows: (gathered, this rank's first row, the sizes)."""
    import torch
    import torch.distributed as dist
    import torch.distributed.nn.functional as dnn
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    mx = max(sizes)
    pad = torch.cat([t, t.new_zeros((mx - t.shape[0],) + tuple(t.shape[1:]))]) if mx > t.shape[0] \
        else t
    parts = dnn.all_gather(pad) if t.requires_grad or t.is_floating_point() else None
    if parts is None:
        parts = [torch.zeros_like(pad) for _ in sizes]
        dist.all_gather(parts, pad)
    rank = dist.get_rank()
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sum(sizes[:rank]), sizes


try:  # the losses need torch (sentence-transformers does too); mining needs only numpy
    import torch as _torch
    _Module = _torch.nn.Module
except ImportError:  # pragma: no cover
    _torch = None
    _Module = object


def _embed(model, features):
    try:
        from sentence_transformers.base.losses.merged_forward import embed_columns
    except ImportError:  # sentence-transformers before 6
        return [model(f)["sentence_embedding"] for f in features]
    return embed_columns(model, features)


_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
_HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")
# Ids that never equal a text id (those are < 2**62): the candidates no rule may mask.
_FRESH_ID = 1 << 62
_QUEUE_ID = (1 << 62) + (1 << 61)


def _blocks_from_directions(fn, directions, partition_mode):
    """sentence-transformers 6's MultipleNegativesRankingLoss directions / partition_mode as
    negsamp's extra candidate blocks ({"q2q", "d2q", "d2d"}) and the symmetric flag."""
    if isinstance(directions, str):
        directions = (directions,)
    directions = tuple(directions)
    bad = [x for x in directions if x not in _DIRECTIONS]
    if not directions or bad:
        raise InvalidArgument(f"{fn}: directions {directions} must be a non-empty subset of "
                              f"{_DIRECTIONS}" + (f" ({bad} are not)" if bad else ""))
    if "query_to_doc" not in directions:
        raise InvalidArgument(f"{fn}: directions {directions} must include 'query_to_doc' (it "
                              f"holds the positive pair)")
    if partition_mode not in ("joint", "per_direction"):
        raise InvalidArgument(f"{fn}: partition_mode ({partition_mode!r}) is not 'joint' or "
                              f"'per_direction'")
    if partition_mode == "per_direction":
        same_type = sorted(set(directions) & {"query_to_query", "doc_to_doc"})
        if same_type:
            raise InvalidArgument(f"{fn}: partition_mode='per_direction' with directions "
                                  f"{same_type}: their candidates never include the positive "
                                  f"(sentence-transformers refuses it too); use 'joint'")
        return set(), "doc_to_query" in directions
    blocks = {"q2q"} if "query_to_query" in directions else set()
    if "doc_to_query" in directions:
        blocks.add("d2q")
    if "doc_to_doc" in directions:
        blocks.add("d2d")
    return blocks, False


class NegsampLoss(_Module):
    """InfoNCE over (anchor, positive, negative_1..n) columns by ``torch.ops.negsamp.infonce``:
    the B × (B·(1+n)) logits are never formed (O(B + N) extra memory, a tiled backward).

    With the defaults it is ``MultipleNegativesRankingLoss``: cross-entropy of
    ``scale · sim(anchor_i, [positives; negatives])`` against the anchor's own positive, every
    negative column shared by the whole batch, ``similarity_fct`` ``cos_sim`` (rows normalised)
    or ``dot_score``; ``temperature`` = 1/scale when given. negsamp's extras:

    - ``mask_same_id`` (default True): a candidate whose text (its token ids) equals the
      anchor's positive is masked, so a duplicated passage in a batch is not a false negative.
      MultipleNegativesRankingLoss counts it as a negative (use its NO_DUPLICATES sampler);
      on batches without duplicate passages the two are equal.
    - ``hard_negatives=h`` with ``filter`` (dict of negsamp.filter rules: max_score, min_score,
      margin, rel_margin, rank; scores without gradient) and ``sampler`` (strategy "top" (default) |
      "uniform" | "simans" | "softmax", simans_a, simans_b, temperature, seed): each anchor keeps
      min(h, n) of its n candidate columns, filtered then drawn as ``negsamp.InfoNCELoss`` does
      (keyed by seed, step, global query id, candidate id), before the shared InfoNCE. A
      ``filter`` applies also without ``hard_negatives`` (or with h >= n): every candidate it
      keeps is then a negative.
    - ``symmetric`` (adds the positive→anchor term, (L_q + L_p)/2), ``tau_plus`` (debiased
      InfoNCE), ``beta`` (hard-negative reweighting), ``learn_temperature`` (τ is a parameter
      ``log_temperature`` of this module).
    - ``queue_size=K``: a FIFO of the last K positives (embeddings after normalisation, no
      gradient; a ring on the embeddings' device) joins every anchor's candidates as negatives,
      through the op's extra rows (cross-batch memory, as ns_step's queue). Pushed after each
      training forward (``self.training`` with gradients enabled), so a batch never contrasts
      with itself; a queued passage whose text equals the anchor's positive is masked
      (same-id). Per rank under ``gather_across_devices`` (not gathered). ``reset_queue()``
      empties it.
    - ``directions`` / ``partition_mode``: sentence-transformers 6's interaction terms.
      "query_to_query" (= ``contrast_anchors``: the other anchors are candidates, the anchor
      itself masked), "doc_to_query" (joint: the anchor's row also holds p_i·q_j for every
      anchor j) and "doc_to_doc" (p_i·d for every document of the batch but the anchor's own)
      share one softmax ("joint"); "per_direction" with query_to_doc + doc_to_query is
      ``symmetric``. Still without the logit matrix: the anchor row [q_i, p_i] and candidates
      [c, 0] / [0, c] make every term an inner product of one op call (twice the width).
    - ``guide`` (GISTEmbed): a guide model's cosine g; candidate j of anchor i is masked when
      g_ij > g_i⁺ − margin (``margin_strategy`` "relative": g_i⁺ − |g_i⁺|·margin), the positive
      never. ``contrast_anchors`` adds the other anchors as candidates, ``contrast_positives``
      the other positives p_i·p_j (the anchor's own always masked; GISTEmbedLoss leaves that to
      the guide, which masks it unless margin < g⁺ − 1). Anchors with a masked candidate are
      computed densely (their logit rows only); the rest by negsamp's op.
    - ``group_weight`` (ClusterNS-style false negatives): rows carry a group id (a cluster, a
      topic; the trainer's ``labels``, i.e. the dataset's ``label`` column, or ``groups=`` of
      ``compute_loss_from_embeddings``); a candidate whose row is in the anchor's group is
      masked (0) or down-weighted (logit + log w, w in (0, 1]); the anchor's own positive never.
      Anchor i and its positive are in group i's; negative columns and queued rows are in none.
    - ``gather_across_devices``: every rank's positives and negatives (any sizes: uneven last
      batches are fine) are candidates of every anchor, the gradient of a gathered row goes back
      to its rank, and each rank's loss is scaled by world_size · B_rank / B_global, so that
      DistributedDataParallel's mean over ranks gives exactly the gradient of the mean loss over
      the global batch (MultipleNegativesRankingLoss averages per rank: equal batches only).
    """

    def __init__(self, model, scale: float = 20.0, similarity_fct=None,
                 gather_across_devices: bool = False, *, temperature: float | None = None,
                 mask_same_id: bool = True, hard_negatives: int | None = None,
                 filter: dict | None = None, sampler: dict | None = None,
                 symmetric: bool = False, tau_plus: float = 0.0, beta: float = 0.0,
                 learn_temperature: bool = False, guide=None, margin_strategy: str = "absolute",
                 margin: float = 0.0, contrast_anchors: bool = False,
                 contrast_positives: bool = False, directions=("query_to_doc",),
                 partition_mode: str = "joint", queue_size: int = 0,
                 group_weight: float | None = None):
        super().__init__()
        from .torch_ops import InfoNCELoss
        fn = type(self).__name__
        self.model = model
        if temperature is None:
            if not scale > 0:
                raise InvalidArgument(f"{fn}: scale ({scale}) must be positive")
            temperature = 1.0 / scale
        if not temperature > 0:
            raise InvalidArgument(f"{fn}: temperature ({temperature}) must be positive")
        self.scale = 1.0 / float(temperature)
        if similarity_fct is None:
            from sentence_transformers.util import cos_sim
            similarity_fct = cos_sim
        self.similarity_fct = similarity_fct
        self.normalize = _is_cosine(similarity_fct)
        self.gather_across_devices = bool(gather_across_devices)
        self.mask_same_id = bool(mask_same_id)
        self.directions = tuple((directions,) if isinstance(directions, str) else directions)
        self.partition_mode = partition_mode
        blocks, per_direction_symmetric = _blocks_from_directions(fn, directions, partition_mode)
        self.symmetric = bool(symmetric) or per_direction_symmetric
        if contrast_anchors:
            blocks.add("q2q")
        if contrast_positives:
            blocks.add("p2p")
        self._blocks = blocks
        self.contrast_anchors = "q2q" in blocks
        self.contrast_positives = "p2p" in blocks
        self.tau_plus = float(tau_plus)
        self.beta = float(beta)
        self.guide = guide
        if margin_strategy not in ("absolute", "relative"):
            raise InvalidArgument(f"{fn}: margin_strategy ({margin_strategy!r}) is not "
                                  f"'absolute' or 'relative'")
        self.margin_strategy = margin_strategy
        self.margin = float(margin)
        self._check_combinations(fn, guide)
        self.group_weight = None if group_weight is None else float(group_weight)
        if self.group_weight is not None and not 0.0 <= self.group_weight <= 1.0:
            raise InvalidArgument(f"{fn}: group_weight ({group_weight}) must be 0 (mask) or in "
                                  f"(0, 1] (down-weight)")
        if self.group_weight is not None and (guide is not None or gather_across_devices
                                              or self._blocks):
            raise Unsupported(f"{fn}: group_weight with a guide, gather_across_devices or extra "
                              f"directions is not supported")
        if not isinstance(queue_size, (int, np.integer)) or queue_size < 0:
            raise InvalidArgument(f"{fn}: queue_size ({queue_size!r}) must be an integer ≥ 0")
        if queue_size and guide is not None:
            raise Unsupported(f"{fn}: queue_size with a guide (the queue keeps no guide "
                              f"embeddings to filter its rows by)")
        self.queue_size = int(queue_size)
        self.reset_queue()
        self.hard_negatives = hard_negatives
        # The selection machinery of negsamp.InfoNCELoss (filter + sample, ns_step's keys).
        self._select = InfoNCELoss(temperature=float(temperature), hard_negatives=hard_negatives,
                                   filter=filter, sampler=sampler)
        self.filter, self.sampler = filter, sampler
        self.learn_temperature = bool(learn_temperature)
        if self.learn_temperature:
            if tau_plus:
                raise Unsupported(f"{fn}: learn_temperature with tau_plus is not supported")
            self.log_temperature = _torch.nn.Parameter(_torch.tensor(float(temperature)).log())

    def _check_combinations(self, fn, guide):
        names = {"q2q": "contrast_anchors / query_to_query", "p2p": "contrast_positives",
                 "d2q": "doc_to_query (joint)", "d2d": "doc_to_doc"}
        extra = [names[b] for b in sorted(self._blocks)]
        with_loss_options = [n for n, v in (("symmetric", self.symmetric),
                                            ("tau_plus", self.tau_plus), ("beta", self.beta)) if v]
        if (guide is not None or extra) and with_loss_options:
            what = (["a guide"] if guide is not None else []) + extra
            raise Unsupported(f"{fn}: {', '.join(what)} with {', '.join(with_loss_options)} is "
                              f"not supported")
        if guide is not None and self._blocks & {"d2q", "d2d"}:
            raise Unsupported(f"{fn}: a guide with directions doc_to_query / doc_to_doc is not "
                              f"supported (GISTEmbedLoss has no such terms)")
        if self.symmetric and self.gather_across_devices:
            raise Unsupported(f"{fn}: symmetric with gather_across_devices is not supported")

    # -- the queue of past passages
    def reset_queue(self):
        """Empties the queue of past passages."""
        self._queue_rows = None
        self._queue_ids = None
        self._queue_count = 0   # rows held
        self._queue_next = 0    # the ring slot the next row goes to
        self._queue_pushed = 0  # rows ever pushed (fresh ids for rows without text ids)

    def queue_view(self):
        """(rows (n, d), ids (n,)) held now, storage order (a ring), or (None, None)."""
        if not self._queue_count:
            return None, None
        return self._queue_rows[:self._queue_count], self._queue_ids[:self._queue_count]

    def _queue_push(self, rows, ids):
        torch = _torch
        rows = rows.detach()
        cap = self.queue_size
        if (self._queue_rows is None or self._queue_rows.shape[1] != rows.shape[1]
                or self._queue_rows.device != rows.device):
            self.reset_queue()
            self._queue_rows = rows.new_zeros((cap, rows.shape[1]))
            self._queue_ids = torch.full((cap,), -1, dtype=torch.int64, device=rows.device)
        if ids is None:  # no text ids: ids that no later anchor can share
            ids = _QUEUE_ID + self._queue_pushed + torch.arange(rows.shape[0], device=rows.device)
        self._queue_pushed += rows.shape[0]
        rows, ids = rows[-cap:], ids.detach()[-cap:]
        slots = (self._queue_next + torch.arange(rows.shape[0], device=rows.device)) % cap
        self._queue_rows[slots] = rows.to(self._queue_rows.dtype)
        self._queue_ids[slots] = ids.to(torch.int64)
        self._queue_next = (self._queue_next + rows.shape[0]) % cap
        self._queue_count = min(cap, self._queue_count + rows.shape[0])

    # -- sentence-transformers' loss interface
    @property
    def temperature(self) -> float:
        if self.learn_temperature:
            return float(self.log_temperature.detach().exp())
        return 1.0 / self.scale

    def get_config_dict(self):
        from sentence_transformers.util import similarity_fct_name
        return {"scale": self.scale, "similarity_fct": similarity_fct_name(self.similarity_fct),
                "gather_across_devices": self.gather_across_devices,
                "mask_same_id": self.mask_same_id, "hard_negatives": self.hard_negatives,
                "filter": self.filter, "sampler": self.sampler, "symmetric": self.symmetric,
                "tau_plus": self.tau_plus, "beta": self.beta,
                "learn_temperature": self.learn_temperature,
                "guide": None if self.guide is None else type(self.guide).__name__,
                "margin_strategy": self.margin_strategy, "margin": self.margin,
                "contrast_anchors": self.contrast_anchors,
                "contrast_positives": self.contrast_positives, "directions": self.directions,
                "partition_mode": self.partition_mode, "queue_size": self.queue_size,
                "group_weight": self.group_weight}

    @property
    def citation(self) -> str:
        return ("negsamp (InfoNCE without the logit matrix); see MultipleNegativesRankingLoss "
                "and GISTEmbedLoss for the losses it reproduces")

    def forward(self, sentence_features, labels=None):
        features = list(sentence_features)
        if len(features) < 2:
            raise InvalidArgument(f"{type(self).__name__}: expected (anchor, positive, "
                                  f"negative...) columns; got {len(features)}")
        embeddings = _embed(self.model, features)
        ids = [_row_ids(f) for f in features] if self.mask_same_id else None
        guide = self._guide_embeddings(features) if self.guide is not None else None
        groups = labels if self.group_weight is not None else None
        return self.compute_loss_from_embeddings(embeddings, labels, ids=ids, guide=guide,
                                                 groups=groups)

    def _guide_embeddings(self, features):
        with _torch.no_grad():
            try:
                same = (self.model.tokenizer.get_vocab() == self.guide.tokenizer.get_vocab())
            except Exception:
                same = True
            if not same:
                texts = [self.model.tokenizer.batch_decode(f["input_ids"],
                                                           skip_special_tokens=True)
                         for f in features]
                features = [{k: v.to(self.guide.device) if hasattr(v, "to") else v
                             for k, v in self.guide.tokenize(t).items()} for t in texts]
            return [_torch.nn.functional.normalize(e.float(), dim=-1)
                    for e in _embed(self.guide, features)]

    def _batch_ids(self, ids, B, n_cols, dev):
        """(positive ids, negative ids per column, the rank's id base): the texts' ids, or made
        up (unique on every rank) when the features carry none."""
        torch = _torch
        if ids is not None and all(i is not None for i in ids[:2 + n_cols]):
            return ids[1], list(ids[2:2 + n_cols]), 0, True
        base = 0
        if self.gather_across_devices:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                base = dist.get_rank() << 45
        pid = base + torch.arange(B, device=dev)
        n_ids = [base + (c + 1) * B + torch.arange(B, device=dev) + (1 << 40)
                 for c in range(n_cols)]
        return pid, n_ids, base, False

    def _select_hard(self, q, p, negs, n_ids, owners, g_negs, pid, have_ids):
        """hard_negatives=h: each anchor's h of its candidate columns (filter + draw), as flat
        rows with their ids, owners (the anchor row) and guide rows."""
        torch = _torch
        B, d = q.shape
        hard = torch.stack(negs, 1)                                       # (B, C, d)
        hid = torch.stack(n_ids, 1)
        rows, keep = self._select.select(q, p, hard, hid if have_ids else None,
                                         pid if have_ids else None)
        if self.training:
            self._select.step += 1
        safe = rows.clamp(min=0)
        flat = keep.reshape(-1)
        negs = [torch.gather(hard, 1, safe.unsqueeze(-1).expand(-1, -1, d)).reshape(-1, d)[flat]]
        n_ids = [torch.gather(hid, 1, safe).reshape(-1)[flat]]
        owners = [torch.arange(B, device=q.device).unsqueeze(1).expand_as(rows).reshape(-1)[flat]]
        if g_negs is not None:
            gh = torch.stack(g_negs, 1)
            g_negs = [torch.gather(gh, 1, safe.unsqueeze(-1).expand(-1, -1, gh.shape[2]))
                      .reshape(-1, gh.shape[2])[flat]]
        return negs, n_ids, owners, g_negs

    def _candidates(self, q, p, negs, pid, n_ids, owners, base, guide, g_negs):
        """The anchor rows and the candidate rows with their ids (and guide rows): the
        documents, then the extra blocks of contrast_anchors / contrast_positives / directions.
        With a block on the positive's side the anchor row is [q_i, p_i] and each candidate
        [c, 0] (against q_i) or [0, c] (against p_i): one inner product per term."""
        torch = _torch
        two = bool(self._blocks & {"p2p", "d2q", "d2d"})

        def side(t, second):
            if t is None or not two:
                return t
            z = t.new_zeros(t.shape)
            return torch.cat([z, t] if second else [t, z], 1)

        docs = torch.cat([p] + negs) if negs else p
        doc_ids = torch.cat([pid] + n_ids) if n_ids else pid
        g_docs = None if guide is None else torch.cat([guide[1]] + (g_negs or []))
        parts = [(docs, doc_ids, g_docs, False)]
        g_q, g_p = (None, None) if guide is None else (guide[0], guide[1])
        if "q2q" in self._blocks:   # anchor i carries its positive's id: masked for i
            parts.append((q, pid, g_q, False))
        if "p2p" in self._blocks:
            parts.append((p, pid, g_p, True))
        if "d2q" in self._blocks:   # p_i·q_j, every j (its own anchor too): never masked
            parts.append((q, _FRESH_ID + base + torch.arange(q.shape[0], device=q.device),
                          None, True))
        if "d2d" in self._blocks:   # p_i·d, masked for the anchor's own documents
            parts.append((docs, torch.cat([pid] + [pid[o] for o in owners]), None, True))
        passages = torch.cat([side(t, s) for t, _, _, s in parts])
        pids = torch.cat([i for _, i, _, _ in parts])
        g_cand = None if guide is None else torch.cat([side(g, s) for _, _, g, s in parts])
        query = torch.cat([q, p], 1) if two else q
        g_query = None if guide is None else (torch.cat([g_q, g_p], 1) if two else g_q)
        return query, passages, pids, g_query, g_cand, two

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, ids=None, guide=None,
                                     groups=None):
        """groups (B integer ids, with group_weight): row i's group — its anchor's and its
        positive's; negatives are in none."""
        torch = _torch
        F = torch.nn.functional
        q, p = embeddings[0], embeddings[1]
        B, d = q.shape
        negs = list(embeddings[2:])
        if self.normalize:
            q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
            negs = [F.normalize(n, dim=-1) for n in negs]
        dev = q.device
        pid, n_ids, base, have_ids = self._batch_ids(ids, B, len(negs), dev)
        owners = [torch.arange(B, device=dev) for _ in negs]
        g_negs = list(guide[2:]) if guide is not None else None
        if negs and self._select.selects:
            negs, n_ids, owners, g_negs = self._select_hard(q, p, negs, n_ids, owners, g_negs,
                                                            pid, have_ids)
        query, passages, pids, g_q, g_cand, two = self._candidates(
            q, p, negs, pid, n_ids, owners, base, guide, g_negs)
        extra, extra_id = self.queue_view()
        if extra is not None:  # a copy: the backward must not see the next push
            extra = extra.to(device=dev, dtype=query.dtype, copy=True)
            extra = torch.cat([extra, extra.new_zeros(extra.shape)], 1) if two else extra
            extra_id = extra_id.to(dev, copy=True)
        offset, scale_by = 0, 1.0
        if self.gather_across_devices:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                _, _, q_sizes = _gather_rows(q.detach())
                passages, offset, _ = _gather_rows(passages)
                pids, _, _ = _gather_rows(pids)
                if g_cand is not None:
                    g_cand, _, _ = _gather_rows(g_cand)
                # A positive's global row: this rank's first passage + i (its positives lead).
                scale_by = dist.get_world_size() * B / float(sum(q_sizes))
        positive = offset + torch.arange(B, device=dev)
        temperature = 1.0 / self.scale
        if self.learn_temperature:
            query = query / self.log_temperature.exp().to(query.dtype)
            temperature = 1.0
        loss = self._loss(query, passages, pids, extra, extra_id, positive, g_q, g_cand,
                          temperature, self._groups(groups, B, passages.shape[0], dev))
        if self.queue_size and self.training and torch.is_grad_enabled():
            self._queue_push(p, pid if have_ids else None)
        return loss * scale_by

    def _groups(self, groups, B, n_passages, dev):
        """(query groups, passage groups) for the op, or (None, None): the rows' groups for
        the anchors and their positives (the first B passages), none for the rest."""
        torch = _torch
        if groups is None or self.group_weight is None:
            return None, None
        qg = torch.as_tensor(groups, device=dev).reshape(-1).to(torch.int64)
        if qg.numel() != B:
            raise InvalidArgument(f"{type(self).__name__}: groups has {qg.numel()} ids for {B} "
                                  f"rows")
        rest = torch.full((n_passages - B,), -1, dtype=torch.int64, device=dev)
        return qg, torch.cat([qg, rest])

    def _loss(self, query, passages, pids, extra, extra_id, positive, g_q, g_cand, temperature,
              groups=(None, None)):
        """The mean InfoNCE over the anchors: negsamp's op for the rows the guide masks nothing
        of, the dense rows (logits of those anchors only) for the rest."""
        torch = _torch
        B, dev = query.shape[0], query.device
        mask = None
        if g_q is not None:
            g = g_q @ g_cand.T
            g_pos = g[torch.arange(B, device=dev), positive].unsqueeze(1)
            bound = g_pos - (self.margin if self.margin_strategy == "absolute"
                             else g_pos.abs() * self.margin)
            mask = g > bound
            mask[torch.arange(B, device=dev), positive] = False
        dense = None if mask is None else mask.any(1)
        loss = query.new_zeros((), dtype=torch.float32)
        sparse = torch.ones(B, dtype=torch.bool, device=dev) if dense is None else ~dense
        n_sparse = int(sparse.sum())
        use_ids = self.mask_same_id or bool(self._blocks)
        if n_sparse:
            from .torch_ops import infonce_loss  # fused when autograd will want gradients
            qs = query if n_sparse == B else query[sparse]
            qg, pg = groups
            if qg is not None and n_sparse < B:
                qg = qg[sparse]
            l_sparse = infonce_loss(
                qs, passages, None, None, extra, positive[sparse] if n_sparse < B else positive,
                pids if use_ids else None, None, extra_id if use_ids else None, temperature,
                self.symmetric, use_ids, self.tau_plus, self.beta, False, qg, pg, None, None,
                self.group_weight or 0.0)
            loss = loss + l_sparse * (n_sparse / B)
        if dense is not None and bool(dense.any()):
            qd = query[dense].float()
            logits = qd @ passages.float().T / temperature
            drop = mask[dense].clone()
            pos_d = positive[dense]
            if use_ids:
                drop |= pids.unsqueeze(0) == pids[pos_d].unsqueeze(1)
            r = torch.arange(qd.shape[0], device=dev)
            drop[r, pos_d] = False
            logits = logits.masked_fill(drop, float("-inf"))
            loss = loss + (torch.logsumexp(logits, 1) - logits[r, pos_d]).sum() / B
        return loss


class MultipleNegativesRankingLoss(NegsampLoss):
    """Drop-in for ``sentence_transformers.losses.MultipleNegativesRankingLoss`` (model, scale,
    similarity_fct, gather_across_devices, directions, partition_mode) computed by negsamp; see
    NegsampLoss for the extras (keyword-only: queue_size, hard_negatives, ...).

    ``directions`` / ``partition_mode``: every combination sentence-transformers 6 accepts
    (joint: one softmax over query_to_doc plus any of query_to_query, doc_to_query,
    doc_to_doc; per_direction: query_to_doc + doc_to_query averaged = ``symmetric``).
    ``hardness_mode`` with ``hardness_strength`` > 0 raises Unsupported: its penalty
    α·stop_grad(s) is added to some negatives of a row and not to others (its own positive and
    hard negatives), a per-(anchor, candidate) choice that negsamp's shared candidate set
    cannot express without forming the logits; negsamp's ``beta`` (Robinson et al.'s
    reweighting) is the supported hardness weighting."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=None,
                 gather_across_devices: bool = False, directions=("query_to_doc",),
                 partition_mode: str = "joint", hardness_mode=None,
                 hardness_strength: float = 0.0, **negsamp_options):
        _check_hardness(type(self).__name__, hardness_mode, hardness_strength)
        super().__init__(model, scale, similarity_fct, gather_across_devices,
                         directions=directions, partition_mode=partition_mode, **negsamp_options)
        self.hardness_mode, self.hardness_strength = hardness_mode, float(hardness_strength)

    def get_config_dict(self):
        return {**super().get_config_dict(), "hardness_mode": self.hardness_mode,
                "hardness_strength": self.hardness_strength}


def _check_hardness(fn, hardness_mode, hardness_strength):
    if hardness_mode not in _HARDNESS_MODES:
        raise InvalidArgument(f"{fn}: hardness_mode ({hardness_mode!r}) is not one of "
                              f"{_HARDNESS_MODES}")
    if not hardness_strength >= 0:
        raise InvalidArgument(f"{fn}: hardness_strength ({hardness_strength}) must be ≥ 0")
    if hardness_mode is not None and hardness_strength > 0:
        raise Unsupported(f"{fn}: hardness_mode={hardness_mode!r} with hardness_strength="
                          f"{hardness_strength} is not supported (a penalty on some negatives of "
                          f"a row and not on others needs the logit matrix); use beta=, negsamp's "
                          f"hard-negative reweighting")


class GISTEmbedLoss(NegsampLoss):
    """Drop-in for ``sentence_transformers.losses.GISTEmbedLoss`` (model, guide, temperature,
    margin_strategy, margin, contrast_anchors, contrast_positives, gather_across_devices)
    computed by negsamp; the similarity is cosine, as in GISTEmbed. The anchor–anchor and
    positive–positive blocks always mask the anchor's own row (sentence-transformers leaves it
    to the guide, which masks it unless margin < g⁺ − 1)."""

    def __init__(self, model, guide, temperature: float = 0.01,
                 margin_strategy: str = "absolute", margin: float = 0.0,
                 contrast_anchors: bool = True, contrast_positives: bool = True,
                 gather_across_devices: bool = False, **negsamp_options):
        super().__init__(model, temperature=temperature,
                         gather_across_devices=gather_across_devices, guide=guide,
                         margin_strategy=margin_strategy, margin=margin,
                         contrast_anchors=contrast_anchors,
                         contrast_positives=contrast_positives, **negsamp_options)


def _cached_mixin():
    try:
        from sentence_transformers.base.losses.gradcache import CachedLossMixin
        return CachedLossMixin
    except ImportError:  # pragma: no cover
        return object


class CachedMultipleNegativesRankingLoss(_cached_mixin(), MultipleNegativesRankingLoss):
    """Drop-in for ``sentence_transformers.losses.CachedMultipleNegativesRankingLoss``: GradCache
    (sentence-transformers' CachedLossMixin: embed in mini-batches without gradient, the loss
    and its gradient w.r.t. the embeddings, then re-embed each mini-batch with gradient), the
    loss computed by negsamp over the whole batch at once (it never forms the logits, so there
    is no need to chunk it). Same arguments as MultipleNegativesRankingLoss plus
    ``mini_batch_size``, ``mini_batch_num_tokens``, ``show_progress_bar``."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=None,
                 mini_batch_size: int = 32, mini_batch_num_tokens: int | None = None,
                 gather_across_devices: bool = False, directions=("query_to_doc",),
                 partition_mode: str = "joint", show_progress_bar: bool = False,
                 hardness_mode=None, hardness_strength: float = 0.0, **negsamp_options):
        try:
            from sentence_transformers.base.losses.gradcache import has_static_embedding_input
        except ImportError:  # pragma: no cover
            has_static_embedding_input = None
        if has_static_embedding_input is not None and has_static_embedding_input(model):
            raise Unsupported(f"{type(self).__name__}: a StaticEmbedding model's inputs cannot "
                              f"be split into mini-batches (use MultipleNegativesRankingLoss; "
                              f"negsamp's loss needs no mini-batches for its own memory)")
        super().__init__(model, scale, similarity_fct, gather_across_devices, directions,
                         partition_mode, hardness_mode, hardness_strength, **negsamp_options)
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar
        self._ids = None

    def forward(self, sentence_features, labels=None):
        features = list(sentence_features)
        if len(features) < 2:
            raise InvalidArgument(f"{type(self).__name__}: expected (anchor, positive, "
                                  f"negative...) columns; got {len(features)}")
        self._ids = [_row_ids(f) for f in features] if self.mask_same_id else None
        return self.forward_cached(features, labels)

    def calculate_loss(self, reps, labels=None, *, with_backward: bool = False):
        embeddings = [_torch.cat(r) for r in reps]
        loss = self.compute_loss_from_embeddings(embeddings, labels, ids=self._ids)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def get_config_dict(self):
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}


def __getattr__(name):
    # the trainer's batch sampler subclasses sentence-transformers' own: imported when asked for
    if name in ("ClusterBatchSampler", "cluster_batch_sampler"):
        from . import _st_sampler
        return getattr(_st_sampler, name)
    raise AttributeError(f"module 'negsamp.sentence_transformers' has no attribute {name!r}")
