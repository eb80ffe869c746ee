#!/usr/bin/env python3
"""WordNet study: what the negative-sampling strategy does on real text no one here wrote.

    python3 bench/wordnet_study.py [--seeds 3] [--lemmas 2500] [--epochs 4] [--out bench/results]

Task (a reverse dictionary): the query is a noun synset's definition (its gloss without the
quoted examples); the relevant document is that synset's lemmas ("dog; domestic dog; Canis
familiaris"). This direction, not the reverse, because lemma lists are short and shared between
synsets (polysemy: "bank" names ten noun synsets), so a mined negative can be a document that
names the very word the definition defines: a false negative that WordNet itself certifies.
A candidate document c is counted a false negative of query synset s when
  - c shares a lemma with s (case-insensitive): it names a right answer, or
  - c is a direct hypernym or hyponym of s (including instance relations): a near-synonym
    a human judge would often accept.
Both shares are reported (lemma only, and lemma or hyper/hyponym).

Subset (the default run: about 8 minutes on a loaded 2-core machine): `--lemmas` noun lemmas
with at least two senses, drawn with a fixed seed from index.noun, all their synsets, plus the
direct hypernyms of those synsets. Polysemous lemmas are chosen on purpose: they are where false
negatives occur. 20 % of the synsets (one seeded split, the same for every seed: seeds vary the
initial E, the batch order and the sampling) are held-out queries; every synset's document
stays in the corpus.

Encoder: the text's word unigrams and character 3/4-grams of each word (with boundary marks),
hashed (CRC32) into 2^17 buckets, sublinear-tf × idf weights, L2-normalised; the embedding is
normalise(Σ w_f E[f]) with E (2^17 × 64), shared by queries and documents. Untrained, E is a
random projection of the TF-IDF vector (its cosine approximates TF-IDF cosine). Trained with
negsamp's InfoNCE (ns_infonce_forward/backward, τ = 0.05) on in-batch negatives plus h hard
negatives per query chosen by the strategy; sparse Adagrad on the touched rows of E.

Strategies (h = 4 extra negatives per query; candidates re-mined every epoch with
ns_mine_topk over the documents, the query's own document excluded):
  inbatch         none
  random          h documents uniformly from the corpus (not the positive)
  topk            the h highest of C = 50 candidates (ns_sample top)
  topk+filter     after ns_filter: TopK-PercPos 95 % (s > s⁺ − 0.05·|s⁺| dropped)
  simans          ns_sample SimANS, a = 0.5, b = 0 in logit units (the SimXNS defaults)
  simans+filter   the same after the filter
  guide           topk after ns_filter's guide rule (GISTEmbed): drop c when the guide's score
                  g(q, c) > g(q, d⁺); guide = the exact TF-IDF cosine of the untrained features
Metrics on held-out queries against the whole corpus: R@1, R@10, MRR (exact rank of the one
relevant document), R@1-word (the top document shares a lemma with the relevant one), and the
false-negative shares of the chosen extra negatives (of the in-batch ones for inbatch).

Writes bench/results/<machine>-<date>-wordnet.{json,md} and PNG plots (matplotlib when present).
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
import zlib

# Many small calls: OpenMP and OpenBLAS threads that spin while idle cost 10-100x on a shared
# machine (measured here: ns_filter on 64x50 candidates 0.6 ms spinning, 0.1 ms passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORDNET_DIRS = ["/usr/share/wordnet", "/usr/share/wordnet-base"]
STRATEGIES = ["inbatch", "random", "topk", "topk+filter", "simans", "simans+filter", "guide"]
HYPER = {"@", "@i"}
HYPO = {"~", "~i"}


# ------------------------------------------------------------------ WordNet


def parse_data_line(line):
    """One line of a WordNet data.<pos> file → (offset, lemmas, pointers, definition).

    pointers: list of (symbol, target offset, target pos). The definition is the gloss up to
    its first quoted example, stripped of the trailing '; '."""
    head, _, gloss = line.partition(" | ")
    f = head.split()
    offset = int(f[0])
    w_cnt = int(f[3], 16)
    lemmas = [f[4 + 2 * i] for i in range(w_cnt)]
    lemmas = [re.sub(r"\(.*\)$", "", w).replace("_", " ") for w in lemmas]  # drop (a), (p)
    p = 4 + 2 * w_cnt
    p_cnt = int(f[p])
    ptrs = [(f[p + 1 + 4 * i], int(f[p + 2 + 4 * i]), f[p + 3 + 4 * i]) for i in range(p_cnt)]
    definition = gloss.split('"')[0].strip().rstrip(";").strip()
    return offset, lemmas, ptrs, definition


def read_nouns(wndir):
    syn = {}
    with open(os.path.join(wndir, "data.noun"), encoding="latin-1") as fh:
        for line in fh:
            if line.startswith(" "):
                continue  # the licence header
            off, lemmas, ptrs, definition = parse_data_line(line.rstrip("\n"))
            syn[off] = (lemmas, [(s, t) for s, t, pos in ptrs if pos == "n"], definition)
    index = []
    with open(os.path.join(wndir, "index.noun"), encoding="latin-1") as fh:
        for line in fh:
            if line.startswith(" "):
                continue
            f = line.split()
            n_syn = int(f[2])
            index.append((f[0], [int(x) for x in f[-n_syn:]]))
    return syn, index


def choose_subset(syn, index, n_lemmas, seed=12345):
    """Synset offsets: all senses of n_lemmas polysemous lemmas (seeded) + their hypernyms."""
    poly = [offs for lemma, offs in index if len(offs) >= 2]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(poly), size=min(n_lemmas, len(poly)), replace=False)
    chosen = set()
    for i in pick:
        chosen.update(poly[i])
    for off in list(chosen):
        chosen.update(t for s, t in syn[off][1] if s in HYPER and t in syn)
    return sorted(chosen)


class Relations:
    """Lemma sets and hyper/hyponym links over the subset's rows, for the false-negative check."""

    def __init__(self, lemma_sets, links):
        self.lemma_sets = [frozenset(x.lower() for x in ls) for ls in lemma_sets]
        self.links = [set(x) for x in links]  # row → rows that are direct hyper/hyponyms

    def shares_lemma(self, a, b):
        return not self.lemma_sets[a].isdisjoint(self.lemma_sets[b])

    def related(self, a, b):
        return b in self.links[a]

    def false_negative(self, pos, cand):
        """(lemma, lemma-or-relation) masks for candidate rows `cand` (any shape) of the
        positive row `pos` (broadcast to cand's shape); -1 entries are padding (False)."""
        pos = np.broadcast_to(np.asarray(pos), np.shape(cand))
        lem = np.zeros(np.shape(cand), bool)
        rel = np.zeros(np.shape(cand), bool)
        for ix in np.ndindex(*np.shape(cand)):
            c, p = int(cand[ix]), int(pos[ix])
            if c < 0 or c == p:
                continue
            lem[ix] = self.shares_lemma(p, c)
            rel[ix] = lem[ix] or self.related(p, c)
        return lem, rel


def build_task(syn, offsets):
    row = {off: i for i, off in enumerate(offsets)}
    lemma_sets, links, queries, docs = [], [], [], []
    for off in offsets:
        lemmas, ptrs, definition = syn[off]
        lemma_sets.append(lemmas)
        links.append({row[t] for s, t in ptrs if (s in HYPER or s in HYPO) and t in row})
        queries.append(definition)
        docs.append("; ".join(lemmas))
    for i, ln in enumerate(links):  # make the links symmetric within the subset
        for j in ln:
            links[j].add(i)
    return queries, docs, Relations(lemma_sets, links)


# ------------------------------------------------------------------ features

NBUCKETS = 1 << 17


def text_features(text):
    words = re.findall(r"[a-z0-9]+", text.lower())
    feats = ["w:" + w for w in words]
    for w in words:
        s = "<" + w + ">"
        for n in (3, 4):
            feats += ["c:" + s[i:i + n] for i in range(max(1, len(s) - n + 1))]
    return feats


def featurise(texts):
    """CSR (indptr, indices, tf counts) over hashed buckets, indices unique per row."""
    indptr, indices, counts = [0], [], []
    for t in texts:
        h = {}
        for f in text_features(t):
            b = zlib.crc32(f.encode()) % NBUCKETS
            h[b] = h.get(b, 0) + 1
        ks = sorted(h)
        indices += ks
        counts += [h[k] for k in ks]
        indptr.append(len(indices))
    return (np.asarray(indptr, np.int64), np.asarray(indices, np.int64),
            np.asarray(counts, np.float32))


def tfidf(csr, idf):
    indptr, idx, cnt = csr
    w = (1 + np.log(cnt)) * idf[idx]
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    nrm = np.sqrt(np.bincount(rows, w * w, minlength=len(indptr) - 1))
    return indptr, idx, (w / np.maximum(nrm[rows], 1e-12)).astype(np.float32)


def rows_of(csr, sel):
    """The sub-CSR of rows `sel` (with repeats)."""
    indptr, idx, w = csr
    sel = np.asarray(sel, np.int64)
    lens = indptr[sel + 1] - indptr[sel]
    starts = np.repeat(indptr[sel], lens)
    new_ptr = np.concatenate([[0], np.cumsum(lens)])
    pos = starts + np.arange(new_ptr[-1]) - np.repeat(new_ptr[:-1], lens)
    return new_ptr, idx[pos], w[pos]


def sparse_pair_dots(a_csr, a_rows, b_csr, b_rows):
    """Exact dot products of a_rows[i] with b_rows[i,j] (hashed TF-IDF): the guide's scores."""
    out = np.zeros(b_rows.shape, np.float32)
    block = 64
    for s in range(0, len(a_rows), block):
        ar = a_rows[s:s + block]
        dense = np.zeros((len(ar), NBUCKETS), np.float32)
        p, ix, w = rows_of(a_csr, ar)
        dense[np.repeat(np.arange(len(ar)), np.diff(p)), ix] = w
        br = b_rows[s:s + block]
        flat = br.reshape(-1)
        bp, bix, bw = rows_of(b_csr, np.maximum(flat, 0))
        owner = np.repeat(np.arange(len(flat)), np.diff(bp))
        qrow = owner // br.shape[1]
        sums = np.bincount(owner, bw * dense[qrow, bix], minlength=len(flat))
        out[s:s + block] = np.where(flat >= 0, sums, 0).reshape(br.shape)
    return out


def tfidf_scores_all(a_csr, a_rows, b_csr):
    """Exact TF-IDF cosines of a_rows against every row of b (Q × N), in query blocks."""
    bp, bix, bw = b_csr
    nb = len(bp) - 1
    out = np.zeros((len(a_rows), nb), np.float32)
    for s in range(0, len(a_rows), 32):
        ar = a_rows[s:s + 32]
        dense = np.zeros((len(ar), NBUCKETS), np.float32)
        p, ix, w = rows_of(a_csr, ar)
        dense[np.repeat(np.arange(len(ar)), np.diff(p)), ix] = w
        prod = dense[:, bix] * bw[None, :]
        out[s:s + 32] = segment_sum(prod.T, bp).T
    return out


# ------------------------------------------------------------------ the encoder


def segment_sum(x, indptr):
    """Row sums of x over the CSR segments [indptr[i], indptr[i+1]) (zero for empty ones)."""
    n = len(indptr) - 1
    out = np.zeros((n, x.shape[1]), x.dtype)
    nonempty = np.diff(indptr) > 0
    if len(x):
        out[nonempty] = np.add.reduceat(x, indptr[:-1][nonempty], axis=0)
    return out


class Encoder:
    def __init__(self, dim, seed, lr):
        rng = np.random.default_rng(seed)
        self.E = (rng.standard_normal((NBUCKETS, dim)) / np.sqrt(dim)).astype(np.float32)
        self.G = np.zeros(NBUCKETS, np.float32)  # Adagrad accumulator per row
        self.lr = lr

    def embed_all(self, csr, rows=None, chunk=1024):
        """z for many rows, in chunks (no cache: not for the backward)."""
        rows = np.arange(len(csr[0]) - 1) if rows is None else np.asarray(rows)
        return np.concatenate([self.embed(csr, rows[s:s + chunk])[0]
                               for s in range(0, len(rows), chunk)])

    def embed(self, csr, rows=None):
        """(z, cache): z = normalise(Σ w_f E[f]) for the rows (all when None)."""
        p, ix, w = csr if rows is None else rows_of(csr, rows)
        n = len(p) - 1
        owner = np.repeat(np.arange(n), np.diff(p))
        u = segment_sum(self.E[ix] * w[:, None], p)
        nrm = np.maximum(np.linalg.norm(u, axis=1), 1e-12).astype(u.dtype)
        z = u / nrm[:, None]
        return z, (owner, ix, w, z, nrm)

    @staticmethod
    def grad_rows(cache, dz):
        owner, ix, w, z, nrm = cache
        du = (dz - z * np.sum(z * dz, axis=1, keepdims=True)) / nrm[:, None]
        return ix, du[owner] * w[:, None]

    def step(self, parts):
        ix = np.concatenate([p[0] for p in parts])
        g = np.concatenate([p[1] for p in parts])
        order = np.argsort(ix, kind="stable")
        ixs = ix[order]
        first = np.concatenate([[True], ixs[1:] != ixs[:-1]])
        uniq = ixs[first]
        starts = np.flatnonzero(first)
        gs = np.add.reduceat(g[order], starts, axis=0)
        self.G[uniq] += np.mean(gs * gs, axis=1)
        self.E[uniq] -= self.lr * gs / np.sqrt(self.G[uniq] + 1e-10)[:, None]


# ------------------------------------------------------------------ metrics


def rank_metrics(scores, pos):
    """scores (Q × N), pos (Q) the relevant column → dict of R@1, R@10, MRR and the ranks
    (1 + the number of strictly higher scores: ties count in the relevant one's favour)."""
    scores = np.asarray(scores)
    s_pos = scores[np.arange(len(pos)), pos]
    ranks = 1 + np.sum(scores > s_pos[:, None], axis=1)
    return {"R@1": float(np.mean(ranks <= 1)), "R@10": float(np.mean(ranks <= 10)),
            "MRR": float(np.mean(1.0 / ranks)), "ranks": ranks}


def evaluate(ns, q_emb, d_emb, scores, test_rows, rel):
    """q_emb: the test queries' embeddings (rows of test_rows); or scores (Q x N) given."""
    out = {"R@1": 0.0, "R@10": 0.0, "MRR": 0.0, "R@1-word": 0.0}
    n = len(test_rows)
    for s in range(0, n, 512):
        rows = test_rows[s:s + 512]
        sc = scores[s:s + 512] if scores is not None else ns.similarity(q_emb[s:s + 512], d_emb)
        m = rank_metrics(sc, rows)
        top = np.argmax(sc, axis=1)
        word = np.array([t == r or rel.shares_lemma(r, t) for r, t in zip(rows, top)])
        for k in ("R@1", "R@10", "MRR"):
            out[k] += m[k] * len(rows) / n
        out["R@1-word"] += float(np.sum(word)) / n
    return out


# ------------------------------------------------------------------ one training run


class Progress:
    """A one-line bar on a terminal; silent otherwise."""

    def __init__(self, total):
        self.total, self.done, self.t0 = total, 0, time.time()
        self.tty = sys.stderr.isatty()

    def tick(self, what):
        self.done += 1
        if self.tty:
            el = time.time() - self.t0
            eta = el / self.done * (self.total - self.done)
            bar = "#" * int(30 * self.done / self.total)
            sys.stderr.write(f"\r[{bar:<30}] {self.done}/{self.total} {what:<28} "
                             f"{el:5.0f}s, ETA {eta:4.0f}s")
            sys.stderr.flush()

    def finish(self):
        if self.tty:
            sys.stderr.write("\n")


def choose_negatives(ns, cf, strat, enc, task, batch, cand, cand_sc, pos_sc, guide, rng, step,
                     seed):
    """h extra negative document rows per query of the batch (−1 = none) under `strat`."""
    B, h = len(batch), cf.hard
    if strat == "random":
        neg = rng.integers(0, task["n"], size=(B, h))
        clash = neg == batch[:, None]
        neg[clash] = (neg[clash] + 1) % task["n"]
        return neg
    ids, sc, ps = cand[batch], cand_sc[batch], pos_sc[batch]
    keep = None
    if strat.endswith("+filter"):
        keep, _ = ns.filter(ids, sc, positive_score=ps, positive_ids=[[int(b)] for b in batch],
                            rel_margin=cf.rel_margin)
    elif strat == "guide":
        g, gp = guide
        keep, _ = ns.filter(ids, sc, positive_score=ps, positive_ids=[[int(b)] for b in batch],
                            guide_score=g[batch], guide_positive_score=gp[batch],
                            guide_margin=0.0)
    kind = "simans" if strat.startswith("simans") else "top"
    out = ns.sample(ids, sc, h, positive_score=ps, keep=keep, strategy=kind,
                    simans_a=cf.simans_a, simans_b=cf.simans_b, seed=seed, step=step,
                    query_offset=0)
    return out.index


def train_run(ns, cf, task, strat, seed, prog):
    t0 = time.time()
    rng = np.random.default_rng(seed * 7919 + 1)
    train_rows, test_rows = task["splits"][seed]
    enc = Encoder(cf.dim, seed, cf.lr)
    qf, df, rel = task["qf"], task["df"], task["rel"]
    fn_lem = fn_rel = n_neg = 0
    step = 0
    guide = None
    for ep in range(cf.epochs):
        cand = cand_sc = pos_sc = None
        if strat not in ("inbatch", "random"):  # re-mine under the current encoder
            zq = enc.embed_all(qf, train_rows)
            zd = enc.embed_all(df)
            idx, sc = ns.mine_topk(zq, zd, cf.cand, scale=1 / cf.tau,
                                   exclude=[[int(r)] for r in train_rows])
            cand = np.full((task["n"], cf.cand), -1, np.int64)
            cand_sc = np.zeros((task["n"], cf.cand), np.float32)
            cand[train_rows], cand_sc[train_rows] = idx, sc
            pos_sc = np.zeros(task["n"], np.float32)
            pos_sc[train_rows] = np.sum(zq * zd[train_rows], axis=1) / cf.tau
            if strat == "guide":
                g = np.zeros((task["n"], cf.cand), np.float32)
                g[train_rows] = sparse_pair_dots(task["qg"], train_rows, task["dg"], idx)
                gp = np.zeros(task["n"], np.float32)
                gp[train_rows] = sparse_pair_dots(task["qg"], train_rows, task["dg"],
                                                  train_rows[:, None])[:, 0]
                guide = (g, gp)
        order = rng.permutation(train_rows)
        for b0 in range(0, len(order) - cf.batch + 1, cf.batch):
            batch = order[b0:b0 + cf.batch]
            neg = None
            if strat != "inbatch":
                neg = choose_negatives(ns, cf, strat, enc, task, batch, cand, cand_sc, pos_sc,
                                       guide, rng, step, seed)
                lem, rl = rel.false_negative(batch[:, None], neg)
            else:  # the in-batch negatives' share, for reference
                others = np.broadcast_to(batch[None, :], (len(batch), len(batch)))
                lem, rl = rel.false_negative(batch[:, None], others)
                neg_ok = others != batch[:, None]
            n_neg += int(np.sum(neg >= 0)) if neg is not None else int(np.sum(neg_ok))
            fn_lem += int(lem.sum())
            fn_rel += int(rl.sum())
            zq, cq = enc.embed(qf, batch)
            zp, cp = enc.embed(df, batch)
            kw = dict(temperature=cf.tau, passage_id=batch.astype(np.int64))
            parts = []
            if neg is not None:
                safe = np.maximum(neg, 0)
                zh, ch = enc.embed(df, safe.reshape(-1))
                kw.update(hard=zh.reshape(len(batch), cf.hard, cf.dim), hard_keep=neg >= 0,
                          hard_id=neg.astype(np.int64))
            fw = ns.infonce_forward(zq, zp, **kw)
            gr = ns.infonce_backward(zq, zp, fw.saved, want=("query", "passage", "hard"), **kw)
            parts.append(enc.grad_rows(cq, gr.query))
            parts.append(enc.grad_rows(cp, gr.passage))
            if neg is not None:
                parts.append(enc.grad_rows(ch, gr.hard.reshape(-1, cf.dim)))
            enc.step(parts)
            step += 1
        prog.tick(f"{strat} s{seed} ep{ep + 1}")
    m = evaluate(ns, enc.embed_all(qf, test_rows), enc.embed_all(df), None, test_rows, rel)
    m["fn_lemma"] = fn_lem / max(n_neg, 1)
    m["fn_related"] = fn_rel / max(n_neg, 1)
    m["seconds"] = time.time() - t0
    return m


# ------------------------------------------------------------------ machine and output


def machine_info(lib):
    cpu = platform.processor() or "unknown cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gemm = "unknown"
    try:
        ldd = subprocess.run(["ldd", lib], capture_output=True, text=True).stdout
        for name in ("openblas", "mkl", "blis", "libblas"):
            if name in ldd:
                gemm = next(l.split()[0] for l in ldd.splitlines() if name in l)
                break
    except OSError:
        pass
    return {"cpu": cpu, "threads": os.cpu_count(), "gemm": gemm, "library": lib,
            "python": platform.python_version(), "numpy": np.__version__}


def slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def summarise(results):
    """mean and std over seeds per strategy; dMRR, dR@10: paired (same seed) differences to
    inbatch, when it ran."""
    keys = ["R@1", "R@10", "MRR", "R@1-word", "fn_lemma", "fn_related", "seconds"]
    table = {}
    for strat, runs in results.items():
        table[strat] = {k: (float(np.mean([r[k] for r in runs])),
                            float(np.std([r[k] for r in runs]))) for k in keys}
        if "inbatch" in results:
            for k in ("MRR", "R@10"):
                d = [r[k] - b[k] for r, b in zip(runs, results["inbatch"])]
                table[strat]["d" + k] = (float(np.mean(d)), float(np.std(d)))
    return table


def write_report(path_md, info, cf, task_info, base, table, plots, took):
    L = [f"# WordNet study: negative sampling on a reverse dictionary ({info['date']})", "",
         f"Machine: {info['cpu']}, {info['threads']} threads, GEMM: {info['gemm']}; "
         f"negsamp {info['library']}. Whole run: {took:.0f} s.", "",
         f"Data: WordNet 3.0 nouns (Debian wordnet-base): {task_info['synsets']} synsets = "
         f"all senses of {cf.lemmas} polysemous lemmas (seeded) + their hypernyms; "
         f"{task_info['test']} held-out definition queries (one split for all seeds) against all "
         f"{task_info['synsets']} lemma documents. {cf.seeds} seeds, mean ± std.", "",
         f"Encoder: hashed word + char 3/4-gram TF-IDF → E (2^17 × {cf.dim}), τ = {cf.tau}, "
         f"batch {cf.batch}, {cf.epochs} epochs, Adagrad lr {cf.lr}, h = {cf.hard} extra "
         f"negatives per query from C = {cf.cand} mined candidates.", "",
         "| model | R@1 | R@10 | MRR | ΔMRR vs inbatch | R@1-word | false neg. (lemma) | "
         "false neg. (lemma or hyper/hypo) | s/run |",
         "|---|---|---|---|---|---|---|---|---|"]
    for name, m in base.items():
        L.append(f"| {name} | {m['R@1']:.3f} | {m['R@10']:.3f} | {m['MRR']:.3f} | — | "
                 f"{m['R@1-word']:.3f} | — | — | — |")

    def f(m, k, pct=False):
        mu, sd = m[k]
        if pct:  # two decimals where the share is below 1 %
            nd = 1 if mu >= 0.01 else 2
            return f"{100 * mu:.{nd}f} ± {100 * sd:.{nd}f} %"
        return f"{mu:.3f} ± {sd:.3f}"

    for strat, m in table.items():
        dm = (f"{m['dMRR'][0]:+.3f} ± {m['dMRR'][1]:.3f}" if "dMRR" in m and strat != "inbatch"
              else "—")
        L.append(f"| {strat} | {f(m, 'R@1')} | {f(m, 'R@10')} | {f(m, 'MRR')} | {dm} | "
                 f"{f(m, 'R@1-word')} | {f(m, 'fn_lemma', True)} | {f(m, 'fn_related', True)} | "
                 f"{m['seconds'][0]:.0f} |")
    L += ["", "False negatives are measured among the chosen extra negatives (for inbatch: among "
          "the in-batch negatives). R@1-word: the top document shares a lemma with the relevant "
          "one (it names a right word). ΔMRR: paired by seed (the same initial E and held-out "
          "queries). "
          f"A query has on average {task_info['false_negative_docs_per_query']:.1f} documents "
          "in the corpus that WordNet marks as false negatives.", ""]
    for p in plots:
        L.append(f"![{os.path.basename(p)}]({os.path.basename(p)})")
    L += ["", f"Reproduce: `python3 bench/wordnet_study.py --seeds {cf.seeds} --lemmas {cf.lemmas} "
          f"--epochs {cf.epochs}`", ""]
    with open(path_md, "w") as fh:
        fh.write("\n".join(L))


def make_plots(stem, table, base):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("wordnet_study: matplotlib not installed; no plots "
              "(pip install -r bench/requirements.txt)", file=sys.stderr)
        return []
    names = list(table)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.8))
    x = np.arange(len(names))
    for i, k in enumerate(["R@1", "MRR", "R@10"]):
        ax[0].bar(x + (i - 1) * 0.27, [table[n][k][0] for n in names], 0.27,
                  yerr=[table[n][k][1] for n in names], label=k, capsize=2)
    tf = base.get("TF-IDF cosine (guide, no training)")
    if tf:
        for k, c in (("R@1", "C0"), ("MRR", "C1"), ("R@10", "C2")):
            ax[0].axhline(tf[k], color=c, ls="--", lw=0.8)
    ax[0].set_xticks(x, names, rotation=30, ha="right")
    ax[0].set_xlabel("negatives used in training (strategy)")
    ax[0].set_ylabel("recall@1, MRR, recall@10 (held-out glosses)")
    ax[0].set_title("held-out retrieval, mean ± std over seeds (dashed: TF-IDF cosine)")
    ax[0].legend(loc="lower right")
    ax[0].set_ylim(0, 1.2 * max(table[n]["R@10"][0] for n in names))
    for i, k in enumerate(["fn_lemma", "fn_related"]):
        ax[1].bar(x + (i - 0.5) * 0.4, [100 * table[n][k][0] for n in names], 0.4,
                  yerr=[100 * table[n][k][1] for n in names], capsize=2,
                  label={"fn_lemma": "shares a lemma",
                         "fn_related": "shares a lemma or hyper/hyponym"}[k])
    ax[1].set_xticks(x, names, rotation=30, ha="right")
    ax[1].set_xlabel("negatives used in training (strategy)")
    ax[1].set_ylabel("% of chosen negatives")
    ax[1].set_title("false negatives among the chosen negatives")
    ax[1].legend()
    fig.tight_layout()
    p = stem + ".png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


# ------------------------------------------------------------------ main


def import_negsamp():
    if not os.environ.get("NEGSAMP_LIBRARY"):
        for b in ("build", "build-cpu", "build-bench"):
            p = os.path.join(ROOT, b, "libnegsamp.so")
            if os.path.exists(p):
                os.environ["NEGSAMP_LIBRARY"] = p
                break
        else:
            sys.exit("wordnet_study: no libnegsamp.so: build first (tools/build.sh) or set "
                     "NEGSAMP_LIBRARY")
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import negsamp
    return negsamp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wordnet", help="folder with data.noun and index.noun")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lemmas", type=int, default=2500)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hard", type=int, default=4)
    ap.add_argument("--cand", type=int, default=50)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--rel-margin", type=float, default=0.05)
    ap.add_argument("--simans-a", type=float, default=0.5)
    ap.add_argument("--simans-b", type=float, default=0.0)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--report-only", metavar="JSON",
                    help="rewrite the report and plots of a result")
    cf = ap.parse_args(argv)
    if cf.report_only:
        with open(cf.report_only) as fh:
            d = json.load(fh)
        stem = cf.report_only[:-len(".json")]
        table = summarise(d["runs"])
        plots = make_plots(stem, table, d["baselines"])
        write_report(stem + ".md", d["machine"], argparse.Namespace(**d["config"]), d["task"],
                     d["baselines"], table, plots, d["seconds"])
        print(open(stem + ".md").read())
        return 0
    wndir = next((d for d in ([cf.wordnet] if cf.wordnet else WORDNET_DIRS)
                  if os.path.exists(os.path.join(d, "data.noun"))), None)
    if not wndir:
        print("wordnet_study: SKIPPED: WordNet data not found (install the Debian package "
              "wordnet-base: apt-get install wordnet-base, or pass --wordnet DIR)",
              file=sys.stderr)
        return 77
    strategies = [s for s in cf.strategies.split(",") if s]
    for s in strategies:
        if s not in STRATEGIES:
            ap.error(f"--strategies: unknown '{s}' (one of {', '.join(STRATEGIES)})")
    ns = import_negsamp()
    t_all = time.time()
    info = machine_info(os.environ["NEGSAMP_LIBRARY"])
    info["date"] = datetime.date.today().isoformat()
    print(f"CPU: {info['cpu']}; threads: {info['threads']}; GEMM: {info['gemm']}",
          file=sys.stderr)
    syn, index = read_nouns(wndir)
    offsets = choose_subset(syn, index, cf.lemmas)
    queries, docs, rel = build_task(syn, offsets)
    n = len(offsets)
    qc, dc = featurise(queries), featurise(docs)
    df_count = np.bincount(np.concatenate([qc[1], dc[1]]), minlength=NBUCKETS)
    idf = np.log((2 * n + 1) / (df_count + 1)).astype(np.float32) + 1
    qf, df = tfidf(qc, idf), tfidf(dc, idf)
    # One held-out split for every seed (seeds vary the initial E, the batch order and the
    # sampling), so the baselines and the strategies are compared on the same queries.
    perm = np.random.default_rng(1000).permutation(n)
    split = (np.sort(perm[n // 5:]), np.sort(perm[:n // 5]))
    splits = {seed: split for seed in range(cf.seeds)}
    task = {"n": n, "qf": qf, "df": df, "qg": qf, "dg": df, "rel": rel, "splits": splits}
    by_lemma = {}
    for i, ls in enumerate(rel.lemma_sets):
        for w in ls:
            by_lemma.setdefault(w, set()).add(i)
    fn_docs = [len(set().union(*(by_lemma[w] for w in rel.lemma_sets[i])) | rel.links[i]) - 1
               for i in range(n)]
    task_info = {"synsets": n, "test": n // 5, "lemmas": len(by_lemma),
                 "false_negative_docs_per_query": float(np.mean(fn_docs))}
    print(f"WordNet {wndir}: {len(syn)} noun synsets; subset {n} synsets "
          f"({cf.lemmas} polysemous lemmas + hypernyms), {n // 5} held-out queries",
          file=sys.stderr)
    # Baselines without training: exact TF-IDF cosine (the guide) and the untrained encoder.
    base = {}
    test = split[1]
    for name in ("TF-IDF cosine (guide, no training)", "untrained encoder"):
        if name.startswith("TF-IDF"):
            ms = [evaluate(ns, None, None, tfidf_scores_all(qf, test, df), test, rel)]
        else:
            ms = [evaluate(ns, Encoder(cf.dim, seed, cf.lr).embed_all(qf, test),
                           Encoder(cf.dim, seed, cf.lr).embed_all(df), None, test, rel)
                  for seed in range(cf.seeds)]
        base[name] = {k: float(np.mean([m[k] for m in ms])) for k in ("R@1", "R@10", "MRR",
                                                                      "R@1-word")}
    prog = Progress(len(strategies) * cf.seeds * cf.epochs)
    results = {s: [] for s in strategies}
    for seed in range(cf.seeds):
        for s in strategies:
            results[s].append(train_run(ns, cf, task, s, seed, prog))
    prog.finish()
    table = summarise(results)
    took = time.time() - t_all
    os.makedirs(cf.out, exist_ok=True)
    machine = f"cpu-{info['threads']}core-{slug(info['cpu'])}"
    stem = os.path.join(cf.out, f"{machine}-{info['date']}-wordnet")
    plots = make_plots(stem, table, base)
    with open(stem + ".json", "w") as fh:
        json.dump({"machine": info, "config": vars(cf), "task": task_info, "baselines": base,
                   "summary": table, "runs": results, "seconds": took}, fh, indent=1,
                  default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    write_report(stem + ".md", info, cf, task_info, base, table, plots, took)
    print(open(stem + ".md").read())
    print(f"wrote {stem}.json, .md{', .png' if plots else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
