#!/usr/bin/env python3
"""Cluster study (issue 15, item 6): cluster-aware batches vs random batches vs mined hard
negatives vs random + hard mixes, on the digits data and on WordNet, and the cost of k-means and
of the batch planner beside faiss.Kmeans.

    python3 bench/cluster_study.py [--seeds 3] [--epochs 4] [--lemmas 1000] [--out bench/results]
    python3 bench/cluster_study.py --quick      # the test's size: about 20 s

Tasks (the same small encoders as the quality studies, trained with negsamp's loss):
  digits   UCI digits (shared/data/digits, 1,797 8x8 images): z = normalise(W x), W dim x 64,
           Adam. A query is a training image, its positive another training image of its class
           (drawn afresh each step); the documents are the training images. Held-out 30 %
           (stratified, one split for all seeds) retrieve training images: R@1, R@10 (a
           same-class image in the first 1 / 10), MRR (1 / rank of the first same-class one).
           False negative: a negative of the query's class (the labels are ground truth).
  wordnet  bench/wordnet_study.py's reverse dictionary (a noun synset's definition retrieves
           its lemma document; hashed TF-IDF -> E encoder, sparse Adagrad); R@1, R@10, MRR of
           the one relevant document; false negative: shares a lemma or is a direct hyper/hyponym.
Strategies (every one: batch B, InfoNCE at tau, in-batch negatives; the extras per query by
negsamp.Step: h_hard by SimANS after the TopK-PercPos filter among C mined candidates, h_rand
uniform among R negsamp.sample_corpus rows appended as the step's random pool):
  random        random batches, in-batch negatives only
  tasb          TAS-B: each batch from one k-means cluster (negsamp.plan_batches)
  ngame         NGAME: each batch from a cluster and its 3 nearest clusters (4 groups a batch)
  random+mask, tasb+mask, ngame+mask   the same with the loss's same-cluster false-negative
                mask (ClusterNS: another query's positive in the anchor's cluster is masked);
                only when the loss takes group ids (branch `loss`, through negsamp.torch_ops)
  hard8         random batches + 8 mined hard negatives
  rand8         random batches + 8 random negatives
  hard4+rand4   random batches + 4 hard + 4 random negatives
Clusters: spherical k-means (negsamp.kmeans, balanced, k = n_train / (4 B), --cluster-batches)
of the training queries' embeddings under the current encoder, recomputed every epoch (as are
the mined candidates). Every number is mean +- std over seeds (seeds vary the initial weights,
the batch order, the clustering and the sampling).
Cost: negsamp.kmeans and negsamp.plan_batches beside faiss.Kmeans on the same embeddings, same
k, same iterations, random init, interleaved, median of 3; inertia (sum of 1 - cos to the
nearest returned centroid, float64) of each.

Writes bench/results/<machine>-<date>-cluster.{json,md,png}.
"""
import argparse
import datetime
import gzip
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # many small calls (wordnet_study.py)
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_spec = importlib.util.spec_from_file_location("wordnet_study",
                                               os.path.join(HERE, "wordnet_study.py"))
ws = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ws)

# name: (batches, h_hard, h_rand, cluster mask in the loss)
ALL_STRATEGIES = {
    "random": ("random", 0, 0, False),
    "tasb": ("tasb", 0, 0, False),
    "ngame": ("ngame", 0, 0, False),
    "random+mask": ("random", 0, 0, True),
    "tasb+mask": ("tasb", 0, 0, True),
    "ngame+mask": ("ngame", 0, 0, True),
    "hard8": ("random", 8, 0, False),
    "rand8": ("random", 0, 8, False),
    "hard4+rand4": ("random", 4, 4, False),
}
NGAME_GROUPS = 4


def loss_has_groups(ns):
    """The loss's same-group mask exists (branch `loss`: ns_loss_groups, reached from Python
    through negsamp.torch_ops.infonce_loss(query_group=, passage_group=))."""
    from negsamp import _ffi
    if not hasattr(_ffi, "ns_loss_groups"):
        return False
    try:
        import inspect
        from negsamp import torch_ops
    except ImportError:  # no torch
        return False
    return "query_group" in inspect.signature(torch_ops.infonce_loss).parameters


def masked_infonce_grads(zq, zp, pos, groups, tau):
    """dL/dzq, dL/dzp of in-batch InfoNCE with the same-group mask (group_weight 0): another
    row's positive in the anchor's group is no negative (rows carry their anchor's group)."""
    import torch
    from negsamp import torch_ops
    q = torch.from_numpy(np.ascontiguousarray(zq)).requires_grad_(True)
    p = torch.from_numpy(np.ascontiguousarray(zp)).requires_grad_(True)
    g = torch.from_numpy(np.ascontiguousarray(groups, np.int64))
    loss = torch_ops.infonce_loss(q, p, passage_id=torch.from_numpy(pos), temperature=tau,
                                  query_group=g, passage_group=g, group_weight=0.0)
    loss.backward()
    return q.grad.numpy(), p.grad.numpy()


# ------------------------------------------------------------------ the two tasks


class DigitsTask:
    name = "digits"

    def __init__(self, path, test_share=0.3, limit=None):
        with gzip.open(path, "rt") as fh:
            a = np.loadtxt(fh, delimiter=",", dtype=np.float32)
        if limit:
            a = a[:limit]
        x, y = a[:, :-1] / 16.0, a[:, -1].astype(np.int64)
        x -= x.mean(0)
        rng = np.random.default_rng(1000)  # one stratified split for every seed
        test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[
            :int(round(test_share * np.sum(y == c)))] for c in range(10)])
        mask = np.zeros(len(y), bool)
        mask[test] = True
        self.x_train, self.y_train = x[~mask], y[~mask]
        self.x_test, self.y_test = x[mask], y[mask]
        self.n_docs = len(self.y_train)
        self.train_rows = np.arange(self.n_docs)  # queries are the training images
        self.by_class = [np.flatnonzero(self.y_train == c) for c in range(10)]

    def info(self):
        return {"train": int(self.n_docs), "test": int(len(self.y_test)), "dim_in": 64}

    def model(self, cf, seed):
        return LinearModel(self.x_train, cf.dim, seed, cf.lr)

    def positives(self, batch, rng):
        out = np.empty(len(batch), np.int64)
        for i, q in enumerate(batch):
            same = self.by_class[self.y_train[q]]
            j = same[rng.integers(0, len(same) - 1)]
            out[i] = j if j != q else same[-1]  # never the anchor itself
        return out

    def exclude(self, batch, pos):
        return [[int(q), int(p)] for q, p in zip(batch, pos)]

    def false_negative(self, batch, neg):
        """neg: B x m document rows (-1 = none) -> bool mask (same label as the query)."""
        return (neg >= 0) & (self.y_train[np.maximum(neg, 0)] == self.y_train[batch][:, None])

    def evaluate(self, ns, model):
        zq, zd = model.embed_x(self.x_test), model.embed_x(self.x_train)
        sc = ns.similarity(zq, zd)
        order = np.argsort(-sc, axis=1, kind="stable")
        hit = self.y_train[order] == self.y_test[:, None]
        first = np.argmax(hit, axis=1) + 1
        return {"R@1": float(np.mean(hit[:, 0])), "R@10": float(np.mean(hit[:, :10].any(1))),
                "MRR": float(np.mean(1.0 / first))}


class LinearModel:
    """z = normalise(W x); Adam on W (the digits model of bench/quality_digits.c)."""

    def __init__(self, x, dim, seed, lr):
        rng = np.random.default_rng(seed)
        self.x = x
        self.W = (rng.standard_normal((dim, x.shape[1])) / np.sqrt(x.shape[1])).astype(np.float32)
        self.m = np.zeros_like(self.W)
        self.v = np.zeros_like(self.W)
        self.t, self.lr = 0, lr

    def embed_x(self, x):
        u = x @ self.W.T
        return u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)

    def embed_q(self, rows):
        return self._embed(rows)

    embed_d = embed_q

    def _embed(self, rows):
        x = self.x[np.asarray(rows)]
        u = x @ self.W.T
        nrm = np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
        z = (u / nrm).astype(np.float32)
        return z, (x, z, nrm)

    def all_q(self, rows):
        return self.embed_x(self.x[rows]).astype(np.float32)

    def all_d(self):
        return self.embed_x(self.x).astype(np.float32)

    @staticmethod
    def grad(cache, dz):
        x, z, nrm = cache
        du = (dz - z * np.sum(z * dz, axis=1, keepdims=True)) / nrm
        return du.T @ x

    def step(self, parts):
        g = sum(parts)
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        mh, vh = self.m / (1 - 0.9 ** self.t), self.v / (1 - 0.999 ** self.t)
        self.W -= self.lr * mh / (np.sqrt(vh) + 1e-8)


class WordNetTask:
    name = "wordnet"

    def __init__(self, wndir, lemmas):
        syn, index = ws.read_nouns(wndir)
        offsets = ws.choose_subset(syn, index, lemmas)
        queries, docs, self.rel = ws.build_task(syn, offsets)
        n = self.n_docs = len(offsets)
        qc, dc = ws.featurise(queries), ws.featurise(docs)
        dfc = np.bincount(np.concatenate([qc[1], dc[1]]), minlength=ws.NBUCKETS)
        idf = np.log((2 * n + 1) / (dfc + 1)).astype(np.float32) + 1
        self.qf, self.df = ws.tfidf(qc, idf), ws.tfidf(dc, idf)
        perm = np.random.default_rng(1000).permutation(n)  # the study's split
        self.train_rows, self.test_rows = np.sort(perm[n // 5:]), np.sort(perm[:n // 5])

    def info(self):
        return {"synsets": int(self.n_docs), "train": int(len(self.train_rows)),
                "test": int(len(self.test_rows))}

    def model(self, cf, seed):
        return SparseModel(self, cf.dim, seed, cf.lr)

    def positives(self, batch, rng):
        return np.asarray(batch, np.int64)  # the synset's own lemma document

    def exclude(self, batch, pos):
        return [[int(p)] for p in pos]

    def false_negative(self, batch, neg):
        return self.rel.false_negative(batch[:, None], neg)[1]

    def evaluate(self, ns, model):
        m = ws.evaluate(ns, model.enc.embed_all(self.qf, self.test_rows),
                        model.enc.embed_all(self.df), None, self.test_rows, self.rel)
        return {k: m[k] for k in ("R@1", "R@10", "MRR")}


class SparseModel:
    """wordnet_study's encoder behind the interface LinearModel offers."""

    def __init__(self, task, dim, seed, lr):
        self.task, self.enc = task, ws.Encoder(dim, seed, lr)

    def embed_q(self, rows):
        return self.enc.embed(self.task.qf, np.asarray(rows))

    def embed_d(self, rows):
        return self.enc.embed(self.task.df, np.asarray(rows))

    def all_q(self, rows):
        return self.enc.embed_all(self.task.qf, rows)

    def all_d(self):
        return self.enc.embed_all(self.task.df)

    grad = staticmethod(ws.Encoder.grad_rows)

    def step(self, parts):
        self.enc.step(parts)


# ------------------------------------------------------------------ batches


def cluster_queries(ns, z, batch, seed, epoch, cluster_batches=4):
    """Spherical balanced k-means of the training queries' embeddings into clusters of about
    cluster_batches batches: labels, centroids."""
    k = max(2, len(z) // (cluster_batches * batch))
    km = ns.kmeans(z, k, spherical=True, balanced=0.25, seed=seed * 1000 + epoch, iterations=10)
    return km.labels, km.centroids


def nearest_groups(centroids, m):
    """Each centroid's m most similar other centroids, nearest first (NGAME's neighbours)."""
    s = centroids @ centroids.T
    np.fill_diagonal(s, -np.inf)
    return [list(map(int, r)) for r in np.argsort(-s, axis=1, kind="stable")[:, :m]]


def make_batches(ns, kind, n, labels, neighbors, batch, rng, seed, epoch):
    """Batches of positions into the n training queries: 'random', 'tasb' or 'ngame' (from
    the cluster labels, full batches only)."""
    if kind == "random":
        order = rng.permutation(n)
        return [order[b:b + batch] for b in range(0, n - batch + 1, batch)]
    kw = dict(drop_last=True, seed=seed, epoch=epoch)
    if kind == "ngame":
        kw.update(neighbors=neighbors, groups_per_batch=NGAME_GROUPS)
    plan = ns.plan_batches(labels, batch, **kw)
    return [plan.order[plan.offsets[b]:plan.offsets[b + 1]] for b in range(len(plan.offsets) - 1)]


def purity(batches, labels):
    """Mean share of a batch's queries in its most common group, and mean groups per batch."""
    share = [np.bincount(labels[b]).max() / len(b) for b in batches]
    groups = [len(np.unique(labels[b])) for b in batches]
    return float(np.mean(share)), float(np.mean(groups))


# ------------------------------------------------------------------ one training run


def mine_candidates(ns, task, model, cf):
    """Top-C documents per training query under the current model (its positive excluded
    later by the step's filter; the anchor's own row here for digits)."""
    zq = model.all_q(task.train_rows)
    zd = model.all_d()
    excl = ([[int(r)] for r in task.train_rows] if task.name == "digits" else None)
    idx, _ = ns.mine_topk(zq, zd, cf.cand, scale=1 / cf.tau, exclude=excl)
    return idx


def train_run(ns, cf, task, strat, seed, prog=None):
    kind, h_hard, h_rand, mask = ALL_STRATEGIES[strat]
    t0 = time.time()
    rng = np.random.default_rng(seed * 7919 + 1)
    model = task.model(cf, seed)
    tr = task.train_rows
    R = cf.pool if h_rand else 0
    C = cf.cand if h_hard else 0
    stepper = None
    if h_hard or h_rand:
        stepper = ns.Step(h_hard, filter={"rel_margin": cf.rel_margin},
                          sampler={"strategy": "simans", "simans_a": cf.simans_a,
                                   "simans_b": cf.simans_b, "temperature": cf.tau, "seed": seed},
                          loss={"temperature": cf.tau}, random_negatives=h_rand,
                          random_pool=R)
    n_neg = n_fn = step = n_masked = n_fn_masked = 0
    n_in = n_fn_in = n_x = n_fn_x = 0  # in-batch and extra negatives apart
    pur, ngroups, label_pur = [], [], []
    for ep in range(cf.epochs):
        labels = neighbors = cand = None
        if kind != "random" or mask:
            labels, cents = cluster_queries(ns, model.all_q(tr), cf.batch, seed, ep,
                                            cf.cluster_batches)
            neighbors = nearest_groups(cents, NGAME_GROUPS - 1) if kind == "ngame" else None
        if h_hard:
            cand = mine_candidates(ns, task, model, cf)  # rows of tr's positions
        batches = make_batches(ns, kind, len(tr), labels, neighbors, cf.batch, rng, seed, ep)
        if labels is not None:
            p, g = purity(batches, labels)
            pur.append(p)
            ngroups.append(g)
        if task.name == "digits":
            label_pur.append(purity(batches, task.y_train[tr])[0])
        for bpos in batches:
            batch = tr[bpos]
            pos = task.positives(batch, rng)
            zq, cq = model.embed_q(batch)
            zp, cp = model.embed_d(pos)
            # in-batch negatives: the other queries' positives (a same-id one is masked)
            others = np.broadcast_to(pos[None, :], (len(batch), len(batch))).copy()
            others[(others == pos[:, None])] = -1
            fn_in = task.false_negative(batch, others)
            n_neg += int(np.sum(others >= 0))
            n_fn += int(np.sum(fn_in))
            n_in, n_fn_in = n_in + int(np.sum(others >= 0)), n_fn_in + int(np.sum(fn_in))
            parts = []
            if mask:
                same = labels[bpos][:, None] == labels[bpos][None, :]
                n_masked += int(np.sum(same & (others >= 0)))
                n_fn_masked += int(np.sum(same & fn_in))
                n_neg -= int(np.sum(same & (others >= 0)))  # fn_share: of the negatives used
                n_fn -= int(np.sum(same & fn_in))
                gq, gp = masked_infonce_grads(zq, zp, pos, labels[bpos], cf.tau)
                gc = cc = None
            elif stepper is None:
                kw = dict(temperature=cf.tau, passage_id=pos)
                fw = ns.infonce_forward(zq, zp, **kw)
                gr = ns.infonce_backward(zq, zp, fw.saved, want=("query", "passage"), **kw)
                gq, gp, gc, cc = gr.query, gr.passage, None, None
            else:
                ids = []
                if C:
                    ids.append(cand[bpos])
                if R:
                    ids.append(ns.sample_corpus(None, len(batch), R, rows=task.n_docs,
                                                exclude=task.exclude(batch, pos), seed=seed,
                                                step=step).index)
                ids = np.concatenate(ids, axis=1)
                zc, cc = model.embed_d(np.maximum(ids, 0).reshape(-1))
                res = stepper.forward(zq, zp, zc.reshape(len(batch), C + R, -1),
                                      candidate_id=ids.reshape(-1), positive_id=pos, step=step)
                gr = stepper.backward(want=("query", "positive", "candidate"))
                gq, gp, gc = gr.query, gr.positive, gr.candidate.reshape(-1, zq.shape[1])
                neg = res.negative_id
                fn_x = task.false_negative(batch, neg)
                n_neg += int(np.sum(neg >= 0))
                n_fn += int(np.sum(fn_x))
                n_x, n_fn_x = n_x + int(np.sum(neg >= 0)), n_fn_x + int(np.sum(fn_x))
            parts.append(model.grad(cq, gq))
            parts.append(model.grad(cp, gp))
            if gc is not None:
                parts.append(model.grad(cc, gc))
            model.step(parts)
            step += 1
        if prog:
            prog.tick(f"{task.name} {strat} s{seed} ep{ep + 1}")
    m = task.evaluate(ns, model)
    m["fn_share"] = n_fn / max(n_neg, 1)
    m["fn_inbatch"] = n_fn_in / max(n_in, 1)  # before any mask
    m["fn_extra"] = n_fn_x / n_x if n_x else None
    # with the mask: the negatives it removed, and how many of them were false negatives
    m["masked_share"] = n_masked / max(n_neg + n_masked, 1) if mask else None
    m["fn_masked_share"] = n_fn_masked / max(n_masked, 1) if mask else None
    m["purity"] = float(np.mean(pur)) if pur else None
    m["groups_per_batch"] = float(np.mean(ngroups)) if ngroups else None
    if label_pur:
        m["label_purity"] = float(np.mean(label_pur))
    m["seconds"] = time.time() - t0
    return m


def summarise(runs):
    table = {}
    for strat, rs in runs.items():
        row = {}
        for k in rs[0]:
            if rs[0][k] is None:
                continue
            v = [r[k] for r in rs]
            row[k] = (float(np.mean(v)), float(np.std(v)))
        if "random" in runs and strat != "random":  # paired by seed
            d = [r["MRR"] - b["MRR"] for r, b in zip(rs, runs["random"])]
            row["dMRR"] = (float(np.mean(d)), float(np.std(d)))
        table[strat] = row
    return table


# ------------------------------------------------------------------ cost


def inertia_cos(x, centroids):
    """sum over rows of 1 - max cos to the centroids, float64 (the spherical objective)."""
    x = x.astype(np.float64)
    c = centroids.astype(np.float64)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-300)
    return float(np.sum(1.0 - np.max(x @ c.T, axis=1)))


def cost(ns, x, k, iterations, batch, reps=3):
    """negsamp.kmeans (random init, as faiss), its balanced variant, the planner (TAS-B and
    NGAME) and faiss.Kmeans, interleaved, median of reps."""
    try:
        import faiss
    except ImportError:  # the negsamp side still runs
        faiss = None
    x = np.ascontiguousarray(x, np.float32)
    n, d = x.shape
    t = {"negsamp.kmeans": [], "negsamp.kmeans balanced": [], "faiss.Kmeans": [],
         "plan_batches tasb": [], "plan_batches ngame": []}
    inert = {}
    for rep in range(reps):
        t0 = time.perf_counter()
        km = ns.kmeans(x, k, spherical=True, init="random", seed=rep, iterations=iterations,
                       tolerance=0.0)
        t["negsamp.kmeans"].append(time.perf_counter() - t0)
        inert.setdefault("negsamp.kmeans", []).append(inertia_cos(x, km.centroids))
        t0 = time.perf_counter()
        kb = ns.kmeans(x, k, spherical=True, init="random", seed=rep, iterations=iterations,
                       tolerance=0.0, balanced=0.25)
        t["negsamp.kmeans balanced"].append(time.perf_counter() - t0)
        inert.setdefault("negsamp.kmeans balanced", []).append(inertia_cos(x, kb.centroids))
        if faiss is None:
            t.pop("faiss.Kmeans", None)
        else:
            t0 = time.perf_counter()
            fk = faiss.Kmeans(d, k, niter=iterations, spherical=True, seed=rep + 1, verbose=False,
                              min_points_per_centroid=1, max_points_per_centroid=n)
            fk.train(x)
            t["faiss.Kmeans"].append(time.perf_counter() - t0)
            inert.setdefault("faiss.Kmeans", []).append(inertia_cos(x, fk.centroids))
        t0 = time.perf_counter()
        ns.plan_batches(km.labels, batch, seed=rep)
        t["plan_batches tasb"].append(time.perf_counter() - t0)
        nb = nearest_groups(km.centroids, NGAME_GROUPS - 1)
        t0 = time.perf_counter()
        ns.plan_batches(km.labels, batch, neighbors=nb, groups_per_batch=NGAME_GROUPS, seed=rep)
        t["plan_batches ngame"].append(time.perf_counter() - t0)
    out = {"n": n, "d": d, "k": k, "iterations": iterations, "batch": batch, "reps": reps,
           "seconds": {a: float(np.median(v)) for a, v in t.items()},
           "inertia": {a: float(np.median(v)) for a, v in inert.items()}}
    if faiss is None:
        out["faiss"] = "not installed (pip install faiss-cpu): no faiss column"
    else:
        out["ratio_faiss_over_negsamp"] = (out["seconds"]["faiss.Kmeans"] /
                                           out["seconds"]["negsamp.kmeans"])
    return out


# ------------------------------------------------------------------ report


def fmt(m, k, pct=False):
    if k not in m:
        return "—"
    mu, sd = m[k]
    return f"{100 * mu:.1f} ± {100 * sd:.1f} %" if pct else f"{mu:.3f} ± {sd:.3f}"


def masked(m):
    if "masked_share" not in m:
        return "—"
    return f"{100 * m['masked_share'][0]:.1f} % ({100 * m['fn_masked_share'][0]:.1f} % FN)"


def write_report(path, d, plots):
    cf = d["config"]
    L = [f"# Cluster study: cluster-aware batches, hard and random negatives ({d['date']})", "",
         f"Machine: {d['machine']['cpu']}, {d['machine']['threads']} threads, GEMM: "
         f"{d['machine']['gemm']}. Load at the start / end: `{d['uptime'][0]}` / "
         f"`{d['uptime'][1]}` (a 2-core machine shared with other engineers' compiles: the "
         f"timings are noisy). Whole run: {d['seconds']:.0f} s.", "",
         f"Every strategy: batch {cf['batch']}, τ = {cf['tau']}, {cf['epochs']} epochs, "
         f"{cf['seeds']} seeds (mean ± std), extras by negsamp.Step (hard: SimANS a = "
         f"{cf['simans_a']} after TopK-PercPos {cf['rel_margin']} among C = {cf['cand']} mined; "
         f"random: uniform among R = {cf['pool']} negsamp.sample_corpus rows). Clusters: "
         f"spherical balanced negsamp.kmeans of the training queries, k = n / "
         f"({cf['cluster_batches']} B), every epoch; NGAME: a cluster + its "
         f"{NGAME_GROUPS - 1} nearest.", ""]
    if d.get("mask_note"):
        L += [d["mask_note"], ""]
    for tname, t in d["tasks"].items():
        L += [f"## {tname} ({', '.join(f'{k} {v}' for k, v in t['info'].items())})", "",
              "| strategy | R@1 | R@10 | MRR | ΔMRR vs random (paired) | false-negative share "
              "of the negatives used | FN share in-batch / extras | masked (of which false neg.) | "
              "cluster purity of batches | groups / batch | s/run |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s, m in t["summary"].items():
            L.append(f"| {s} | {fmt(m, 'R@1')} | {fmt(m, 'R@10')} | {fmt(m, 'MRR')} | "
                     f"{fmt(m, 'dMRR') if s != 'random' else '—'} | {fmt(m, 'fn_share', True)} | "
                     f"{fmt(m, 'fn_inbatch', True)} / {fmt(m, 'fn_extra', True)} | {masked(m)} | "
                     f"{fmt(m, 'purity')} | {fmt(m, 'groups_per_batch')} | "
                     f"{m['seconds'][0]:.1f} |")
        best = max(t["summary"], key=lambda s: t["summary"][s]["MRR"][0])
        L += ["", f"Best MRR on {tname}: **{best}**.", ""]
    c = d["cost"]
    L += [f"## Cost: k-means and the planner beside faiss.Kmeans ({c['data']})", "",
          f"n = {c['n']}, d = {c['d']}, k = {c['k']}, {c['iterations']} iterations, spherical, "
          f"random init, batch {c['batch']}; median of {c['reps']} interleaved runs; inertia = "
          f"Σ (1 − max cos) in float64 from each one's centroids.", "",
          "| what | seconds | inertia |", "|---|---|---|"]
    for a, s in c["seconds"].items():
        inn = c["inertia"].get(a)
        L.append(f"| {a} | {s:.4f} | {'—' if inn is None else f'{inn:.2f}'} |")
    L += ["", f"faiss.Kmeans / negsamp.kmeans time: {c['ratio_faiss_over_negsamp']:.2f}×."
          if "ratio_faiss_over_negsamp" in c else f"faiss: {c.get('faiss')}.", ""]
    for p in plots:
        L.append(f"![{os.path.basename(p)}]({os.path.basename(p)})")
    L += ["", f"Reproduce: `{d['command']}`", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(L))


def make_plots(stem, d):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("cluster_study: matplotlib not installed; no plots", file=sys.stderr)
        return []
    tasks = list(d["tasks"])
    fig, ax = plt.subplots(1, len(tasks) + 1, figsize=(6 * len(tasks) + 5, 5.6))
    for a, tname in zip(ax, tasks):
        tab = d["tasks"][tname]["summary"]
        names = list(tab)
        x = np.arange(len(names))
        dm = [tab[s]["dMRR"] if "dMRR" in tab[s] else (0.0, 0.0) for s in names]
        a.bar(x - 0.2, [v[0] for v in dm], 0.4, yerr=[v[1] for v in dm], capsize=3,
              color=["C0" if s == "random" else "C2" if v[0] > 0 else "C3"
                     for s, v in zip(names, dm)],
              label="ΔMRR vs random (paired; green up, red down)")
        a.axhline(0, color="k", lw=0.8)
        a.set_xticks(x, names, rotation=30, ha="right")
        a.set_xlabel("batches and negatives (strategy)")
        a.set_ylabel("ΔMRR vs random batches, same seed (held out)")
        base = tab["random"]["MRR"][0] if "random" in tab else float("nan")
        a.set_title(f"{tname}: mean ± std over {d['config']['seeds']} seeds "
                    f"(random: MRR {base:.3f})")
        b = a.twinx()
        b.bar(x + 0.2, [100 * tab[s]["fn_share"][0] for s in names], 0.4, color="C7",
              label="false negatives among the negatives used")
        b.set_ylabel("% false negatives among the negatives used")
        h1, l1 = a.get_legend_handles_labels()
        h2, l2 = b.get_legend_handles_labels()
        b.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=8)
    c = d["cost"]
    names = list(c["seconds"])
    ax[-1].barh(names, [1000 * c["seconds"][a] for a in names])
    ax[-1].set_xscale("log")
    ax[-1].set_xlabel("milliseconds (median of interleaved runs, log scale)")
    ax[-1].set_ylabel("operation")
    ax[-1].set_title(f"cost: n={c['n']}, d={c['d']}, k={c['k']}, {c['iterations']} it.")
    fig.tight_layout()
    p = stem + ".png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return [p]


# ------------------------------------------------------------------ main


def config(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the test's size (about 20 s)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lemmas", type=int, default=1000, help="WordNet subset (wordnet_study)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cluster-batches", type=int, default=4,
                    help="k-means k = training queries / (this x batch)")
    ap.add_argument("--cand", type=int, default=16, help="C mined candidates (hard)")
    ap.add_argument("--pool", type=int, default=8, help="R random pool rows (random)")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=0.01, help="digits Adam; WordNet Adagrad x20")
    ap.add_argument("--rel-margin", type=float, default=0.05)
    ap.add_argument("--simans-a", type=float, default=0.5)
    ap.add_argument("--simans-b", type=float, default=0.0)
    ap.add_argument("--tasks", default="digits,wordnet")
    ap.add_argument("--strategies", default=",".join(ALL_STRATEGIES))
    ap.add_argument("--cost-k", type=int, default=256)
    ap.add_argument("--cost-iterations", type=int, default=10)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "digits",
                                                   "digits.csv.gz"))
    ap.add_argument("--wordnet", help="folder with data.noun and index.noun")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--report-only", metavar="JSON", help="rewrite the report and plot of a run")
    cf = ap.parse_args(argv)
    if cf.quick:
        cf.seeds, cf.epochs, cf.lemmas, cf.cost_k = min(cf.seeds, 2), 1, 150, 16
        cf.cluster_batches = 2  # enough clusters for NGAME's 4 a batch
    for s in cf.strategies.split(","):
        if s not in ALL_STRATEGIES:
            ap.error(f"--strategies: unknown '{s}' (one of {', '.join(ALL_STRATEGIES)})")
    return cf


def load_tasks(cf):
    tasks = {}
    names = [t for t in cf.tasks.split(",") if t]
    if "digits" in names:
        tasks["digits"] = DigitsTask(cf.data, limit=600 if cf.quick else None)
    if "wordnet" in names:
        wndir = next((d for d in ([cf.wordnet] if cf.wordnet else ws.WORDNET_DIRS)
                      if d and os.path.exists(os.path.join(d, "data.noun"))), None)
        if wndir:
            tasks["wordnet"] = WordNetTask(wndir, cf.lemmas)
        else:
            print("cluster_study: WordNet not found (apt-get install wordnet-base, or "
                  "NS_WITH_WORDNET=1 tools/install_deps.sh): digits only", file=sys.stderr)
    return tasks


def uptime():
    try:
        with open("/proc/loadavg") as fh:
            return "load average " + " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def run_study(cf, ns, quiet=False):
    t_all = time.time()
    info = ws.machine_info(ns.library_path())
    has_groups = loss_has_groups(ns)
    strategies = [s for s in cf.strategies.split(",")
                  if has_groups or not ALL_STRATEGIES[s][3]]
    skipped = [s for s in cf.strategies.split(",") if s not in strategies]
    if not quiet:
        print(f"CPU: {info['cpu']}; threads: {info['threads']}; GEMM: {info['gemm']}; "
              f"{uptime()}", file=sys.stderr)
    d = {"date": datetime.date.today().isoformat(), "machine": info, "config": vars(cf),
         "uptime": [uptime()], "tasks": {}, "skipped": skipped,
         "command": "python3 bench/cluster_study.py" + (" --quick" if cf.quick else
                                                         f" --seeds {cf.seeds} --epochs "
                                                         f"{cf.epochs} --lemmas {cf.lemmas}")}
    if skipped:
        d["mask_note"] = (f"Not run: {', '.join(skipped)} — the loss's cluster false-negative "
                          "mask (ns_loss_groups, reached through negsamp.torch_ops; branch "
                          "`loss`, not yet on main) is not in this build.")
    tasks = load_tasks(cf)
    prog = None if quiet else ws.Progress(len(tasks) * len(strategies) * cf.seeds * cf.epochs)
    for tname, task in tasks.items():
        tcf = argparse.Namespace(**vars(cf))
        if tname == "wordnet":
            tcf.lr = cf.lr * 20  # Adagrad on E (wordnet_study's 0.2)
        runs = {s: [train_run(ns, tcf, task, s, seed, prog)
                    for seed in range(cf.seeds)] for s in strategies}
        d["tasks"][tname] = {"info": task.info(), "runs": runs, "summary": summarise(runs)}
    if prog:
        prog.finish()
    # Cost on the largest embeddings at hand: the WordNet queries (else the digits) under an
    # untrained encoder.
    task = tasks.get("wordnet") or tasks["digits"]
    x = task.model(cf, 0).all_q(task.train_rows)
    k = min(cf.cost_k, len(x) // 4)
    d["cost"] = cost(ns, x, k, cf.cost_iterations, cf.batch)
    d["cost"]["data"] = f"{task.name} training queries, untrained encoder"
    d["uptime"].append(uptime())
    d["seconds"] = time.time() - t_all
    return d


def main(argv=None):
    cf = config(argv)
    if cf.report_only:
        with open(cf.report_only) as fh:
            d = json.load(fh)
        stem = cf.report_only[:-len(".json")]
        write_report(stem + ".md", d, make_plots(stem, d))
        print(open(stem + ".md").read())
        return 0
    ns = ws.import_negsamp()
    d = run_study(cf, ns)
    os.makedirs(cf.out, exist_ok=True)
    info = d["machine"]
    stem = os.path.join(cf.out, f"cpu-{info['threads']}core-{ws.slug(info['cpu'])}-"
                        f"{d['date']}-cluster{'-quick' if cf.quick else ''}")
    plots = make_plots(stem, d)
    with open(stem + ".json", "w") as fh:
        json.dump(d, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                  else str(o))
    write_report(stem + ".md", d, plots)
    print(open(stem + ".md").read())
    print(f"wrote {stem}.json, .md{', .png' if plots else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
