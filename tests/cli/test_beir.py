#!/usr/bin/env python3
"""End-to-end tests of negsamp on BEIR-style text data: `negsamp mine --beir DIR` and JSONL
--queries/--corpus, the text-joined formats (st, tevatron, flag; plain and gzip), the
provenance sidecar, --trace and `negsamp inspect`.

Each group runs as its own ctest (cli_<group>, registered in tools/CMakeLists.txt):
    python3 tests/cli/test_beir.py --negsamp BUILD/tools/negsamp --group beir_formats
References are independent of negsamp: numpy brute force in float64, Python's json, gzip and
zlib modules, XXH64 from xxh64_ref.py.
"""
import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_harness  # noqa: E402
from cli_harness import Failure, check, read_jsonl, run  # noqa: E402,F401

PYTHON = sys.executable  # the Python of `python -m negsamp.parquet` (--python)


from xxh64_ref import xxh64_file  # noqa: E402


# ---------------------------------------------------------------- a tiny BEIR folder

class Beir:
    """corpus.jsonl, queries.jsonl, qrels/test.tsv, qrels/dev.tsv and the embeddings."""

    def __init__(self, root, N=48, Q=10, d=16, seed=0):
        rng = np.random.default_rng(seed)
        self.root = root
        os.makedirs(os.path.join(root, "qrels"), exist_ok=True)
        self.cid = [f"doc-{i}" for i in range(N)]
        self.qid = [f"q{i}" for i in range(Q)]
        # texts with escapes, non-ASCII, astral-plane characters (surrogate pairs in JSON)
        self.title = [f"Title {i} \u00e9" if i % 3 else "" for i in range(N)]
        self.text = [f"passage {i} \"quoted\" \\ tab\there \U0001F600 \u4e2d" for i in range(N)]
        self.qtext = [f"what is {i}? \u00fc" for i in range(Q)]
        with open(os.path.join(root, "corpus.jsonl"), "w", encoding="utf-8") as f:
            for i in range(N):
                f.write(json.dumps({"_id": self.cid[i], "title": self.title[i],
                                    "text": self.text[i], "metadata": {"n": [i, 1.5, None]}},
                                   ensure_ascii=i % 2 == 0) + "\n")
        with open(os.path.join(root, "queries.jsonl"), "w", encoding="utf-8") as f:
            for i in range(Q):
                f.write(json.dumps({"_id": self.qid[i], "text": self.qtext[i],
                                    "metadata": {}}) + "\n")
        # test split: q0..q7 one positive each, q0 and q3 a second one, q1 a score-0 line
        # (not a positive); q8, q9 have none (not written)
        self.pos = {i: [i * 5 % N] for i in range(8)}
        self.pos[0].append(11)
        self.pos[3].append(40)
        with open(os.path.join(root, "qrels", "test.tsv"), "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q, ps in self.pos.items():
                for p in ps:
                    f.write(f"{self.qid[q]}\t{self.cid[p]}\t1\n")
            f.write(f"q1\tdoc-{N - 1}\t0\n")
        with open(os.path.join(root, "qrels", "dev.tsv"), "w") as f:
            f.write("query-id\tcorpus-id\tscore\nq9\tdoc-2\t2\nq9\tnot-a-doc\t1\n")
        self.Qe = rng.standard_normal((Q, d)).astype(np.float32)
        self.Ce = rng.standard_normal((N, d)).astype(np.float32)
        np.save(os.path.join(root, "queries.npy"), self.Qe)
        np.save(os.path.join(root, "corpus.npy"), self.Ce)
        self.S = self.Qe.astype(np.float64) @ self.Ce.astype(np.float64).T

    def passage(self, r):
        return f"{self.title[r]} {self.text[r]}" if self.title[r] else self.text[r]

    def ref_top(self, q, k, m, margin=None):
        """Top-k excluding q's positives, then the rules, then the m best: corpus rows."""
        order = [j for j in np.argsort(-self.S[q], kind="stable") if j not in self.pos[q]][:k]
        sp = min(self.S[q, p] for p in self.pos[q])
        kept = [j for j in order if margin is None or not self.S[q, j] > sp - margin]
        return order, kept[:m]


# ---------------------------------------------------------------- groups

def group_beir_formats(tmp):
    """st / tevatron / flag with the texts joined, against numpy top-m; gzip round trip."""
    b = Beir(os.path.join(tmp, "scifact"))
    k, m = 12, 4
    outs = {}
    for fmt in ("st", "tevatron", "flag", "ids"):
        out = os.path.join(tmp, f"{fmt}.jsonl")
        run("mine", "--beir", b.root, "-k", k, "-m", m, "--format", fmt, "--out", out,
            "--quiet", *(["--with-scores"] if fmt in ("st", "flag") else []))
        outs[fmt] = read_jsonl(out)
    ref = {q: b.ref_top(q, k, m)[1] for q in b.pos}
    # st: one row per (query, positive), positives in corpus-row order
    st = outs["st"]
    want_rows = [(q, p) for q in sorted(b.pos) for p in sorted(b.pos[q])]
    check(len(st) == len(want_rows), f"st rows {len(st)} != {len(want_rows)}")
    for row, (q, p) in zip(st, want_rows):
        check(list(row) == ["anchor", "positive"] + [f"negative_{j + 1}" for j in range(m)] +
              ["scores"], f"st columns {list(row)}")
        check(row["anchor"] == b.qtext[q], f"anchor {row['anchor']!r}")
        check(row["positive"] == b.passage(p), f"positive {row['positive']!r} != {b.passage(p)!r}")
        negs = [row[f"negative_{j + 1}"] for j in range(m)]
        check(negs == [b.passage(j) for j in ref[q]], f"query {q}: st negatives {negs}")
        want = [b.S[q, p]] + [b.S[q, j] for j in ref[q]]
        check(np.allclose(row["scores"], want, atol=1e-5), f"st scores {row['scores']} {want}")
    # tevatron: one row per query, passages as {docid, title, text}
    tev = outs["tevatron"]
    check([r["query_id"] for r in tev] == [b.qid[q] for q in sorted(b.pos)], "tevatron ids")
    for r in tev:
        q = b.qid.index(r["query_id"])
        check(r["query"] == b.qtext[q], "tevatron query text")
        check([p["docid"] for p in r["positive_passages"]] == [b.cid[p] for p in sorted(b.pos[q])],
              f"tevatron positives {r['positive_passages']}")
        check([p["docid"] for p in r["negative_passages"]] == [b.cid[j] for j in ref[q]],
              f"tevatron negatives of {q}")
        for p in r["positive_passages"] + r["negative_passages"]:
            j = b.cid.index(p["docid"])
            check(p["title"] == b.title[j] and p["text"] == b.text[j], f"tevatron passage {p}")
    # flag: {query, pos, neg, pos_scores, neg_scores}
    for r, q in zip(outs["flag"], sorted(b.pos)):
        check(r["query"] == b.qtext[q], "flag query")
        check(r["pos"] == [b.passage(p) for p in sorted(b.pos[q])], "flag pos")
        check(r["neg"] == [b.passage(j) for j in ref[q]], f"flag neg of {q}")
        check(np.allclose(r["neg_scores"], [b.S[q, j] for j in ref[q]], atol=1e-5), "flag scores")
    # ids with texts: the "_id"s as strings
    for r in outs["ids"]:
        q = b.qid.index(r["query"])
        check(r["negatives"] == [b.cid[j] for j in ref[q]], f"ids negatives {r}")
    # gzip by extension: the same rows
    gz = os.path.join(tmp, "st.jsonl.gz")
    run("mine", "--beir", b.root, "-k", k, "-m", m, "--format", "st", "--with-scores",
        "--out", gz, "--quiet")
    with open(gz, "rb") as f:
        check(f.read(2) == b"\x1f\x8b", "not gzip")
    check(read_jsonl(gz) == st, "gzip rows differ from the plain ones")
    print(f"  {len(st)} st rows, {len(tev)} tevatron rows checked against numpy")


def group_beir_inputs(tmp):
    """HF-style JSONL files give what --beir gives; --split; rows vs lines; unknown ids."""
    b = Beir(os.path.join(tmp, "b"))
    r = b.root
    o1, o2 = os.path.join(tmp, "a.jsonl"), os.path.join(tmp, "b.jsonl")
    run("mine", "--beir", r, "-k", 10, "-m", 3, "--format", "tevatron", "--out", o1, "--quiet")
    run("mine", "--queries", f"{r}/queries.jsonl", "--corpus", f"{r}/corpus.jsonl",
        "--queries-emb", f"{r}/queries.npy", "--corpus-emb", f"{r}/corpus.npy",
        "--qrels", f"{r}/qrels/test.tsv", "-k", 10, "-m", 3, "--format", "tevatron",
        "--out", o2, "--quiet")
    check(read_jsonl(o1) == read_jsonl(o2), "HF JSONL inputs differ from --beir")
    # embeddings elsewhere
    qe = os.path.join(tmp, "qe.npy")
    np.save(qe, b.Qe)
    o3 = os.path.join(tmp, "c.jsonl")
    run("mine", "--beir", r, "--queries-emb", qe, "-k", 10, "-m", 3, "--format", "tevatron",
        "--out", o3, "--quiet")
    check(read_jsonl(o3) == read_jsonl(o1), "--queries-emb differs")
    # --split dev: an id not in the corpus fails, naming the line; --skip-unknown-ids counts it
    o4 = os.path.join(tmp, "dev.jsonl")
    _, err = run("mine", "--beir", r, "--split", "dev", "-k", 10, "-m", 3, "--out", o4, expect=1)
    check("dev.tsv" in err and "line 3" in err and "not-a-doc" in err, f"unknown id: {err}")
    _, err = run("mine", "--beir", r, "--split", "dev", "-k", 10, "-m", 3, "--format", "flag",
                 "--out", o4, "--skip-unknown-ids")
    check("skipped 1 qrels lines" in err, err)
    rows = read_jsonl(o4)
    check(len(rows) == 1 and rows[0]["query"] == b.qtext[9] and rows[0]["pos"] == [b.passage(2)],
          f"dev rows {rows}")
    _, err = run("mine", "--beir", r, "--split", "train", "-k", 10, "--out", o4, "--force",
                 expect=1)
    check("qrels/train.tsv" in err, f"missing split: {err}")
    # rows of the embeddings must equal the lines of the JSONL
    np.save(qe, np.vstack([b.Qe, b.Qe[:1]]))
    _, err = run("mine", "--beir", r, "--queries-emb", qe, "-k", 10, "--out", o4, "--force",
                 expect=1)
    check("qe.npy has 11 query rows" in err and "queries.jsonl has 10 lines" in err, err)
    print("  HF JSONL == --beir; dev split; unknown ids; rows vs lines")


def gzip_file(path, keep=False):
    """path -> path.gz (mtime 0: the same bytes every run); the plain file removed."""
    import gzip
    with open(path, "rb") as f, gzip.GzipFile(path + ".gz", "wb", mtime=0) as g:
        g.write(f.read())
    if not keep:
        os.remove(path)
    return path + ".gz"


def group_beir_gzip_scores(tmp):
    """.jsonl.gz texts (--beir with NAME.gz, HF --queries/--corpus .jsonl.gz, qrels .tsv.gz)
    give the rows the plain files give; a truncated gzip is an error naming the file; tevatron
    rows carry each negative's score (and with --with-scores each positive's), against numpy."""
    b = Beir(os.path.join(tmp, "b"))
    r = b.root
    k, m = 10, 3
    plain = os.path.join(tmp, "plain.jsonl")
    run("mine", "--beir", r, "-k", k, "-m", m, "--format", "tevatron", "--with-scores",
        "--out", plain, "--quiet")
    rows = read_jsonl(plain)
    for row in rows:
        q = b.qid.index(row["query_id"])
        _, ref = b.ref_top(q, k, m)
        got = [p["score"] for p in row["negative_passages"]]
        check(np.allclose(got, [b.S[q, j] for j in ref], atol=1e-5),
              f"tevatron negative scores of {q}: {got}")
        pos = [p["score"] for p in row["positive_passages"]]
        check(np.allclose(pos, [b.S[q, p] for p in sorted(b.pos[q])], atol=1e-5),
              f"tevatron positive scores of {q}: {pos}")
    # without --with-scores: the negatives keep their scores, the positives have none
    nos = os.path.join(tmp, "noscores.jsonl")
    run("mine", "--beir", r, "-k", k, "-m", m, "--format", "tevatron", "--out", nos, "--quiet")
    for row, ref_row in zip(read_jsonl(nos), rows):
        check(all("score" not in p for p in row["positive_passages"]), "positive score")
        check(row["negative_passages"] == ref_row["negative_passages"], "negatives differ")
    # HF-style .jsonl.gz inputs
    qz = gzip_file(os.path.join(r, "queries.jsonl"), keep=True)
    cz = gzip_file(os.path.join(r, "corpus.jsonl"), keep=True)
    hf = os.path.join(tmp, "hf.jsonl")
    run("mine", "--queries", qz, "--corpus", cz, "--queries-emb", f"{r}/queries.npy",
        "--corpus-emb", f"{r}/corpus.npy", "--qrels", f"{r}/qrels/test.tsv", "-k", k, "-m", m,
        "--format", "tevatron", "--with-scores", "--out", hf, "--quiet")
    check(read_jsonl(hf) == rows, ".jsonl.gz inputs differ from the plain ones")
    # a BEIR folder that ships only NAME.gz
    os.remove(os.path.join(r, "queries.jsonl"))
    os.remove(os.path.join(r, "corpus.jsonl"))
    gzip_file(os.path.join(r, "qrels", "test.tsv"))
    bz = os.path.join(tmp, "beir_gz.jsonl")
    run("mine", "--beir", r, "-k", k, "-m", m, "--format", "tevatron", "--with-scores",
        "--out", bz, "--quiet")
    check(read_jsonl(bz) == rows, "--beir with .gz files differs")
    # truncated: refused, naming the file; nothing written
    with open(cz, "rb") as f:
        data = f.read()
    bad = os.path.join(tmp, "cut.jsonl.gz")
    with open(bad, "wb") as f:
        f.write(data[:len(data) // 2])
    out = os.path.join(tmp, "cut_out.jsonl")
    _, err = run("mine", "--queries", qz, "--corpus", bad, "--queries-emb", f"{r}/queries.npy",
                 "--corpus-emb", f"{r}/corpus.npy", "--qrels", f"{r}/qrels/test.tsv.gz",
                 "-k", k, "--out", out, expect=1)
    check("cut.jsonl.gz" in err and "truncated" in err, f"truncated gzip: {err}")
    check(not os.path.exists(out), "an output was written for a truncated input")
    print(f"  {len(rows)} tevatron rows with scores; .gz inputs == plain; truncated refused")


def group_beir_parquet(tmp):
    """python -m negsamp.parquet: HF-style Parquet --queries/--corpus/--qrels and --out
    FILE.parquet give the rows of the JSONL run (read back with pyarrow), the sidecar names the
    Parquet inputs; an existing output is kept without --force."""
    import subprocess
    py = PYTHON
    if subprocess.call([py, "-c", "import pyarrow"], stderr=subprocess.DEVNULL) != 0:
        print(f"  SKIP: {py} has no pyarrow")
        return
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.path.join(repo, "python"))
    b = Beir(os.path.join(tmp, "b"))
    r = b.root
    k, m = 10, 3
    conv = os.path.join(tmp, "convert.py")
    with open(conv, "w") as f:  # the HF layout: Parquet with _id / title / text columns
        f.write("import json, sys, pyarrow as pa, pyarrow.parquet as pq\n"
                "src, dst, kind = sys.argv[1:]\n"
                "if kind == 'qrels':\n"
                "    rows = [l.rstrip('\\n').split('\\t') for l in open(src)][1:]\n"
                "    t = pa.table({'query-id': [r[0] for r in rows], 'corpus-id': [r[1] for r "
                "in rows], 'score': [int(r[2]) for r in rows]})\n"
                "elif kind == 'table':\n"
                "    t = pq.read_table(src); print(json.dumps(t.to_pylist())); sys.exit(0)\n"
                "else:\n"
                "    rows = [json.loads(l) for l in open(src, encoding='utf-8')]\n"
                "    t = pa.table({'_id': [r['_id'] for r in rows], 'title': [r.get('title', '')"
                " for r in rows], 'text': [r['text'] for r in rows]})\n"
                "pq.write_table(t, dst)\n")
    for name, kind in (("queries", "texts"), ("corpus", "texts"), ("qrels", "qrels")):
        src = f"{r}/qrels/test.tsv" if kind == "qrels" else f"{r}/{name}.jsonl"
        subprocess.check_call([py, conv, src, os.path.join(tmp, f"{name}.parquet"), kind])
    common = ["-k", k, "-m", m, "--queries-emb", f"{r}/queries.npy", "--corpus-emb",
              f"{r}/corpus.npy", "--quiet"]
    for fmt in ("st", "tevatron"):  # flat columns; lists of structs
        ref = os.path.join(tmp, f"{fmt}.jsonl")
        run("mine", "--queries", f"{r}/queries.jsonl", "--corpus", f"{r}/corpus.jsonl",
            "--qrels", f"{r}/qrels/test.tsv", "--format", fmt, "--out", ref, *common)
        out = os.path.join(tmp, f"{fmt}.parquet")
        cmd = [py, "-m", "negsamp.parquet", "--negsamp", cli_harness.NEGSAMP, "mine",
               "--queries", os.path.join(tmp, "queries.parquet"),
               "--corpus", os.path.join(tmp, "corpus.parquet"),
               "--qrels", os.path.join(tmp, "qrels.parquet"), "--format", fmt,
               "--out", out, *map(str, common)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        check(p.returncode == 0, f"negsamp.parquet {fmt}: {p.returncode} {p.stderr[-2000:]}")
        got = json.loads(subprocess.check_output([py, conv, out, "-", "table"]))
        check(got == read_jsonl(ref), f"{fmt}: Parquet rows differ from the JSONL run")
        prov = json.load(open(out + ".provenance.json"))
        flags = {i["flag"]: i for i in prov["parquet"]["inputs"]}
        check(set(flags) == {"--queries", "--corpus", "--qrels"}, f"provenance {flags}")
        check(flags["--corpus"]["xxh64"] == xxh64_file(os.path.join(tmp, "corpus.parquet")),
              "provenance hash of the Parquet corpus")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    check(p.returncode == 1 and "exists" in p.stderr, f"existing output: {p.stderr}")
    # without --quiet the last line names the Parquet output (it named the temporary JSONL)
    loud = [a for a in cmd if a != "--quiet"] + ["--force"]
    p = subprocess.run(loud, env=env, capture_output=True, text=True, timeout=180)
    check(p.returncode == 0 and p.stderr.rstrip().splitlines()[-1] ==
          f"negsamp.parquet: wrote {len(read_jsonl(ref))} rows to {out}", f"summary: {p.stderr}")
    print("  st / tevatron Parquet == JSONL; provenance names the Parquet inputs")


def write(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def group_beir_bad_inputs(tmp):
    """Every malformed JSONL line is refused with FILE:LINE: column C: problem (exit 1);
    flags that do not go together are usage errors (exit 2)."""
    b = Beir(os.path.join(tmp, "b"))
    r = b.root
    corpus = os.path.join(r, "corpus.jsonl")
    with open(corpus, encoding="utf-8") as f:
        good = f.read().splitlines(keepends=True)
    out = os.path.join(tmp, "o.jsonl")
    cases = [
        ('{"_id": "x", "text": "a\\ud800"}\n', "lone high surrogate", "high surrogate"),
        ('{"_id": "x", "text": "\\udc00"}\n', "lone low surrogate", "low surrogate"),
        ('{"_id": "x", "text": "a\tb"}\n', "raw tab", "control character"),
        ('{"_id": "x", "text": "\\q"}\n', "bad escape", "unknown escape"),
        ('{"_id": "x", "text": "\\u00"}\n', "short \\u", "4 hex digits"),
        ('{"_id": "x", "text": "\\u0000"}\n', "NUL", "NUL"),
        ('{"_id": "x", "text": "abc}\n', "unclosed", "not closed"),
        ('{"_id": "x", "text": "a"} junk\n', "trailing", "after the end"),
        ('{"_id": "x", "text": "a",}\n', "trailing comma", "expected a key"),
        ('{"_id": "x" "text": "a"}\n', "missing comma", "expected ','"),
        ('{"_id": "x", "text": 01}\n', "leading zero", "expected ','"),
        ('{"_id": "x", "_id": "y", "text": "a"}\n', "duplicate key", "appears twice"),
        ('{"_id": "x"}\n', "no text", "no \"text\""),
        ('{"text": "a"}\n', "no id", "no \"_id\""),
        ('{"_id": "", "text": "a"}\n', "empty id", "empty"),
        ('{"_id": "x", "text": 3}\n', "number text", "not a string"),
        ('{"_id": "x", "text": "a", "m": ' + "[" * 70 + "]" * 70 + "}\n", "deep", "nested"),
        ('["x"]\n', "array", "JSON object"),
        ('{"_id": "doc-0", "text": "a"}\n', "duplicate id", "appears twice"),
    ]
    for line, what, needle in cases:
        write(corpus, "".join(good[:2]) + line + "".join(good[3:]))
        _, err = run("mine", "--beir", r, "-k", 5, "-m", 2, "--out", out, expect=1)
        check(f"corpus.jsonl:3:" in err or ("duplicate" in what and "line 3" in err),
              f"{what}: no file:line in {err!r}")
        check(needle in err, f"{what}: expected {needle!r} in {err!r}")
        check(not os.path.exists(out), f"{what}: output written")
    # invalid UTF-8 bytes in a line
    with open(corpus, "wb") as f:
        f.write("".join(good[:2]).encode() + b'{"_id": "x", "text": "\xc3\x28"}\n')
    _, err = run("mine", "--beir", r, "-k", 5, "-m", 2, "--out", out, expect=1)
    check("corpus.jsonl:3:" in err and "UTF-8" in err, err)
    write(corpus, "".join(good))
    # CRLF, a BOM and blank lines are fine
    write(corpus, "\ufeff" + "".join(g.replace("\n", "\r\n") for g in good) + "\n\n")
    run("mine", "--beir", r, "-k", 5, "-m", 2, "--out", out, "--quiet")
    os.unlink(out)
    os.unlink(out + ".provenance.json")
    write(corpus, "".join(good))
    usage = [
        (["--beir", r, "--queries", f"{r}/queries.npy"], "--queries-emb"),
        (["--beir", r, "--query-ids", corpus], "--query-ids"),
        (["--split", "test", "--queries", f"{r}/queries.npy", "--corpus", f"{r}/corpus.npy"],
         "--split needs --beir"),
        (["--queries", f"{r}/queries.npy", "--corpus", f"{r}/corpus.npy", "--format", "flag"],
         "--format flag"),
        (["--queries", f"{r}/queries.npy", "--corpus", f"{r}/corpus.npy", "--queries-emb",
          f"{r}/queries.npy"], "--queries-emb"),
        (["--queries", f"{r}/queries.jsonl", "--corpus", f"{r}/corpus.npy"], "both JSONL"),
        (["--queries", f"{r}/queries.jsonl", "--corpus", f"{r}/corpus.jsonl"], "--queries-emb"),
        (["--beir", r, "--split", "../x"], "--split"),
        (["--beir", r, "--with-scores"], "--with-scores"),
    ]
    for args, needle in usage:
        _, err = run("mine", *args, "-k", 5, "-m", 2, "--out", out, expect=2)
        check(needle in err, f"{args}: expected {needle!r} in {err!r}")
    print(f"  {len(cases) + 1} malformed lines, {len(usage)} usage errors")


def group_beir_provenance(tmp):
    """The sidecar records version, argv, seed, rules, sampler, k, m, split and each input's
    size and XXH64 (xxh64_ref.py); an existing sidecar needs --force."""
    b = Beir(os.path.join(tmp, "b"))
    out = os.path.join(tmp, "o.jsonl.gz")
    args = ["mine", "--beir", b.root, "-k", 9, "-m", 3, "--sampler", "simans", "--seed", 42,
            "--margin", "0.05", "--max-score", "3.5", "--format", "st", "--out", out, "--quiet"]
    run(*args)
    p = json.load(open(out + ".provenance.json"))
    check(p["argv"] == ["negsamp"] + [str(a) for a in args], f"argv {p['argv']}")
    check(p["seed"] == 42 and p["k"] == 9 and p["m"] == 3 and p["split"] == "test", str(p))
    check(p["sampler"]["strategy"] == "simans" and p["sampler"]["simans_a"] == 0.5, str(p))
    check(abs(p["filter"]["margin"] - 0.05) < 1e-7 and p["filter"]["max_score"] == 3.5 and
          p["filter"]["same_id"] is True, f"filter {p['filter']}")
    check(p["format"] == "st" and p["beir"] == b.root, str(p))
    out_rows = len(read_jsonl(out))
    check(p["rows_written"] == out_rows, f"rows_written {p['rows_written']} != {out_rows}")
    ver, _ = run("--version")
    check(ver.split()[1] == p["negsamp_version"], f"version {ver} {p['negsamp_version']}")
    files = {i["path"]: i for i in p["inputs"]}
    for name in ("queries.npy", "corpus.npy", "queries.jsonl", "corpus.jsonl", "qrels/test.tsv"):
        path = os.path.join(b.root, name)
        check(path in files, f"{name} not in the provenance inputs {list(files)}")
        check(files[path]["bytes"] == os.path.getsize(path), f"{name} size")
        check(files[path]["xxh64"] == xxh64_file(path), f"{name} hash")
    _, err = run(*args, expect=1)
    check("exists" in err, err)
    os.unlink(out)
    _, err = run(*args, expect=1)  # the sidecar alone still there
    check("provenance.json" in err and "exists" in err, err)
    run(*args, "--force")
    print(f"  {len(files)} inputs hashed; sidecar refused without --force")


def group_beir_trace(tmp):
    """--trace: candidates and scores are numpy's top-k; decisions are the margin rule,
    same-id and the sampled ones, recomputed here."""
    b = Beir(os.path.join(tmp, "b"))
    pre = os.path.join(tmp, "tr")
    k, m, margin = 15, 4, 0.3
    run("mine", "--beir", b.root, "-k", k, "-m", m, "--margin", margin, "--no-same-id",
        "--format", "st", "--out", os.path.join(tmp, "o.jsonl"), "--trace", pre, "--quiet")
    cand = np.load(pre + ".candidates.npy")
    sc = np.load(pre + ".scores.npy")
    dec = np.load(pre + ".decisions.npy")
    ps = np.load(pre + ".positive_score.npy")
    # only the queries with a positive in the split are mined (q8, q9 have none), in file order
    qids = open(pre + ".query_ids.txt").read().split()
    check(qids == [b.qid[q] for q in sorted(b.pos)], f"trace query ids {qids}")
    check(open(pre + ".corpus_ids.txt").read().split() == b.cid, "trace corpus ids")
    check(cand.shape == (8, k) and dec.dtype == np.int32 and ps.shape == (8,), "trace shapes")
    for q in range(8):
        order = np.argsort(-b.S[q], kind="stable")[:k]
        check(list(cand[q]) == list(order), f"query {q}: candidates {cand[q]} {order}")
        check(np.allclose(sc[q], b.S[q, order], atol=1e-5), f"query {q}: scores")
        if q not in b.pos:
            check(np.isnan(ps[q]) and not dec[q].any(), f"query {q} without positive")
            continue
        sp = min(b.S[q, p] for p in b.pos[q])
        check(abs(ps[q] - sp) < 1e-5, f"s+ of {q}")
        removed = sc[q] > np.float32(ps[q]) - np.float32(margin)
        check(list((dec[q] & 8) != 0) == list(removed), f"query {q}: margin bits {dec[q]}")
        check(list((dec[q] & 256) != 0) == list(~removed), f"query {q}: kept bits")
        sampled = [j for j in range(k) if dec[q, j] & 512]
        check(sampled == [j for j in range(k) if not removed[j]][:m], f"query {q}: sampled")
    # --out-index rows follow the same queries; no query with a positive: a clear error
    oi = os.path.join(tmp, "idx.npy")
    _, err = run("mine", "--beir", b.root, "-k", k, "-m", m, "--out-index", oi)
    check("2 queries without a positive" in err, err)
    idx = np.load(oi)
    check(idx.shape == (8, m) and all(list(idx[q]) == b.ref_top(q, k, m)[1] for q in range(8)),
          f"--out-index rows {idx}")
    with open(os.path.join(b.root, "qrels", "none.tsv"), "w") as f:
        f.write("q1\tdoc-3\t0\n")
    _, err = run("mine", "--beir", b.root, "--split", "none", "-k", k, "-m", m, "--out-index", oi,
                 "--force", expect=1)
    check("none.tsv" in err and "no positive" in err, err)
    print("  trace of 8 queries x 15 candidates recomputed; --out-index rows")


def check_png(path):
    """Signature, IHDR size, every chunk's CRC (zlib.crc32), IDAT inflating to the pixels."""
    data = open(path, "rb").read()
    check(data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: PNG signature")
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        crc, = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        check(zlib.crc32(typ + body) & 0xFFFFFFFF == crc, f"{path}: CRC of {typ}")
        chunks.append(typ)
        if typ == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
        if typ == b"IDAT":
            idat += body
        pos += 12 + n
    check(chunks[0] == b"IHDR" and chunks[-1] == b"IEND", f"{path}: chunks {chunks}")
    check(depth == 8 and color == 2, f"{path}: not 8-bit RGB")
    raw = zlib.decompress(idat)
    check(len(raw) == h * (3 * w + 1), f"{path}: {len(raw)} bytes for {w}x{h}")
    return w, h


def png_pixels(path):
    """The RGB pixels (h, w, 3) of an 8-bit RGB PNG with filter type 0 rows (negsamp's)."""
    data = open(path, "rb").read()
    pos, idat = 8, b""
    while pos < len(data):
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        if typ == b"IHDR":
            w, h = struct.unpack(">II", data[pos + 8:pos + 16])
        if typ == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 3 * w + 1)
    check((raw[:, 0] == 0).all(), f"{path}: a row filter other than none")
    return raw[:, 1:].reshape(h, w, 3)


def check_png_labels(path):
    """The plot is labelled: black text in the title band (top), the x-label band (bottom),
    the y-label strip (left edge) and the y tick values left of the axis (x = 66)."""
    px = png_pixels(path)
    h, w, _ = px.shape
    ink = (px.max(axis=2) < 40)  # black text; the bars and grid are coloured or grey
    for name, region in (("title", ink[:12, :]), ("x label", ink[h - 13:, :]),
                         ("y label", ink[20:h - 40, :13]), ("y ticks", ink[20:h - 40, 16:58])):
        check(region.sum() > 20, f"{path}: no {name} drawn ({int(region.sum())} ink pixels)")


def ref_inspect(pre, qrels_pos, eps):
    """summary.json recomputed with numpy from the trace and the labels (query row -> rows)."""
    cand = np.load(pre + ".candidates.npy")
    sc = np.load(pre + ".scores.npy").astype(np.float64)
    dec = np.load(pre + ".decisions.npy").astype(np.int64)
    ps = np.load(pre + ".positive_score.npy").astype(np.float64)
    B, k = cand.shape
    valid = np.isfinite(ps)
    live = (cand >= 0) & (dec != 0)
    kept = live & (dec & 256 != 0)
    samp = live & (dec & 512 != 0)
    filt = live & ~(dec & 256 != 0)
    lab = np.array([[cand[q, j] in qrels_pos.get(q, ()) for j in range(k)] for q in range(B)])
    multi = np.array([len(qrels_pos.get(q, ())) >= 2 for q in range(B)])[:, None] & np.ones((B, k), bool)
    near = np.isfinite(ps)[:, None] & (sc >= ps[:, None] - np.float64(np.float32(eps)))
    r = {"candidates": int(live.sum()), "kept": int(kept.sum()), "removed": int(filt.sum()),
         "sampled": int(samp.sum()), "with_positive": int(valid.sum()),
         "near_duplicates_sampled": int((samp & near).sum()),
         "near_duplicates_kept": int((kept & near).sum())}
    names = ["same-id", "max-score", "min-score", "margin", "rel-margin", "rank", "guide-margin",
             "guide-rel-margin"]
    r["removed_by_rule"] = {n: int((filt & (dec >> b & 1 == 1)).sum()) for b, n in enumerate(names)}
    r["labels"] = {"sampled_labelled": int((samp & lab).sum()), "kept_labelled": int((kept & lab).sum()),
                   "multi_positive_queries": int(multi[:, 0].sum()),
                   "multi_sampled": int((samp & multi).sum()),
                   "multi_sampled_labelled": int((samp & multi & lab).sum())}
    ranks = {"1": 0, "2-3": 0, "4-10": 0, "11-k": 0, "> k": 0}
    mrr = 0.0
    for q in np.nonzero(valid)[0]:
        filled = cand[q] >= 0
        above = int(((sc[q] > ps[q]) & filled).sum())
        rk = above + 1
        if above == filled.sum() == k:
            ranks["> k"] += 1
            continue
        ranks["1" if rk == 1 else "2-3" if rk <= 3 else "4-10" if rk <= 10 else "11-k"] += 1
        mrr += 1 / rk
    r["rank"] = ranks
    r["mrr_at_k"] = mrr / max(1, valid.sum())
    vals = np.concatenate([sc[live], ps[valid]])
    lo, hi = vals.min(), vals.max()
    def hist(v):
        b = np.clip(np.floor((v - lo) / (hi - lo) * 24).astype(int), 0, 23)
        return list(np.bincount(b, minlength=24))
    r["histogram"] = {"lo": lo, "hi": hi, "positives": hist(ps[valid]), "kept": hist(sc[kept]),
                      "sampled": hist(sc[samp]), "filtered": hist(sc[filt])}
    return r


def group_beir_inspect(tmp):
    """negsamp inspect: its numbers against numpy on the trace, the PNGs valid, the report."""
    b = Beir(os.path.join(tmp, "b"), N=80, Q=24)
    # labels: the test qrels plus a second relevant document for some queries (the run knows
    # only the test split, so those can be sampled as negatives: false negatives)
    full = os.path.join(tmp, "full.tsv")
    with open(full, "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        extra = {}
        for q, ps in b.pos.items():
            for p in ps:
                f.write(f"{b.qid[q]}\t{b.cid[p]}\t1\n")
            top = [j for j in np.argsort(-b.S[q]) if j not in ps][:2]
            extra[q] = top[q % 2]
            f.write(f"{b.qid[q]}\t{b.cid[extra[q]]}\t1\n")
    labels = {q: set(ps) | {extra[q]} for q, ps in b.pos.items()}
    for name, args in [("plain", ["--sampler", "top"]),
                       ("rules", ["--margin", "0.2", "--max-score", "3", "--rank-min", "1",
                                  "--sampler", "simans", "--seed", "7"])]:
        pre = os.path.join(tmp, f"tr-{name}")
        out = os.path.join(tmp, f"{name}.jsonl")
        run("mine", "--beir", b.root, "-k", 20, "-m", 5, *args, "--format", "tevatron",
            "--out", out, "--trace", pre, "--quiet")
        rep = os.path.join(tmp, f"rep-{name}")
        eps = 0.25
        so, _ = run("inspect", "--run", out, "--qrels", full, "--epsilon", eps, "--report", rep)
        check("removed by rule" in so and "rank of the positive" in so and
              len(so.splitlines()) <= 24, f"terminal summary:\n{so}")
        got = json.load(open(os.path.join(rep, "summary.json")))
        want = ref_inspect(pre, labels, eps)
        for key in ("candidates", "kept", "removed", "sampled", "with_positive",
                    "near_duplicates_sampled", "near_duplicates_kept", "removed_by_rule", "rank"):
            check(got[key] == want[key], f"{name}: {key}: {got[key]} != {want[key]}")
        for key, v in want["labels"].items():
            check(got["labels"][key] == v, f"{name}: labels.{key}: {got['labels'][key]} != {v}")
        check(abs(got["mrr_at_k"] - want["mrr_at_k"]) < 1e-9, f"{name}: mrr")
        for key in ("positives", "kept", "sampled", "filtered"):
            check(got["histogram"][key] == want["histogram"][key],
                  f"{name}: histogram {key}: {got['histogram'][key]} != {want['histogram'][key]}")
        check(abs(got["histogram"]["lo"] - want["histogram"]["lo"]) < 1e-6, "histogram lo")
        md = open(os.path.join(rep, "report.md")).read()
        for png, size in (("scores.png", (640, 370)), ("ranks.png", (480, 330)),
                          ("rules.png", (480, 330))):
            check(f"]({png})" in md, f"report.md does not show {png}")
            check(check_png(os.path.join(rep, png)) == size, f"{png} size")
            check_png_labels(os.path.join(rep, png))
        if name == "plain":
            check(got["labels"]["sampled_labelled"] > 0, "no false negative found in the plain run")
        else:
            check(got["removed_by_rule"]["margin"] > 0 and got["removed_by_rule"]["rank"] > 0,
                  f"rules removed nothing: {got['removed_by_rule']}")
        print(f"  {name}: {got['sampled']} sampled, {got['labels']['sampled_labelled']} labelled "
              f"positives among them, rules {got['removed_by_rule']}")
    # a `sample` run without positives: candidates kept and sampled, no ranks
    rng = np.random.default_rng(5)
    ci, cs = os.path.join(tmp, "ci.npy"), os.path.join(tmp, "cs.npy")
    np.save(ci, np.array([[3, 1, 4, -1], [0, 2, 5, 6], [7, 8, 9, 1]], np.int64))
    np.save(cs, rng.standard_normal((3, 4)).astype(np.float32))
    spre = os.path.join(tmp, "tr-sample")
    run("sample", "--candidates", ci, "--scores", cs, "-m", 2, "--max-score", "1.0",
        "--out", os.path.join(tmp, "s.jsonl"), "--trace", spre, "--quiet")
    srep = os.path.join(tmp, "rep-sample")
    run("inspect", "--trace", spre, "--report", srep, "--quiet")
    got = json.load(open(os.path.join(srep, "summary.json")))
    want = ref_inspect(spre, {}, 0.01)
    for key in ("candidates", "kept", "removed", "sampled", "with_positive", "removed_by_rule",
                "rank"):
        check(got[key] == want[key], f"sample run: {key}: {got[key]} != {want[key]}")
    check(got["candidates"] == 11 and got["with_positive"] == 0, f"sample run: {got}")
    for key in ("kept", "sampled", "filtered"):
        check(got["histogram"][key] == want["histogram"][key], f"sample run: histogram {key}")
    # a relative --trace, inspected from another working directory: the provenance names the
    # trace by its absolute path (it kept the relative one, which inspect then did not find)
    import subprocess
    sub = os.path.join(tmp, "rel")
    os.makedirs(sub)
    p = subprocess.run([cli_harness.NEGSAMP, "mine", "--beir", b.root, "-k", "20", "-m", "5",
                        "--out", "rel.jsonl", "--trace", "rt", "--quiet"], cwd=sub,
                       capture_output=True, text=True, timeout=180)
    check(p.returncode == 0, f"mine in {sub}: {p.stderr}")
    prov = json.load(open(os.path.join(sub, "rel.jsonl.provenance.json")))
    check(prov["trace"] == os.path.join(os.path.realpath(sub), "rt") or
          prov["trace"] == os.path.join(sub, "rt"), f"provenance trace {prov['trace']}")
    p = subprocess.run([cli_harness.NEGSAMP, "inspect", "--run", os.path.join(sub, "rel.jsonl")],
                       cwd="/", capture_output=True, text=True, timeout=180)
    check(p.returncode == 0 and "rank of the positive" in p.stdout,
          f"inspect from /: {p.returncode} {p.stderr}")
    # the same through --trace; a run without a trace; an existing report needs --force
    run("inspect", "--trace", pre, "--quiet", "--report", rep, "--force")
    _, err = run("inspect", "--trace", pre, "--report", rep, expect=1)
    check("exists" in err, err)
    out2 = os.path.join(tmp, "notrace.jsonl")
    run("mine", "--beir", b.root, "-k", 20, "-m", 5, "--out", out2, "--quiet")
    _, err = run("inspect", "--run", out2, expect=1)
    check("no trace" in err and "provenance.json" in err, err)
    _, err = run("inspect", "--run", out2, "--trace", pre, expect=2)
    check("one of --run" in err, err)


GROUPS = {name[6:]: fn for name, fn in globals().items() if name.startswith("group_")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--negsamp", required=True)
    ap.add_argument("--group", action="append", choices=sorted(GROUPS))
    ap.add_argument("--python", default=sys.executable,
                    help="the Python that runs negsamp.parquet (needs pyarrow)")
    a = ap.parse_args()
    global PYTHON
    PYTHON = a.python
    return cli_harness.run_groups(a.negsamp, GROUPS, a.group, "negsamp-beir")


if __name__ == "__main__":
    sys.exit(main())
