#!/usr/bin/env python3
"""End-to-end tests of the negsamp command-line program.

Each group runs as its own ctest (cli_<group>, registered in tools/CMakeLists.txt):
    python3 tests/cli/test_cli.py --negsamp BUILD/tools/negsamp --data DIGITS.csv.gz --group mine_generated
Without --group every group runs. Needs only numpy. References are independent: numpy brute-force
top-k in float64, Python's json module, plain file checks.
"""
import argparse
import gzip
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_harness  # noqa: E402
from cli_harness import Failure, check, read_jsonl, run  # noqa: E402,F401

DATA = None


TEMP_TAG = ".negsamp-tmp-"


def leftovers(d):
    """Temporary files negsamp may have left in d (today's names, and the old '.tmp.' ones)."""
    return [f for f in os.listdir(d) if ".tmp." in f or TEMP_TAG in f]


# ---------------------------------------------------------------- references

def ref_topk(q, c, k, exclude=None, cosine=False):
    """Float64 brute force: (index, score), best first, ties to the lower row, -1/-inf tail."""
    q = q.astype(np.float64)
    c = c.astype(np.float64)
    if cosine:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
    full = q @ c.T
    s = full.copy()
    if exclude:
        for i, ids in exclude.items():
            s[i, list(ids)] = -np.inf
    idx = np.empty((q.shape[0], k), np.int64)
    sc = np.empty((q.shape[0], k))
    for i in range(q.shape[0]):
        order = np.lexsort((np.arange(c.shape[0]), -s[i]))[:k]
        idx[i] = order
        sc[i] = s[i, order]
        bad = ~np.isfinite(sc[i])
        idx[i, bad] = -1
    return idx, sc, full


def assert_topk_match(idx, sc, ref_idx, ref_sc, full, what, tol=2e-5):
    check(idx.shape == ref_idx.shape, f"{what}: shape {idx.shape} != reference {ref_idx.shape}")
    check(idx.dtype == np.int64, f"{what}: index dtype {idx.dtype}, expected int64")
    check(sc.dtype == np.float32, f"{what}: score dtype {sc.dtype}, expected float32")
    bad = []
    for i in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            if idx[i, j] == ref_idx[i, j]:
                continue
            # A swap is allowed only between rows whose scores tie within f32 rounding.
            if idx[i, j] >= 0 and abs(full[i, idx[i, j]] - ref_sc[i, j]) < tol:
                continue
            bad.append((i, j, int(idx[i, j]), int(ref_idx[i, j])))
    check(not bad, f"{what}: {len(bad)} index mismatches (query, rank, got, expected), "
                   f"first: {bad[:5]}")
    fin = ref_idx >= 0
    err = np.abs(sc[fin].astype(np.float64) - ref_sc[fin])
    check(err.size == 0 or err.max() < tol * 10,
          f"{what}: score error {err.max() if err.size else 0} too large")


def save_fvecs(path, x):
    x = np.asarray(x, np.float32)
    with open(path, "wb") as f:
        for row in x:
            np.array([x.shape[1]], np.int32).tofile(f)
            row.tofile(f)


def save_npy_v2(path, x):
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(x), version=(2, 0))


def digits():
    with gzip.open(DATA, "rt") as f:
        a = np.loadtxt(f, delimiter=",")
    x = a[:, :-1].astype(np.float32)
    y = a[:, -1].astype(np.int64)
    return x, y


# ---------------------------------------------------------------- groups

def group_help(tmp):
    out, _ = run("--help")
    check("usage" in out, "main --help lacks its usage line")
    commands = ("mine", "sample", "kmeans", "inspect", "demo", "info", "bench-mine")
    listed = set(re.findall(r"^  ([a-z][a-z-]*)\s", out, re.M))
    check(listed >= set(commands), f"main --help does not list {set(commands) - listed}")
    for cmd in commands:
        out, _ = run(cmd, "--help")
        check("usage: negsamp " + cmd in out, f"{cmd} --help lacks its usage line")
        if cmd not in ("info", "inspect"):
            check("Example" in out, f"{cmd} --help lacks examples")
    # mine --help names every text format it reads: gzip and the Parquet wrapper too
    out, _ = run("mine", "--help")
    for key in (".jsonl.gz", ".tsv.gz", "python -m negsamp.parquet mine", "FILE.parquet"):
        check(key in out, f"mine --help does not mention '{key}'")
    out, _ = run("info")
    for key in ("negsamp 0.", "cuda backend built:", "cuda devices:", "backends: cpu",
                "auto resolves to:"):
        check(key in out, f"info lacks '{key}': {out}")
    out, _ = run("bench-mine", "--random", "16,100,8", "-k", 5, "--repeat", 1, "--json")
    r = json.loads(out)
    check(r["queries"] == 16 and r["corpus"] == 100 and r["k"] == 5 and r["best_s"] > 0,
          f"bench-mine JSON: {r}")


def group_usage(tmp):
    rng = np.random.default_rng(1)
    q = os.path.join(tmp, "q.npy")
    np.save(q, rng.standard_normal((5, 4)).astype(np.float32))
    out = os.path.join(tmp, "o.npy")
    cases = [
        [],
        ["frobnicate"],
        ["mine", "--bogus"],
        ["mine", "--corpus", q, "--out-index", out],
        ["mine", "--queries", q, "--corpus", q, "-k", "2", "-m", "3", "--out-index", out],
        ["mine", "--queries", q, "--corpus", q, "--sampler", "best", "--out-index", out],
        ["mine", "--queries", q, "--corpus", q, "--simans-a", "0", "--out-index", out],
        ["mine", "--queries", q, "--corpus", q, "-m", "abc", "--out-index", out],
        ["mine", "--queries", q, "--corpus", q, "--rank-min", "4", "--rank-max", "4",
         "--out-index", out],
        ["mine", "--queries", q, "--corpus", q],
        ["mine", "--queries", q, "--corpus", q, "--sampler", "simans", "--out-index", out],
        ["mine", "--queries", q, "--corpus", q, "--format", "st", "--out", out],
        ["mine", "--queries", q, "--corpus", q, "--paired", "--positives", q, "--out", out],
        ["mine", "--queries", q, "--corpus", q, "--out", out, "--out-index", out],
        ["mine", "--queries"],
        ["sample", "--scores", q, "--out-index", out],
        ["sample", "--candidates", q, "--scores", q, "--sampler", "simans", "--out-index", out],
        ["demo", "--positive", "best"],
        ["info", "extra"],
        ["mine", "--queries", q, "--corpus", q, "--guide-margin", "0.1", "--paired",
         "--out-index", out],
        ["mine", "--queries", q, "--corpus", q, "--guide-queries", q, "--out-index", out],
        ["mine", "--queries", q, "--corpus", q, "--guide-margin", "0.1", "--guide-rel-margin",
         "0.1", "--out-index", out],
        ["bench-mine", "--random", "1,2"],
    ]
    for args in cases:
        _, err = run(*args, expect=2)
        check(err.strip(), f"usage error without a message: {args}")
        check(not os.path.exists(out), f"usage error left an output: {args}")
        check(not leftovers(tmp), f"usage error left temporary files: {args}")


def group_mine_generated(tmp):
    rng = np.random.default_rng(7)
    for (B, N, d, k) in [(37, 211, 13, 20), (1, 5, 1, 5), (64, 300, 32, 1), (9, 50, 7, 50)]:
        qx = rng.standard_normal((B, d)).astype(np.float32)
        cx = rng.standard_normal((N, d)).astype(np.float32)
        qp, cp = os.path.join(tmp, "q.npy"), os.path.join(tmp, "c.npy")
        np.save(qp, qx)
        np.save(cp, cx)
        ip, sp = os.path.join(tmp, "i.npy"), os.path.join(tmp, "s.npy")
        run("mine", "--queries", qp, "--corpus", cp, "-k", k, "-m", k, "--out-index", ip,
            "--out-score", sp, "--force", "--quiet")
        ref_idx, ref_sc, full = ref_topk(qx, cx, k)
        assert_topk_match(np.load(ip), np.load(sp), ref_idx, ref_sc, full,
                          f"top-{k} of B={B} N={N} d={d}")
        # The same through several query blocks, cosine scores and a v2 header.
        save_npy_v2(qp, qx)
        run("mine", "--queries", qp, "--corpus", cp, "-k", k, "-m", k, "--cosine", "--batch", 4,
            "--out-index", ip, "--out-score", sp, "--force", "--quiet")
        ref_idx, ref_sc, full = ref_topk(qx, cx, k, cosine=True)
        assert_topk_match(np.load(ip), np.load(sp), ref_idx, ref_sc, full,
                          f"cosine top-{k}, blocks of 4, v2 header")

    # f16 queries/corpus (compared against the f16 values), .fvecs input.
    B, N, d, k = 23, 120, 16, 10
    qx = rng.standard_normal((B, d)).astype(np.float16)
    cx = rng.standard_normal((N, d)).astype(np.float16)
    qp, cp = os.path.join(tmp, "q16.npy"), os.path.join(tmp, "c16.npy")
    np.save(qp, qx)
    np.save(cp, cx)
    ip, sp = os.path.join(tmp, "i16.npy"), os.path.join(tmp, "s16.npy")
    run("mine", "--queries", qp, "--corpus", cp, "-k", k, "-m", k, "--out-index", ip,
        "--out-score", sp, "--quiet")
    ref_idx, ref_sc, full = ref_topk(qx.astype(np.float32), cx.astype(np.float32), k)
    assert_topk_match(np.load(ip), np.load(sp), ref_idx, ref_sc, full, "f16 inputs", tol=1e-4)
    qf, cf = os.path.join(tmp, "q.fvecs"), os.path.join(tmp, "c.fvecs")
    save_fvecs(qf, qx.astype(np.float32))
    save_fvecs(cf, cx.astype(np.float32))
    ipf = os.path.join(tmp, "if.npy")
    run("mine", "--queries", qf, "--corpus", cf, "-k", k, "-m", k, "--out-index", ipf, "--quiet")
    check(np.array_equal(np.load(ipf), np.load(ip)), ".fvecs input gives other neighbours")

    # Self exclusion (queries = corpus) and positives excluded (same-id rule).
    N, d, k = 80, 8, 12
    x = rng.standard_normal((N, d)).astype(np.float32)
    xp = os.path.join(tmp, "x.npy")
    np.save(xp, x)
    pos = {i: {(i * 7 + 3) % N} for i in range(N) if (i * 7 + 3) % N != i}
    posf = os.path.join(tmp, "pos.txt")
    with open(posf, "w") as f:
        for i in range(N):
            f.write(" ".join(str(p) for p in sorted(pos.get(i, ()))) + "\n")
    ip, sp, pp = (os.path.join(tmp, n) for n in ("ix.npy", "sx.npy", "px.npy"))
    run("mine", "--queries", xp, "--corpus", xp, "--exclude-self", "--positives", posf, "-k", k,
        "-m", k, "--out-index", ip, "--out-score", sp, "--out-positive-score", pp, "--quiet")
    excl = {i: {i} | pos.get(i, set()) for i in range(N)}
    ref_idx, ref_sc, full = ref_topk(x, x, k, exclude=excl)
    idx = np.load(ip)
    assert_topk_match(idx, np.load(sp), ref_idx, ref_sc, full, "self + positives excluded")
    ps = np.load(pp)
    for i in range(N):
        want = min(full[i, p] for p in pos[i]) if i in pos else np.nan
        if i in pos:
            check(abs(ps[i] - want) < 1e-4, f"positive score of query {i}: {ps[i]} != {want}")
        else:
            check(np.isnan(ps[i]) and (idx[i] == -1).all(),
                  f"query {i} has no positive: expected a NaN positive score and -1 row")

    # Filter rules against numpy: every kept negative obeys each rule; rank window.
    s_plus = np.array([min(full[i, p] for p in pos[i]) if i in pos else np.nan for i in range(N)])
    for rule, val, ok in [
        ("--max-score", 0.5, lambda s, i, r: s <= 0.5),
        ("--min-score", -0.5, lambda s, i, r: s >= -0.5),
        ("--margin", 0.1, lambda s, i, r: s <= s_plus[i] - 0.1),
        ("--rel-margin", 0.2, lambda s, i, r: s <= s_plus[i] - abs(s_plus[i]) * 0.2),
        ("--rank-min", 3, lambda s, i, r: r >= 3),
    ]:
        fi, fs = os.path.join(tmp, "fi.npy"), os.path.join(tmp, "fs.npy")
        run("mine", "--queries", xp, "--corpus", xp, "--exclude-self", "--positives", posf,
            "-k", k, "-m", 5, rule, val, "--out-index", fi, "--out-score", fs, "--force",
            "--quiet")
        ii, ss = np.load(fi), np.load(fs)
        for i in range(N):
            if i not in pos:
                continue
            # Expected: the first 5 of the unfiltered top-k that pass the rule, in rank order.
            want = [int(ref_idx[i, r]) for r in range(k)
                    if ref_idx[i, r] >= 0 and ok(ref_sc[i, r], i, r)][:5]
            got = [int(v) for v in ii[i] if v >= 0]
            check(got == want, f"{rule} {val}: query {i} got {got}, expected {want}")
            check(all(np.isnan(ss[i, len(got):])), f"{rule}: padding scores are not NaN")

    # Guide-model rule (GISTEmbed): another embedding of the same rows scores the candidates.
    gx = rng.standard_normal((N, 5)).astype(np.float32)
    gp_ = os.path.join(tmp, "g.npy")
    np.save(gp_, gx)
    g = gx.astype(np.float64) @ gx.astype(np.float64).T
    g_plus = {i: min(g[i, p] for p in pos[i]) for i in pos}
    for flag, val, ok in [("--guide-margin", 0.3, lambda gv, gpl: gv <= gpl - 0.3),
                          ("--guide-rel-margin", 0.5, lambda gv, gpl: gv <= gpl - abs(gpl) * 0.5)]:
        fi = os.path.join(tmp, "gi.npy")
        run("mine", "--queries", xp, "--corpus", xp, "--exclude-self", "--positives", posf,
            "--guide-queries", gp_, "--guide-corpus", gp_, "-k", k, "-m", 5, flag, val,
            "--out-index", fi, "--force", "--quiet")
        ii = np.load(fi)
        for i in pos:
            want = [int(ref_idx[i, r]) for r in range(k) if ok(g[i, ref_idx[i, r]], g_plus[i])][:5]
            got = [int(v) for v in ii[i] if v >= 0]
            check(got == want, f"{flag}: query {i} got {got}, expected {want}")
        # sample with the guide scores precomputed gives the same negatives.
        gs = os.path.join(tmp, "gs.npy")
        gpp = os.path.join(tmp, "gpp.npy")
        np.save(gs, np.where(ref_idx >= 0, g[np.arange(N)[:, None], ref_idx], 0).astype(np.float32))
        np.save(gpp, np.array([g_plus.get(i, np.nan) for i in range(N)], np.float32))
        ci, cs = os.path.join(tmp, "ci.npy"), os.path.join(tmp, "cs.npy")
        np.save(ci, ref_idx)
        np.save(cs, ref_sc.astype(np.float32))
        fo = os.path.join(tmp, "go.npy")
        run("sample", "--candidates", ci, "--scores", cs, "--positives", posf, "--guide-scores",
            gs, "--guide-positive-score", gpp, "-m", 5, flag, val, "--out-index", fo, "--force",
            "--quiet")
        check(np.array_equal(np.load(fo)[list(pos)], ii[list(pos)]),
              f"{flag}: sample with guide scores differs from mine")

    # Samplers: seeded runs repeat, block size does not change the draw, no duplicates.
    for sampler in ("uniform", "simans", "softmax"):
        a1, a2 = os.path.join(tmp, "a1.npy"), os.path.join(tmp, "a2.npy")
        base = ["mine", "--queries", xp, "--corpus", xp, "--exclude-self", "--positives", posf,
                "-k", k, "-m", 6, "--sampler", sampler, "--seed", 11, "--quiet", "--force"]
        run(*base, "--out-index", a1)
        run(*base, "--batch", 7, "--threads", 1, "--out-index", a2)
        r1, r2 = np.load(a1), np.load(a2)
        check(np.array_equal(r1, r2), f"{sampler}: the draw depends on the block size/threads")
        for i in range(N):
            row = [v for v in r1[i] if v >= 0]
            check(len(set(row)) == len(row), f"{sampler}: duplicate negatives for query {i}")
            check(set(row) <= set(ref_idx[i].tolist()), f"{sampler}: negative outside the top-k")
        run(*base[:-4], "--seed", 12, "--quiet", "--force", "--out-index", a2)
        check(not np.array_equal(r1, np.load(a2)), f"{sampler}: seeds 11 and 12 draw the same")


def digits_npy(tmp):
    x, y = digits()
    check(x.shape == (1797, 64), f"digits shape {x.shape}")
    p = os.path.join(tmp, "digits.npy")
    np.save(p, x)
    return p, x, y


def group_mine_digits(tmp):
    p, x, y = digits_npy(tmp)
    k = 10
    ip, sp, jp = (os.path.join(tmp, n) for n in ("di.npy", "ds.npy", "d.jsonl"))
    run("mine", "--queries", p, "--corpus", p, "--exclude-self", "--cosine", "-k", k, "-m", k,
        "--out-index", ip, "--out-score", sp, "--out", jp, "--quiet")
    ref_idx, ref_sc, full = ref_topk(x, x, k, exclude={i: {i} for i in range(len(x))},
                                     cosine=True)
    idx = np.load(ip)
    assert_topk_match(idx, np.load(sp), ref_idx, ref_sc, full, "digits cosine top-10")
    rows = read_jsonl(jp)
    check(len(rows) == len(x), f"{len(rows)} JSONL rows for {len(x)} queries")
    for i, r in enumerate(rows):
        check(set(r) == {"query", "positive", "negatives", "scores"}, f"fields {sorted(r)}")
        check(r["query"] == i and r["positive"] is None, f"row {i}: {r['query']}, {r['positive']}")
        check(r["negatives"] == idx[i].tolist(), f"row {i}: JSONL negatives differ from .npy")
    # Digits with labelled pairs: the positive is image i+1 of the same label (qrels).
    qrels = os.path.join(tmp, "digits.qrels.tsv")
    with open(qrels, "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i in range(len(x)):
            same = np.nonzero(y == y[i])[0]
            j = same[(np.searchsorted(same, i) + 1) % len(same)]
            f.write(f"{i}\t{j}\t1\n")
    out = os.path.join(tmp, "dq.jsonl")
    run("mine", "--queries", p, "--corpus", p, "--exclude-self", "--cosine", "--qrels", qrels,
        "-k", 30, "-m", 5, "--rel-margin", 0.05, "--sampler", "simans", "--simans-a", 20,
        "--seed", 3, "--out", out, "--quiet")
    rows = read_jsonl(out)
    check(len(rows) == len(x), f"{len(rows)} rows with one positive per query")
    for r in rows:
        i = r["query"]
        check(r["positive"] != i and y[r["positive"]] == y[i], f"query {i}: wrong positive")
        check(i not in r["negatives"] and r["positive"] not in r["negatives"],
              f"query {i}: itself or its positive among the negatives")
        sp_ = full[i, r["positive"]]
        for n, s in zip(r["negatives"], r["scores"]):
            check(abs(full[i, n] - s) < 1e-4, f"query {i}: score of {n} is {s}, not {full[i, n]}")
            check(s <= sp_ - abs(sp_) * 0.05 + 1e-6, f"query {i}: {n} ({s}) breaks the margin")


def group_formats(tmp):
    rng = np.random.default_rng(3)
    B, N, d = 6, 40, 5
    qx = rng.standard_normal((B, d)).astype(np.float32)
    cx = rng.standard_normal((N, d)).astype(np.float32)
    qp, cp = os.path.join(tmp, "q.npy"), os.path.join(tmp, "c.npy")
    np.save(qp, qx)
    np.save(cp, cx)
    qids = [f"q-{i}" for i in range(B)]
    cids = [f'doc "{i}"\\x' for i in range(N)]  # quotes and backslashes need escaping
    qf, cf = os.path.join(tmp, "qids.txt"), os.path.join(tmp, "cids.txt")
    with open(qf, "w") as f:
        f.write("\n".join(qids) + "\n")
    with open(cf, "w") as f:
        f.write("\n".join(cids) + "\n")
    positives = {0: [3, 5], 1: [7], 2: [0], 3: [9], 4: [11]}  # query 5 has none
    qrels = os.path.join(tmp, "qrels.tsv")
    with open(qrels, "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, ps in positives.items():
            for p in ps:
                f.write(f"{qids[q]}\t{cids[p]}\t1\n")
        f.write(f"{qids[5]}\t{cids[1]}\t0\n")  # score 0: not a positive
    m = 4
    _, _, full = ref_topk(qx, cx, N)
    common = ["mine", "--queries", qp, "--corpus", cp, "--query-ids", qf, "--corpus-ids", cf,
              "--qrels", qrels, "-k", 12, "-m", m, "--quiet"]
    ip = os.path.join(tmp, "idx.npy")
    outs = {}
    for fmt in ("ids", "st", "tevatron"):
        outs[fmt] = os.path.join(tmp, f"{fmt}.jsonl")
        run(*common, "--format", fmt, "--out", outs[fmt], *(["--out-index", ip] if fmt == "ids"
                                                             else []))
    idx = np.load(ip)
    check((idx[5] == -1).all(), "query without positive is not a -1 row")
    rows = read_jsonl(outs["ids"])
    check(len(rows) == 6, f"ids: {len(rows)} rows, expected one per (query, positive) = 6")
    for r in rows:
        check(list(r) == ["query", "positive", "negatives", "scores"], f"ids fields {list(r)}")
        q = qids.index(r["query"])
        p = cids.index(r["positive"])
        check(p in positives[q], f"ids: {r['positive']} is not a positive of {r['query']}")
        negs = [cids.index(n) for n in r["negatives"]]
        check(negs == idx[q].tolist(), "ids: negatives differ from the index matrix")
        check(not set(negs) & set(positives[q]), "ids: a positive among the negatives")
        check(np.allclose(r["scores"], full[q, negs], atol=1e-5), "ids: scores wrong")
    rows = read_jsonl(outs["st"])
    check(len(rows) == 6, f"st: {len(rows)} rows")
    for r in rows:
        check(list(r) == ["query", "positive"] + [f"negative_{j + 1}" for j in range(m)],
              f"st column order {list(r)}")
        q = qids.index(r["query"])
        check([cids.index(r[f"negative_{j + 1}"]) for j in range(m)] == idx[q].tolist(),
              "st: negatives differ")
    rows = read_jsonl(outs["tevatron"])
    check(len(rows) == 5, f"tevatron: {len(rows)} rows, expected one per query with positives")
    for r in rows:
        check(list(r) == ["query_id", "positive_passages", "negative_passages"],
              f"tevatron fields {list(r)}")
        q = qids.index(r["query_id"])
        check(sorted(cids.index(p["docid"]) for p in r["positive_passages"]) == positives[q],
              "tevatron: positives")
        check([cids.index(n["docid"]) for n in r["negative_passages"]] == idx[q].tolist(),
              "tevatron: negatives")
        check(all(isinstance(n["score"], float) for n in r["negative_passages"]),
              "tevatron: scores")
    # TREC 4-column qrels read the same; row-number ids without id files.
    trec = os.path.join(tmp, "trec.qrels")
    with open(trec, "w") as f:
        for q, ps in positives.items():
            for p in ps:
                f.write(f"{q} 0 {p} 2\n")
    o2 = os.path.join(tmp, "trec.jsonl")
    run("mine", "--queries", qp, "--corpus", cp, "--qrels", trec, "-k", 12, "-m", m, "--out", o2,
        "--quiet")
    rows = read_jsonl(o2)
    check([(r["query"], r["positive"]) for r in rows] ==
          [(q, p) for q in sorted(positives) for p in positives[q]], "TREC qrels pairs")
    check(all(r["negatives"] == idx[r["query"]].tolist() for r in rows), "TREC qrels negatives")


def group_sample(tmp):
    rng = np.random.default_rng(5)
    N, d, k = 60, 6, 20
    x = rng.standard_normal((N, d)).astype(np.float32)
    xp = os.path.join(tmp, "x.npy")
    np.save(xp, x)
    ci, cs, cpz = (os.path.join(tmp, n) for n in ("ci.npy", "cs.npy", "cp.npy"))
    # Query i's positive is corpus row i (paired); candidates = the top-k of the rest.
    run("mine", "--queries", xp, "--corpus", xp, "--paired", "-k", k, "-m", k, "--out-index", ci,
        "--out-score", cs, "--out-positive-score", cpz, "--quiet")
    I, S, P = np.load(ci), np.load(cs), np.load(cpz)
    check(np.allclose(P, (x.astype(np.float64) ** 2).sum(1), rtol=1e-5), "paired s+ = |x|^2")
    o = os.path.join(tmp, "o.npy")
    run("sample", "--candidates", ci, "--scores", cs, "-m", 5, "--out-index", o, "--quiet")
    check(np.array_equal(np.load(o), I[:, :5]), "sample --sampler top != first 5 candidates")
    run("sample", "--candidates", ci, "--scores", cs, "-m", 5, "--rank-min", 4, "--rank-max", 8,
        "--out-index", o, "--force", "--quiet")
    check(np.array_equal(np.load(o)[:, :4], I[:, 4:8]) and (np.load(o)[:, 4] == -1).all(),
          "rank window [4, 8)")
    # int32 candidates and a margin on s+ from the file.
    ci32 = os.path.join(tmp, "ci32.npy")
    np.save(ci32, I.astype(np.int32))
    os_ = os.path.join(tmp, "os.npy")
    run("sample", "--candidates", ci32, "--scores", cs, "--positive-score", cpz, "-m", 5,
        "--margin", 0.5, "--out-index", o, "--out-score", os_, "--force", "--quiet")
    oi, osc = np.load(o), np.load(os_)
    for i in range(N):
        want = [int(I[i, r]) for r in range(k) if S[i, r] <= P[i] - 0.5][:5]
        check([int(v) for v in oi[i] if v >= 0] == want, f"margin: query {i}")
    # Same as mine doing it in one go.
    o3 = os.path.join(tmp, "o3.npy")
    run("mine", "--queries", xp, "--corpus", xp, "--paired", "-k", k, "-m", 5, "--margin", 0.5,
        "--out-index", o3, "--quiet")
    check(np.array_equal(np.load(o3), oi), "sample after mine != mine with the filter")
    # SimANS: seeded, repeatable, matches mine's draw with the same candidates and seed.
    a, b = os.path.join(tmp, "a.npy"), os.path.join(tmp, "b.npy")
    run("sample", "--candidates", ci, "--scores", cs, "--positive-score", cpz, "-m", 5,
        "--sampler", "simans", "--simans-a", 0.1, "--seed", 9, "--out-index", a, "--quiet")
    run("mine", "--queries", xp, "--corpus", xp, "--paired", "-k", k, "-m", 5, "--sampler",
        "simans", "--simans-a", 0.1, "--seed", 9, "--out-index", b, "--quiet")
    check(np.array_equal(np.load(a), np.load(b)), "simans: sample and mine draw differently")
    # JSONL with qrels in the sample command.
    j = os.path.join(tmp, "s.jsonl")
    run("sample", "--candidates", ci, "--scores", cs, "--paired", "-m", 3, "--out", j, "--quiet")
    rows = read_jsonl(j)
    check(len(rows) == N and all(r["positive"] == r["query"] for r in rows), "sample JSONL")
    check(all(r["negatives"] == I[r["query"], :3].tolist() for r in rows), "sample JSONL negs")


def group_kmeans(tmp):
    """negsamp kmeans: labels int64 in [0, k), each the nearest written centroid (float64
    here), separated blobs recovered, the balance bound, the same files for the same seed at 1
    and 2 threads, f16 input, usage and input errors, outputs never replace an input."""
    rng = np.random.default_rng(8)
    k, d, n = 5, 8, 1500
    centres = rng.standard_normal((k, d))
    truth = rng.integers(0, k, n)
    x = (centres[truth] + 0.05 * rng.standard_normal((n, d))).astype(np.float32)
    xp, lp, cp = (os.path.join(tmp, f) for f in ("x.npy", "l.npy", "c.npy"))
    np.save(xp, x)
    out, _ = run("kmeans", "--embeddings", xp, "-k", k, "--seed", 3, "--out", lp,
                 "--centroids", cp)
    check("k-means: 1500 rows x 8 dims into 5 clusters" in out, f"summary: {out}")
    lab, cen = np.load(lp), np.load(cp)
    check(lab.dtype == np.int64 and lab.shape == (n,) and lab.min() >= 0 and lab.max() < k,
          f"labels: {lab.dtype} {lab.shape}")
    check(cen.dtype == np.float32 and cen.shape == (k, d), f"centroids {cen.shape}")
    c64 = cen.astype(np.float64)
    g = x.astype(np.float64) @ c64.T - 0.5 * (c64 * c64).sum(1)
    check(np.array_equal(g.argmax(1), lab), "a label is not the nearest centroid")
    check(len(set(zip(truth.tolist(), lab.tolist()))) == k, "blobs not recovered")
    # Same seed, 1 vs 2 threads, spherical + balanced: the same bytes.
    l1, l2, c1, c2 = (os.path.join(tmp, f) for f in ("l1.npy", "l2.npy", "c1.npy", "c2.npy"))
    common = ("--embeddings", xp, "-k", 7, "--spherical", "--balanced", 0.1, "--seed", 5,
              "--iterations", 6, "--quiet")
    run("kmeans", *common, "--threads", 1, "--out", l1, "--centroids", c1)
    run("kmeans", *common, "--threads", 2, "--out", l2, "--centroids", c2)
    check(open(l1, "rb").read() == open(l2, "rb").read(), "labels differ across threads")
    check(open(c1, "rb").read() == open(c2, "rb").read(), "centroids differ across threads")
    check(np.bincount(np.load(l1)).max() <= int(np.ceil(n / 7 * 1.1)), "balance bound")
    # float16 input.
    hp = os.path.join(tmp, "h.npy")
    np.save(hp, x.astype(np.float16))
    run("kmeans", "--embeddings", hp, "-k", k, "--seed", 3, "--out", l1, "--force", "--quiet")
    check(np.load(l1).shape == (n,), "f16 input")
    # Errors: usage (2) and data (1), nothing written.
    before = sorted(os.listdir(tmp))
    _, err = run("kmeans", "--embeddings", xp, "-k", n + 1, "--out", os.path.join(tmp, "z.npy"),
                 expect=2)
    check(f"-k ({n + 1}) is larger than the number of rows" in err, err)
    _, err = run("kmeans", "--embeddings", xp, "-k", 0, "--out", os.path.join(tmp, "z.npy"),
                 expect=2)
    check("-k" in err, err)
    _, err = run("kmeans", "--embeddings", xp, "-k", 2, "--balanced", -1, "--out",
                 os.path.join(tmp, "z.npy"), expect=2)
    check("--balanced" in err, err)
    _, err = run("kmeans", "--embeddings", xp, "-k", 2, "--out", xp, expect=2)
    check("never replaces an input" in err, err)
    _, err = run("kmeans", "--embeddings", xp, "-k", 2, "--out", lp, expect=1)
    check("--force" in err or "exists" in err, err)
    bad = x.copy()
    bad[17, 3] = np.nan
    bp = os.path.join(tmp, "bad.npy")
    np.save(bp, bad)
    before = sorted(os.listdir(tmp))
    _, err = run("kmeans", "--embeddings", bp, "-k", 2, "--out", os.path.join(tmp, "z.npy"),
                 expect=1)
    check("x[17][3]" in err, err)
    check(sorted(os.listdir(tmp)) == before and not leftovers(tmp), "an error left a file")


def chi2_critical(df):  # upper 1e-4 quantile (Wilson-Hilferty)
    h = 2.0 / (9.0 * df)
    return df * (1 - h + 3.719 * np.sqrt(h)) ** 3


def group_random_negatives(tmp):
    """--random-negatives: m hard columns then M random ones, never a positive or a chosen hard
    one, distinct, NaN scores; weights^alpha by chi-square against the exact law of one draw."""
    rng = np.random.default_rng(11)
    N, d, k, m, M = 80, 6, 20, 5, 4
    x = rng.standard_normal((N, d)).astype(np.float32)
    xp, hard, ri, rs = (os.path.join(tmp, n) for n in ("x.npy", "h.npy", "ri.npy", "rs.npy"))
    np.save(xp, x)
    run("mine", "--queries", xp, "--corpus", xp, "--paired", "-k", k, "-m", m, "--out-index",
        hard, "--quiet")
    j = os.path.join(tmp, "r.jsonl")
    run("mine", "--queries", xp, "--corpus", xp, "--paired", "-k", k, "-m", m,
        "--random-negatives", M, "--seed", 3, "--out-index", ri, "--out-score", rs, "--out", j,
        "--quiet")
    H, I, S = np.load(hard), np.load(ri), np.load(rs)
    check(I.shape == (N, m + M) and np.array_equal(I[:, :m], H), "hard columns unchanged")
    R = I[:, m:]
    check(((R >= 0) & (R < N)).all() and np.isnan(S[:, m:]).all(), "random ids, NaN scores")
    for i in range(N):
        check(len(set(R[i].tolist())) == M, f"query {i}: random ids repeat")
        check(i not in R[i] and not set(R[i].tolist()) & set(H[i].tolist()),
              f"query {i}: a random negative is a positive or a hard one")
    rows = read_jsonl(j)
    check(all(r["negatives"] == I[r["query"]].tolist() for r in rows), "JSONL hard + random")
    check(all(r["scores"][m:] == [None] * M for r in rows), "JSONL random scores null")
    prov = json.load(open(j + ".provenance.json"))
    check(prov["random_negatives"]["count"] == M and prov["random_negatives"]["columns"] ==
          [m, m + M], "provenance random_negatives")
    # Same seed, same draw; another seed, another.
    r2 = os.path.join(tmp, "r2.npy")
    run("mine", "--queries", xp, "--corpus", xp, "--paired", "-k", k, "-m", m,
        "--random-negatives", M, "--seed", 3, "--batch", 7, "--out-index", r2, "--quiet")
    check(np.array_equal(np.load(r2), I), "the draw depends on --batch")
    run("mine", "--queries", xp, "--corpus", xp, "--paired", "-k", k, "-m", m,
        "--random-negatives", M, "--seed", 4, "--out-index", r2, "--force", "--quiet")
    check(not np.array_equal(np.load(r2), I), "another seed draws the same")

    # sample: weights^alpha, positives and hard ones excluded; one draw per query has law
    # w_r^a / (sum of w^a over the rows not excluded for that query).
    Q, C, Nc, alpha = 6000, 6, 40, 0.75
    w = rng.uniform(0.2, 3.0, Nc).astype(np.float32)
    w[[3, 17]] = 0.0  # never drawn
    cand = np.stack([rng.choice(Nc, C, replace=False) for _ in range(Q)]).astype(np.int64)
    pos = rng.integers(0, Nc, Q)
    ci, cs, wp, pp, out = (os.path.join(tmp, n) for n in
                           ("ci.npy", "cs.npy", "w.npy", "pos.txt", "o.npy"))
    np.save(ci, cand)
    np.save(cs, rng.standard_normal((Q, C)).astype(np.float32))
    np.save(wp, w)
    with open(pp, "w") as f:
        f.writelines(f"{p}\n" for p in pos)
    run("sample", "--candidates", ci, "--scores", cs, "--positives", pp, "-m", 2,
        "--random-negatives", 1, "--weights", wp, "--random-alpha", alpha, "--seed", 5,
        "--out-index", out, "--quiet")
    O = np.load(out)
    v = np.where(w > 0, w.astype(np.float64) ** alpha, 0.0)
    expect = np.zeros(Nc)
    for i in range(Q):
        ex = set(O[i, :2].tolist()) | {int(pos[i])}
        check(int(O[i, 2]) not in ex and w[O[i, 2]] > 0, f"query {i}: excluded row drawn")
        vi = v.copy()
        vi[list(ex)] = 0
        expect += vi / vi.sum()
    obs = np.bincount(O[:, 2], minlength=Nc)
    live = expect > 0
    chi2 = float((((obs - expect) ** 2)[live] / expect[live]).sum())
    df = int(live.sum()) - 1
    check(chi2 < chi2_critical(df), f"random draw chi2 {chi2:.1f} >= {chi2_critical(df):.1f}")
    # errors: options without --random-negatives; no corpus size; weights of the wrong length
    _, err = run("sample", "--candidates", ci, "--scores", cs, "--weights", wp, "--out-index",
                 out, "--force", expect=2)
    check("--random-negatives" in err, err)
    _, err = run("sample", "--candidates", ci, "--scores", cs, "-m", 2, "--random-negatives",
                 2, "--out-index", out, "--force", expect=2)
    check("--weights or --corpus-ids" in err, err)
    _, err = run("mine", "--queries", xp, "--corpus", xp, "--paired", "-k", k, "-m", m,
                 "--random-negatives", 2, "--weights", wp, "--out-index", r2, "--force",
                 expect=1)
    check("40 weights but the corpus has 80 rows" in err, err)


def group_errors(tmp):
    rng = np.random.default_rng(9)
    good = os.path.join(tmp, "good.npy")
    np.save(good, rng.standard_normal((20, 8)).astype(np.float32))
    raw = open(good, "rb").read()
    trunc = os.path.join(tmp, "trunc.npy")
    with open(trunc, "wb") as f:
        f.write(raw[:-13])
    i8 = os.path.join(tmp, "int64.npy")
    np.save(i8, rng.integers(0, 5, (20, 8)).astype("<i8"))
    d7 = os.path.join(tmp, "d7.npy")
    np.save(d7, rng.standard_normal((20, 7)).astype(np.float32))
    fv = os.path.join(tmp, "trunc.fvecs")
    save_fvecs(fv, rng.standard_normal((4, 3)))
    with open(fv, "ab") as f:
        f.write(b"\x03\x00")
    badq = os.path.join(tmp, "badq.tsv")
    with open(badq, "w") as f:
        f.write("0\t1\t1\n25\t1\t1\n")
    badc = os.path.join(tmp, "badc.tsv")
    with open(badc, "w") as f:
        f.write("query-id\tcorpus-id\tscore\n0\t1\t1\n3\tdoc-x\t1\n")
    badci = os.path.join(tmp, "badci.tsv")
    with open(badci, "w") as f:
        f.write("query-id\tcorpus-id\tscore\n0\td1\t1\n3\tdoc-x\t1\n")
    ids = os.path.join(tmp, "cids.txt")
    with open(ids, "w") as f:
        f.write("\n".join(f"d{i}" for i in range(20)) + "\n")
    short_ids = os.path.join(tmp, "short.txt")
    with open(short_ids, "w") as f:
        f.write("a\nb\n")
    out = os.path.join(tmp, "out.npy")
    base = ["--out-index", out, "-k", 5, "-m", 3, "--quiet"]
    cases = [
        (["--queries", trunc, "--corpus", good], [trunc]),
        (["--queries", good, "--corpus", trunc], [trunc]),
        (["--queries", good, "--corpus", i8], [i8]),
        (["--queries", good, "--corpus", d7], [good, d7, "8", "7"]),
        (["--queries", fv, "--corpus", good], [fv, "truncated"]),
        (["--queries", os.path.join(tmp, "missing.npy"), "--corpus", good], ["missing.npy"]),
        (["--queries", good, "--corpus", good, "--qrels", badq], [badq, "line 2", "'25'"]),
        (["--queries", good, "--corpus", good, "--qrels", badci, "--corpus-ids", ids],
         [badci, "line 3", "doc-x", ids]),
        (["--queries", good, "--corpus", good, "--qrels", badc], [badc, "doc-x"]),
        (["--queries", good, "--corpus", good, "--corpus-ids", short_ids, "--paired"],
         [short_ids, "2 ids", "20 rows"]),
        (["--queries", good, "--corpus", good, "--qrels", os.path.join(tmp, "nope.tsv")],
         ["nope.tsv"]),
    ]
    nan = os.path.join(tmp, "nan.npy")
    a = rng.standard_normal((20, 8)).astype(np.float32)
    a[4, 2] = np.nan
    np.save(nan, a)
    cases.append((["--queries", good, "--corpus", nan], [good, nan, "NONFINITE"]))
    for args, needles in cases:
        _, err = run("mine", *args, *base, expect=1)
        for n in needles:
            check(n in err, f"message lacks '{n}' for {args}: {err}")
        check(not os.path.exists(out), f"error left {out} behind for {args}")
        check(not leftovers(tmp), f"error left temporary files for {args}: {leftovers(tmp)}")
    # sample: wrong dtype / shapes.
    s = os.path.join(tmp, "s.npy")
    np.save(s, rng.standard_normal((20, 5)).astype(np.float32))
    ci = os.path.join(tmp, "ci.npy")
    np.save(ci, rng.integers(0, 20, (20, 5)).astype(np.int64))
    for args, needles in [
        (["--candidates", s, "--scores", s], [s, "floats"]),
        (["--candidates", ci, "--scores", ci], [ci, "integers"]),
        (["--candidates", ci, "--scores", good], ["shape mismatch", good]),
        (["--candidates", trunc, "--scores", s], [trunc, "truncated"]),
    ]:
        _, err = run("sample", *args, "--out-index", out, "--quiet", expect=1)
        for n in needles:
            check(n in err, f"message lacks '{n}' for sample {args}: {err}")
        check(not os.path.exists(out) and not leftovers(tmp), f"sample {args} left files")
    # sample: non-finite data, found by the library's one check (ns_filter_sample with filter
    # rules), named by the option and file it came from and the row and column.
    sn = os.path.join(tmp, "snan.npy")
    a = rng.uniform(0, 1, (20, 5)).astype(np.float32)
    a[3, 2] = np.nan
    np.save(sn, a)
    gi = os.path.join(tmp, "ginf.npy")
    g = rng.uniform(0, 1, (20, 5)).astype(np.float32)
    g[7, 1] = np.inf
    np.save(gi, g)
    s1 = os.path.join(tmp, "s1.npy")
    np.save(s1, rng.uniform(0, 1, (20, 5)).astype(np.float32))
    pp = os.path.join(tmp, "pp.npy")
    np.save(pp, np.full(20, 0.9, np.float32))
    for args, needles in [
        (["--candidates", ci, "--scores", sn, "--max-score", 0.95],
         ["--scores " + sn, "ns_filter_sample", "query 3, column 2", "nan"]),
        (["--candidates", ci, "--scores", sn], ["--scores " + sn, "query 3, column 2"]),
        (["--candidates", ci, "--scores", s1, "--positive-score", pp, "--paired",
          "--guide-scores", gi, "--guide-positive-score", pp, "--guide-margin", 0.1],
         ["--guide-scores " + gi, "query 7, column 1", "inf"]),
    ]:
        _, err = run("sample", *args, "-m", 2, "--out-index", out, "--quiet", expect=1)
        for n in needles:
            check(n in err, f"message lacks '{n}' for sample {args}: {err}")
        check(not os.path.exists(out) and not leftovers(tmp), f"sample {args} left files")
    # An existing output is kept unless --force.
    with open(out, "wb") as f:
        f.write(b"precious")
    _, err = run("mine", "--queries", good, "--corpus", good, *base, expect=1)
    check(out in err and "--force" in err, f"existing output message: {err}")
    check(open(out, "rb").read() == b"precious", "existing output was modified without --force")
    run("mine", "--queries", good, "--corpus", good, *base, "--force")
    check(np.load(out).shape == (20, 3), "--force did not overwrite")
    check(not leftovers(tmp), "temporary files after --force")
    # A CUDA backend asked for where there is none: a runtime error naming CUDA.
    info, _ = run("info")
    if "cuda devices: 0" in info:
        out2 = os.path.join(tmp, "cuda.npy")
        _, err = run("mine", "--queries", good, "--corpus", good, "--backend", "cuda",
                     "--out-index", out2, expect=1)
        check("CUDA" in err, f"--backend cuda message: {err}")
        check(not os.path.exists(out2) and not leftovers(tmp), "--backend cuda left files")
    # Demo on a missing file.
    _, err = run("demo", "--data", os.path.join(tmp, "none.csv.gz"), expect=1)
    check("none.csv.gz" in err, f"demo message: {err}")


def npy_image(descr, shape, data=b"", fortran=False, major=1):
    """A .npy file's bytes with any header a hostile writer may put there."""
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape)
    pre = 10 if major == 1 else 12
    d += " " * ((64 - (pre + len(d) + 1) % 64) % 64) + "\n"
    n = len(d)
    size = n.to_bytes(2 if major == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([major, 0]) + size + d.encode() + data


def group_hostile_npy(tmp):
    """Crafted .npy headers (issue 13 item 1): every one a clean exit 1 naming the file and the
    problem, in both commands and every .npy input, nothing written, never a crash or a hang."""
    rng = np.random.default_rng(13)
    good = os.path.join(tmp, "good.npy")
    np.save(good, rng.standard_normal((6, 4)).astype(np.float32))
    ci = os.path.join(tmp, "ci.npy")
    np.save(ci, rng.integers(0, 6, (6, 3)).astype(np.int64))
    cs = os.path.join(tmp, "cs.npy")
    np.save(cs, rng.standard_normal((6, 3)).astype(np.float32))
    f4 = np.zeros(24, np.float32).tobytes()
    cases = {
        "rows2e62": (npy_image("<f4", "(4611686018427387904, 1)", b"x"), "overflows"),
        "rows2e62i8": (npy_image("<i8", "(4611686018427387904, 1)", b"x"), "overflows"),
        "rows2e60": (npy_image("<f4", "(1152921504606846976, 1)", b"x"), "truncated"),
        "cols2e62": (npy_image("<f4", "(2, 4611686018427387904)", b"x"), "overflows"),
        "product": (npy_image("<f2", "(4294967296, 4294967296)", b"x"), "overflows"),
        "huge_dim": (npy_image("<f4", "(99999999999999999999999, 4)", f4), "64 bits"),
        "short": (npy_image("<f4", "(6, 4)", f4[:-8]), "truncated"),
        "long": (npy_image("<f4", "(6, 4)", f4 + b"\0" * 8), "more than its shape"),
        "f8": (npy_image("<f8", "(3, 4)", f4), "'<f8'"),
        "bool": (npy_image("|b1", "(6, 4)", f4), "'|b1'"),
        "bigendian": (npy_image(">f4", "(6, 4)", f4), "'>f4'"),
        "fortran": (npy_image("<f4", "(6, 4)", f4, fortran=True), "fortran_order"),
        "header_cut": (npy_image("<f4", "(6, 4)", f4)[:40], "header"),
        "v2_cut": (npy_image("<f4", "(6, 4)", f4, major=2)[:11], "too short"),
        "3d": (npy_image("<f4", "(2, 3, 4)", f4), "dimensions"),
        "neg": (npy_image("<f4", "(-6, 4)", f4), "malformed"),
        "magic": (b"\x93NUMPX" + npy_image("<f4", "(6, 4)", f4)[6:], "magic"),
    }
    out = os.path.join(tmp, "out.npy")
    for name, (image, needle) in cases.items():
        bad = os.path.join(tmp, f"{name}.npy")
        with open(bad, "wb") as f:
            f.write(image)
        runs = [("mine", "--queries", bad, "--corpus", good, "-k", 2, "-m", 2),
                ("mine", "--queries", good, "--corpus", bad, "-k", 2, "-m", 2),
                ("sample", "--candidates", bad, "--scores", cs, "-m", 2),
                ("sample", "--candidates", ci, "--scores", bad, "-m", 2),
                ("sample", "--candidates", ci, "--scores", cs, "--positive-score", bad,
                 "--margin", 0.1, "-m", 2)]
        for args in runs:
            _, err = run(*args, "--out-index", out, "--quiet", expect=1, timeout=30)
            check(bad in err and needle in err,
                  f"{name}: message lacks the file or '{needle}' for {args[0]}: {err}")
            check(not os.path.exists(out) and not leftovers(tmp), f"{name}: {args} left files")
    # 2^62 rows of 0 columns: a valid empty array, but no embeddings and no candidates.
    zf, zi = os.path.join(tmp, "zero_cols.npy"), os.path.join(tmp, "zero_cols_i8.npy")
    with open(zf, "wb") as f:
        f.write(npy_image("<f4", "(4611686018427387904, 0)"))
    with open(zi, "wb") as f:
        f.write(npy_image("<i8", "(4611686018427387904, 0)"))
    for args, needle in [(("mine", "--queries", zf, "--corpus", good, "-k", 1), "holds no embeddings"),
                         (("mine", "--queries", good, "--corpus", zf, "-k", 1), "holds no embeddings"),
                         (("sample", "--candidates", zi, "--scores", zf), "empty candidate matrix")]:
        _, err = run(*args, "-m", 1, "--out-index", out, "--quiet", expect=1, timeout=30)
        check(needle in err and "zero_cols" in err, f"zero columns, {args}: {err}")


def group_files(tmp):
    """Issue 13 items 5-7: outputs never replace an input, never collide, never replace anything
    but a regular file (even with --force); non-regular inputs are refused at once."""
    rng = np.random.default_rng(17)
    q = os.path.join(tmp, "q.npy")
    np.save(q, rng.standard_normal((8, 4)).astype(np.float32))
    c = os.path.join(tmp, "c.npy")
    np.save(c, rng.standard_normal((30, 4)).astype(np.float32))
    qrels = os.path.join(tmp, "qrels.tsv")
    with open(qrels, "w") as f:
        f.write("".join(f"{i}\t{i + 1}\t1\n" for i in range(8)))
    ci = os.path.join(tmp, "ci.npy")
    cs = os.path.join(tmp, "cs.npy")
    run("mine", "--queries", q, "--corpus", c, "-k", 5, "-m", 5, "--out-index", ci,
        "--out-score", cs, "--quiet")
    snapshot = {p: open(p, "rb").read() for p in (q, c, qrels, ci, cs)}
    link = os.path.join(tmp, "hard.npy")
    os.link(q, link)
    mine = ["mine", "--queries", q, "--corpus", c, "--qrels", qrels, "-k", 5, "-m", 2, "--quiet",
            "--force"]
    sample = ["sample", "--candidates", ci, "--scores", cs, "-m", 2, "--quiet", "--force"]
    # An output naming an input, however spelled: a usage error, the input untouched.
    for args, needle in [
        (mine + ["--out-index", q], "--queries"),
        (mine + ["--out-index", os.path.join(tmp, ".", "q.npy")], "--queries"),
        (mine + ["--out-score", link], "--queries"),
        (mine + ["--out", qrels], "--qrels"),
        (mine + ["--out-positive-score", c], "--corpus"),
        (sample + ["--out-index", ci], "--candidates"),
        (sample + ["--out-score", os.path.join(tmp, "..", os.path.basename(tmp), "cs.npy")],
         "--scores"),
    ]:
        _, err = run(*args, expect=2)
        check(needle in err and "never replaces an input" in err, f"{args}: {err}")
    for p_, data in snapshot.items():
        check(open(p_, "rb").read() == data, f"{p_} was modified")
    # Two outputs naming one file.
    o = os.path.join(tmp, "o.npy")
    for other in (os.path.join(tmp, ".", "o.npy"), o):
        _, err = run(*mine, "--out-index", o, "--out-score", other, expect=2)
        check("name the same file" in err and "--out-index" in err and "--out-score" in err, err)
        check(not os.path.exists(o) and not leftovers(tmp), "collision left files")
    # --force never replaces a symlink, a FIFO or a directory.
    target = os.path.join(tmp, "target.jsonl")
    with open(target, "w") as f:
        f.write("keep me\n")
    sym = os.path.join(tmp, "sym.jsonl")
    os.symlink(target, sym)
    fifo_out = os.path.join(tmp, "out.fifo")
    os.mkfifo(fifo_out)
    dir_out = os.path.join(tmp, "dir.npy")
    os.mkdir(dir_out)
    for path, kind in [(sym, "symbolic link"), (fifo_out, "FIFO"), (dir_out, "directory")]:
        _, err = run(*mine, "--out", path, expect=1, timeout=30)
        check(kind in err and path in err and "regular file" in err, f"--out {kind}: {err}")
    check(os.path.islink(sym) and open(target).read() == "keep me\n", "the symlink was replaced")
    check(stat.S_ISFIFO(os.lstat(fifo_out).st_mode), "the FIFO was replaced")
    check(os.path.isdir(dir_out) and not leftovers(tmp), "directory / leftovers")
    # Non-regular inputs: a FIFO nobody writes to, a directory: refused at once.
    fifo = os.path.join(tmp, "in.fifo")
    os.mkfifo(fifo)
    for flag, base in [("--corpus", mine), ("--queries", mine), ("--qrels", mine),
                       ("--query-ids", mine), ("--corpus-ids", mine), ("--candidates", sample),
                       ("--positive-score", sample)]:
        for path, kind in [(fifo, "FIFO"), (tmp, "directory")]:
            args = [a for a in base]
            if flag in args:
                args[args.index(flag) + 1] = path
            else:
                args += [flag, path]
            _, err = run(*args, "--out-index", o, expect=1, timeout=20)
            check(flag in err and path in err and kind in err and "regular file" in err,
                  f"{flag} {kind}: {err}")
            check(not os.path.exists(o) and not leftovers(tmp), f"{flag} {kind} left files")
    qf = os.path.join(tmp, "q.fvecs")
    save_fvecs(qf, rng.standard_normal((3, 4)))
    os.unlink(qf)
    os.mkfifo(qf)
    _, err = run("bench-mine", "--queries", qf, "--corpus", c, "-k", 2, expect=1, timeout=20)
    check("FIFO" in err, f"bench-mine FIFO: {err}")
    _, err = run("demo", "--data", fifo, expect=1, timeout=20)
    check("FIFO" in err, f"demo FIFO: {err}")


def readme_flags_exist():
    """Every --flag of a `negsamp <cmd>` line in README.md is one that command's --help lists."""
    readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")
    if not os.path.exists(readme):
        return
    helps = {}
    bad = []
    text = open(readme).read().replace("\\\n", " ")
    for line in text.splitlines():
        m = re.match(r"\s*(?:\S*/)?negsamp (mine|sample|kmeans|inspect|demo|bench-mine|info)\b(.*)", line)
        if not m:
            continue
        cmd = m.group(1)
        if cmd not in helps:
            helps[cmd] = run(cmd, "--help")[0]
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", m.group(2)):
            if not re.search(re.escape(flag) + r"(?![\w-])", helps[cmd]):
                bad.append(f"negsamp {cmd} {flag}")
    check(not bad, f"README.md shows flags the commands do not have: {bad}")


def group_friction(tmp):
    """Issue 13's friction list: README flags, --skip-unknown-ids, BOM/CRLF/spaces in id files,
    usage errors always 2, float32 scores that round-trip, valid JSON from any id bytes,
    .jsonl.gz written as gzip, one decimal number syntax."""
    readme_flags_exist()
    rng = np.random.default_rng(21)
    B, N, d = 5, 30, 6
    q = os.path.join(tmp, "q.npy")
    c = os.path.join(tmp, "c.npy")
    np.save(q, rng.standard_normal((B, d)).astype(np.float32))
    np.save(c, rng.standard_normal((N, d)).astype(np.float32))
    # Id files with a BOM, CRLF line ends and spaces/tabs around ids; qrels likewise.
    qf, cf, qrels = (os.path.join(tmp, n) for n in ("qids.txt", "cids.txt", "qrels.tsv"))
    with open(qf, "wb") as f:
        f.write(b"\xef\xbb\xbf" + b"".join(f"q{i} \r\n".encode() for i in range(B)))
    with open(cf, "wb") as f:
        f.write(b"".join(f"\td{i}  \r\n".encode() for i in range(N)))
    with open(qrels, "wb") as f:
        f.write(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\r\n" +
                b"".join(f"q{i} \td{i + 1}\t1\r\n".encode() for i in range(B)))
    j = os.path.join(tmp, "o.jsonl")
    ids = ["--query-ids", qf, "--corpus-ids", cf]
    run("mine", "--queries", q, "--corpus", c, *ids, "--qrels", qrels, "-k", 8, "-m", 3,
        "--out", j, "--quiet")
    rows = read_jsonl(j)
    check([(r["query"], r["positive"]) for r in rows] == [(f"q{i}", f"d{i + 1}") for i in range(B)],
          f"BOM/CRLF/spaces: {[(r['query'], r['positive']) for r in rows]}")
    # Unknown ids: a clear error naming --skip-unknown-ids; with it, skipped and counted.
    sub = os.path.join(tmp, "sub.tsv")
    with open(sub, "w") as f:
        f.write("q0\td1\t1\nq-unknown\td2\t1\nq2\td-unknown\t1\nq3\td4\t1\n")
    base = ["mine", "--queries", q, "--corpus", c, *ids, "--qrels", sub, "-k", 8, "-m", 3]
    _, err = run(*base, "--out", j, "--force", expect=1)
    check("q-unknown" in err and "--skip-unknown-ids" in err, f"unknown id message: {err}")
    _, err = run(*base, "--out", j, "--force", "--skip-unknown-ids")
    check("skipped 2 qrels lines" in err and "'q-unknown'" in err, f"skip report: {err}")
    check([r["query"] for r in read_jsonl(j) if r["positive"]] == ["q0", "q3"], "skipped rows")
    # Usage errors are 2 in both commands: -m above the candidates, an empty --out.
    ci, cs = os.path.join(tmp, "ci.npy"), os.path.join(tmp, "cs.npy")
    run("mine", "--queries", q, "--corpus", c, "-k", 4, "-m", 4, "--out-index", ci,
        "--out-score", cs, "--quiet")
    o = os.path.join(tmp, "o.npy")
    _, err = run("sample", "--candidates", ci, "--scores", cs, "-m", 5, "--out-index", o, expect=2)
    check("--negatives (5)" in err and "4 candidates" in err, err)
    small = os.path.join(tmp, "small.npy")
    np.save(small, rng.standard_normal((3, d)).astype(np.float32))
    _, err = run("mine", "--queries", q, "--corpus", small, "-m", 5, "--out-index", o, expect=2)
    check("--negatives (5)" in err and "3 rows" in err, err)
    _, err = run("mine", "--queries", q, "--corpus", c, "--out", "", expect=2)
    check("--out ''" in err, err)
    check(not os.path.exists(o) and not leftovers(tmp), "usage errors left files")
    # Scores in JSON read back as exactly the float32 of the .npy; gzip when the name says so.
    jz = os.path.join(tmp, "o.jsonl.gz")
    run("mine", "--queries", q, "--corpus", c, "-k", 10, "-m", 10, "--out", jz, "--out-score",
        o, "--quiet")
    with open(jz, "rb") as f:
        check(f.read(2) == b"\x1f\x8b", ".jsonl.gz is not gzip")
    with gzip.open(jz, "rt") as f:
        rows = [json.loads(line) for line in f]
    S = np.load(o)
    got = np.array([r["scores"] for r in rows], np.float32)
    check(np.array_equal(got, S), f"JSON scores differ from the .npy in {(got != S).sum()} places")
    # Ids that are not UTF-8 still give valid JSON (and valid UTF-8).
    raw_ids = [b"d\xff%d" % i if i % 3 == 0 else b"d\xc3\xa9%d" % i if i % 3 == 1
               else b"d\xed\xa0\x80%d" % i for i in range(N)]
    bf = os.path.join(tmp, "bytes.txt")
    with open(bf, "wb") as f:
        f.write(b"\n".join(raw_ids) + b"\n")
    run("mine", "--queries", q, "--corpus", c, "--corpus-ids", bf, "-k", N, "-m", N, "--out", j,
        "--force", "--quiet")
    with open(j, encoding="utf-8", errors="strict") as f:
        rows = [json.loads(line) for line in f]
    names = set(n for r in rows for n in r["negatives"])
    check("d\u00ff0" in names and "d\u00e91" in names and "d\u00ed\u00a0\u00802" in names,
          f"non-UTF-8 ids: {sorted(names)[:6]}")
    # One number syntax: decimal, range-checked, messages name the flag.
    a, b = os.path.join(tmp, "a.npy"), os.path.join(tmp, "b.npy")
    samp = ["mine", "--queries", q, "--corpus", c, "-k", 10, "-m", 3, "--sampler", "uniform",
            "--quiet", "--force"]
    run(*samp, "--seed", "010", "--out-index", a)
    run(*samp, "--seed", "10", "--out-index", b)
    check(np.array_equal(np.load(a), np.load(b)), "--seed 010 is not ten")
    for flag, val, needle in [("-k", "0x10", "decimal"), ("--seed", "0x10", "decimal"),
                              ("-k", " 5", "decimal"), ("-k", "+5", "decimal"),
                              ("-k", "99999999999999999999", "must be in"),
                              ("--seed", "-1", "non-negative"),
                              ("--seed", "18446744073709551616", "at most"),
                              ("--margin", "0x1p-3", "decimal"), ("--margin", "inf", "decimal"),
                              ("--max-score", "1e39", "float32"), ("--batch", "0", "must be in")]:
        _, err = run(*samp, flag, val, "--out-index", o, expect=2)
        check(flag in err and val.strip() in err and needle in err, f"{flag} {val!r}: {err}")


def start_mine(q, c, *out):
    return subprocess.Popen([cli_harness.NEGSAMP, "mine", "--queries", q, "--corpus", c, "-k", "100",
                             "-m", "10", "--batch", "500", *out, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_temp(p, tmp):
    t0 = time.time()
    while not leftovers(tmp) and p.poll() is None and time.time() - t0 < 30:
        time.sleep(0.005)
    time.sleep(0.05)  # into the loading / mining


def group_outputs(tmp):
    """Any signal the process can catch (Ctrl-C, kill, hang-up, SIGQUIT, SIGUSR1, SIGALRM,
    SIGPIPE) leaves neither the output nor a temporary file; what SIGKILL leaves is a hidden
    file named as a negsamp temporary, and refused as an input."""
    rng = np.random.default_rng(2)
    q = os.path.join(tmp, "q.npy")
    c = os.path.join(tmp, "c.npy")
    np.save(q, rng.standard_normal((4000, 64)).astype(np.float32))
    # Large enough that a signal lands mid-way on an idle machine (60,000 rows finished in 0.3 s,
    # before the signal, once CPU mining got faster).
    np.save(c, rng.standard_normal((200000, 64)).astype(np.float32))
    out = os.path.join(tmp, "big.jsonl")
    interrupted = 0
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
            signal.SIGALRM, signal.SIGPIPE)
    for sig in sigs:
        p = start_mine(q, c, "--out", out)
        wait_for_temp(p, tmp)
        p.send_signal(sig)
        p.wait(timeout=120)
        if p.returncode == -sig:
            interrupted += 1
            check(not os.path.exists(out), f"{sig.name}: output left behind")
        elif p.returncode == 0:  # finished before the signal landed: nothing to check
            os.unlink(out)  # and its provenance sidecar, or the next run refuses to overwrite it
            os.unlink(out + ".provenance.json")
        else:
            raise Failure(f"{sig.name}: exit {p.returncode}: {p.stderr.read()}")
        check(not leftovers(tmp), f"{sig.name}: temporary files left: {leftovers(tmp)}")
    print(f"  interrupted {interrupted} of {len(sigs)} runs mid-way")
    # SIGKILL cannot be caught: the temporary stays, hidden and named as one, never the output.
    oi = os.path.join(tmp, "idx.npy")
    p = start_mine(q, c, "--out-index", oi)
    wait_for_temp(p, tmp)
    p.kill()
    p.wait(timeout=60)
    if p.returncode == -signal.SIGKILL:
        # the output's temporary, and its provenance sidecar's (opened just after it: a kill
        # landing between the two leaves only the first)
        left = sorted(leftovers(tmp), key=lambda n: "provenance" in n)
        check(1 <= len(left) <= 2 and left[0].startswith(".idx.npy" + TEMP_TAG) and
              all(n.startswith(".idx.npy.provenance.json" + TEMP_TAG) for n in left[1:]),
              f"SIGKILL left {left}, expected .idx.npy{TEMP_TAG}XXXXXX and its provenance's")
        check(not os.path.exists(oi), "SIGKILL: the output exists")
        for n in left[1:]:
            os.unlink(os.path.join(tmp, n))
        t = os.path.join(tmp, left[0])
        _, err = run("mine", "--queries", t, "--corpus", c, "--out-index", oi, expect=1)
        check(t in err and "temporary" in err and "not a result" in err, f"leftover read: {err}")
        _, err = run("sample", "--candidates", t, "--scores", t, "--out-index", oi, expect=1)
        check("temporary" in err, f"leftover read by sample: {err}")
        os.unlink(t)


def group_demo(tmp):
    t0 = time.time()
    out, _ = run("demo", "--data", DATA)
    took = time.time() - t0
    for key in ("1797 images x 64 pixels", "(a) top", "(b) top+F", "(c) simans", "(d) simans+F",
                "(e) uniform", "false neg."):
        check(key in out, f"demo output lacks '{key}':\n{out}")
    # The shares are percentages in [0, 100]; picked negatives per image ≤ m.
    for line in out.splitlines():
        if line.startswith("("):
            parts = line.split()
            pct = float([p for p in parts if p.endswith("%")][0][:-1])
            check(0 <= pct <= 100, f"bad share in {line}")
    # The time line is a range over the settings: low first.
    m = re.search(r"filter \+ sample took ([0-9.]+)-([0-9.]+) ms per setting", out)
    check(m is not None and float(m.group(1)) <= float(m.group(2)), f"demo time range: {out}")
    # A plain CSV (not gzip) works as well; a small k and m.
    x, y = digits()
    plain = os.path.join(tmp, "d.csv")
    np.savetxt(plain, np.column_stack([x[:300], y[:300]]), fmt="%d", delimiter=",")
    out2, _ = run("demo", "--data", plain, "-k", 20, "-m", 5, "--positive", "random")
    check("300 images x 64 pixels" in out2, out2)
    print(f"  demo took {took:.2f}s")


GROUPS = {name[6:]: fn for name, fn in globals().items() if name.startswith("group_")}


def main():
    global DATA
    ap = argparse.ArgumentParser()
    ap.add_argument("--negsamp", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--group", action="append", choices=sorted(GROUPS))
    a = ap.parse_args()
    DATA = a.data

    def skip(g):
        if g in ("mine_digits", "demo") and not os.path.exists(DATA):
            return f"digits data not found at {DATA}"
        return None
    return cli_harness.run_groups(a.negsamp, GROUPS, a.group, "negsamp-cli", skip)


if __name__ == "__main__":
    sys.exit(main())
