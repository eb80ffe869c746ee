#!/usr/bin/env python3
"""End-to-end tests of `negsamp mine` across MPI ranks and of --checkpoint (resume).

Each group runs as its own ctest (cli_<group>, registered in tools/CMakeLists.txt):
    python3 tests/cli/test_ranks.py --negsamp BUILD/tools/negsamp [--mpiexec mpirun] --group resume
Groups:
  ranks       mpirun -np 2, 3 and 4 write the same bytes as one process (JSONL, .npy index and
              scores) on data with ties across shards, k larger than a shard and exclusions
              (positives), through both merges (blocks of 8 queries: sharded; --batch 2 on 3
              and 4 ranks: all-gathered); the one-process top-k equals a float64 brute force
              (ties to the lower row); each rank's default CPU threads are the node's cores
              over its ranks (--threads and OMP_NUM_THREADS still override). Needs --mpiexec
              (skipped, exit 77, without it).
  forced      one process forced onto the multi-rank path (NS_CLI_TEST_FORCE_RANKS=1: MPI as a
              singleton, a communicator of one rank, the sharded merge) writes the same bytes as
              a plain run; with --backend cuda (--cuda) the communicator is NCCL (the host
              execution layer's one-rank NCCL in a -DNS_CUDA_HOST=ON build). Needs a build
              with MPI (--mpiexec given); --cuda skips (77) where no CUDA device is usable.
  resume      a run killed (SIGKILL) or interrupted (SIGINT) after some blocks resumes from its
              checkpoint without mining those blocks again and writes the same bytes as an
              uninterrupted run; a torn last record is dropped; a checkpoint of other inputs or
              options is refused naming the difference; a checkpoint path that is an input, or a
              file that is not a checkpoint, is refused. With --mpiexec also: killed as one
              process, resumed with -np 2.
The kill is real: NS_CLI_TEST_KILL_AFTER_BLOCKS=N makes negsamp raise the signal on itself
right after its N-th block reached the checkpoint (a deterministic point, no timing).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

NEGSAMP = None
MPIEXEC = None
CUDA = False
# As tests/mpi/CMakeLists.txt: root in CI, oversubscribed 2-core machines, containers.
MPI_ENV = {"OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1",
           "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
           "OMP_NUM_THREADS": "1"}


class Failure(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def run(args, expect=0, env=None, ranks=1, timeout=120, unset=(), launcher=()):
    """Runs negsamp (under mpiexec with ranks > 1, with the launcher options given); checks the
    exit status; returns stderr. unset: environment variables removed."""
    cmd = [NEGSAMP, *map(str, args)]
    if ranks > 1:
        cmd = [MPIEXEC, "--oversubscribe", "--allow-run-as-root", *launcher, "-np", str(ranks),
               *cmd]
    e = {**os.environ, **MPI_ENV, **(env or {})}
    for name in unset:
        e.pop(name, None)
    if ranks > 1:  # Open MPI's own allocations are never freed (as tests/mpi/CMakeLists.txt)
        e["ASAN_OPTIONS"] = e.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    if expect is not None and p.returncode != expect:
        raise Failure(f"{' '.join(cmd)}\n  exit {p.returncode}, expected {expect}\n"
                      f"  stderr: {p.stderr[-3000:]}")
    return p.stderr


def make_data(tmp, n=61, q=37, d=8):
    """Small-integer embeddings (exact scores, many ties); rows 40.. repeat rows 0.. so equal
    scores come from different shards; positives: query i's is corpus row i (--paired)."""
    rng = np.random.default_rng(7)
    c = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    c[40:55] = c[0:15]
    qs = rng.integers(-2, 3, size=(q, d)).astype(np.float32)
    np.save(os.path.join(tmp, "c.npy"), c)
    np.save(os.path.join(tmp, "q.npy"), qs)
    return qs, c


def mine_args(tmp, prefix, k=25, extra=()):
    return ["mine", "--queries", f"{tmp}/q.npy", "--corpus", f"{tmp}/c.npy", "--paired",
            "-k", k, "-m", 6, "--sampler", "uniform", "--seed", 3, "--batch", 8,
            "--backend", "cpu", "--threads", 1, "--quiet",
            "--out", f"{tmp}/{prefix}.jsonl", "--out-index", f"{tmp}/{prefix}_i.npy",
            "--out-score", f"{tmp}/{prefix}_s.npy", *extra]


def outputs(tmp, prefix):
    return [f"{tmp}/{prefix}.jsonl", f"{tmp}/{prefix}_i.npy", f"{tmp}/{prefix}_s.npy"]


def same_bytes(tmp, a, b):
    for x, y in zip(outputs(tmp, a), outputs(tmp, b)):
        with open(x, "rb") as f, open(y, "rb") as g:
            check(f.read() == g.read(), f"{y} differs from {x}")


def ref_topk(q, c, k, exclude_diag):
    s = q.astype(np.float64) @ c.astype(np.float64).T
    if exclude_diag:
        s[np.arange(q.shape[0]), np.arange(q.shape[0])] = -np.inf
    idx = np.stack([np.lexsort((np.arange(c.shape[0]), -row))[:k] for row in s])
    return idx, np.take_along_axis(s, idx, 1)


def need_mpi():
    if not MPIEXEC:
        raise Skip("no --mpiexec (built without MPI)")


# ---------------------------------------------------------------- groups

def group_ranks(tmp):
    need_mpi()
    q, c = make_data(tmp)
    run(mine_args(tmp, "one"))
    for r in (2, 3, 4):  # 3 ranks: shards of 21, 20, 20 rows < k = 25; 4: 16, 15, 15, 15
        run(mine_args(tmp, f"r{r}"), ranks=r)
        same_bytes(tmp, "one", f"r{r}")
    # Blocks of 2 queries: fewer than 3 or 4 ranks, so the all-gather merge; the same bytes.
    small = ["--batch", 2]
    run(mine_args(tmp, "one_b2", extra=small))
    for r in (3, 4):
        run(mine_args(tmp, f"r{r}_b2", extra=small), ranks=r)
        same_bytes(tmp, "one_b2", f"r{r}_b2")
    # The merged top-k itself: -m = k with the top sampler writes the mined lists in order.
    top = ["--sampler", "top", "-m", 25]
    args = mine_args(tmp, "top2") + top
    run(args, ranks=2)
    idx = np.load(f"{tmp}/top2_i.npy")
    ref, ref_s = ref_topk(q, c, 25, exclude_diag=True)
    check(np.array_equal(idx, ref), f"-np 2 top-k differs from the brute force:\n{idx[:3]}\n{ref[:3]}")
    check(np.array_equal(np.load(f"{tmp}/top2_s.npy"), ref_s.astype(np.float32)), "scores differ")
    # Ties across shards did happen (equal scores from rows on both sides of the split at 31).
    ties = sum(1 for i in range(q.shape[0]) for j in range(1, 25)
               if ref_s[i, j] == ref_s[i, j - 1] and (ref[i, j] < 31) != (ref[i, j - 1] < 31))
    check(ties > 0, "the data has no tie across the two shards")
    rank_threads(tmp)


def rank_threads(tmp):
    """Each rank's CPU threads: by default the node's cores over the ranks on it (at least 1;
    unbound ranks, so no launcher binding caps it), else --threads, else OMP_NUM_THREADS; as
    rank 0 reports it."""
    args = [a for a in mine_args(tmp, "threads", extra=["--force"]) if a != "--quiet"]
    at = args.index("--threads")
    plain = args[:at] + args[at + 2:]
    cores = os.cpu_count()
    unbound = ("--bind-to", "none")
    for r in (2, 4):
        err = run(plain, ranks=r, unset=("OMP_NUM_THREADS",), launcher=unbound)
        want = (f"{max(1, cores // r)} CPU thread(s) per rank (the node's {cores} cores over its "
                f"{r} rank(s)")
        check(want in err, f"-np {r}: expected '{want}' in:\n{err[-2000:]}")
        same_bytes(tmp, "one", "threads")
    err = run(plain + ["--threads", 3], ranks=2, launcher=unbound, env={"OMP_NUM_THREADS": "2"})
    check("3 CPU thread(s) per rank (--threads)" in err, err[-2000:])
    err = run(plain, ranks=2, launcher=unbound, env={"OMP_NUM_THREADS": "2"})
    check("2 CPU thread(s) per rank (OMP_NUM_THREADS)" in err, err[-2000:])


def group_resume(tmp):
    make_data(tmp)
    ck = f"{tmp}/run.ckpt"
    run(mine_args(tmp, "full"))
    # SIGKILL after 2 of 5 blocks: no output, the checkpoint holds 2 blocks.
    run(mine_args(tmp, "res", extra=["--checkpoint", ck]), expect=-9,
        env={"NS_CLI_TEST_KILL_AFTER_BLOCKS": "2"})
    check(os.path.exists(ck) and not os.path.exists(f"{tmp}/res.jsonl"), "state after the kill")
    # A mismatched resume is refused, naming what differs, and leaves the checkpoint alone.
    err = run(mine_args(tmp, "res", k=24, extra=["--checkpoint", ck]), expect=1)
    check('"k 25" but this run has "k 24"' in err, err)
    c2 = np.load(f"{tmp}/c.npy")
    c2[5, 0] += 1
    np.save(f"{tmp}/c2.npy", c2)
    bad = mine_args(tmp, "res", extra=["--checkpoint", ck])
    bad[bad.index(f"{tmp}/c.npy")] = f"{tmp}/c2.npy"
    err = run(bad, expect=1)
    check("other inputs" in err and "--corpus" in err, err)
    # Resume: the 2 blocks are read back, not mined; the bytes are those of the full run.
    err = run([a for a in mine_args(tmp, "res", extra=["--checkpoint", ck]) if a != "--quiet"])
    check("2 finished block(s) read back" in err, err)
    same_bytes(tmp, "full", "res")
    check(not os.path.exists(ck), "the checkpoint outlived the committed outputs")
    # Ctrl-C (SIGINT) after 3 blocks: temporaries removed, the checkpoint kept; then a torn
    # last record (a kill during its write) is dropped and that block mined again.
    run(mine_args(tmp, "int", extra=["--checkpoint", ck]), expect=-2,
        env={"NS_CLI_TEST_KILL_AFTER_BLOCKS": "3", "NS_CLI_TEST_KILL_SIGNAL": "INT"})
    check(not [f for f in os.listdir(tmp) if "negsamp-tmp" in f and "int" in f],
          f"temporaries left after SIGINT: {os.listdir(tmp)}")
    with open(ck, "r+b") as f:
        f.truncate(os.path.getsize(ck) - 5)
    err = run([a for a in mine_args(tmp, "int", extra=["--checkpoint", ck]) if a != "--quiet"])
    check("2 finished block(s) read back" in err, err)
    same_bytes(tmp, "full", "int")
    # A checkpoint path that is an input, or an existing file that is not a checkpoint.
    err = run(mine_args(tmp, "x", extra=["--checkpoint", f"{tmp}/q.npy"]), expect=2)
    check("--checkpoint" in err, err)
    with open(f"{tmp}/notes.txt", "w") as f:
        f.write("my notes\n")
    err = run(mine_args(tmp, "x", extra=["--checkpoint", f"{tmp}/notes.txt"]), expect=1)
    check("not a negsamp mine checkpoint" in err, err)
    check(open(f"{tmp}/notes.txt").read() == "my notes\n", "a foreign file was changed")
    if MPIEXEC:  # killed as one process, resumed on 2 ranks: the ranks are not in the key
        run(mine_args(tmp, "mix", extra=["--checkpoint", ck]), expect=-9,
            env={"NS_CLI_TEST_KILL_AFTER_BLOCKS": "1"})
        run(mine_args(tmp, "mix", extra=["--checkpoint", ck]), ranks=2)
        same_bytes(tmp, "full", "mix")


def group_forced(tmp):
    need_mpi()
    make_data(tmp)
    backend = ["--backend", "cuda"] if CUDA else []
    err = run(mine_args(tmp, "one", extra=backend), expect=None)
    if CUDA and "no CUDA device" in err:
        raise Skip("no CUDA device usable")
    args = [a for a in mine_args(tmp, "forced", extra=backend) if a != "--quiet"]
    env = dict(os.environ, **MPI_ENV, NS_CLI_TEST_FORCE_RANKS="1")
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"  # MPI's own, as run()
    p = subprocess.run([NEGSAMP, *map(str, args)], capture_output=True, text=True, timeout=300,
                       env=env)
    check(p.returncode == 0, f"forced ranks: exit {p.returncode}: {p.stderr[-3000:]}")
    want = "over NCCL" if CUDA else "over MPI"
    check(f"mining across 1 rank(s) {want}" in p.stderr, p.stderr[-3000:])
    same_bytes(tmp, "one", "forced")


GROUPS = {name[6:]: fn for name, fn in globals().items() if name.startswith("group_")}


def main():
    global NEGSAMP, MPIEXEC, CUDA
    ap = argparse.ArgumentParser()
    ap.add_argument("--negsamp", required=True)
    ap.add_argument("--mpiexec")
    ap.add_argument("--cuda", action="store_true", help="forced: --backend cuda (NCCL)")
    ap.add_argument("--group", action="append", choices=sorted(GROUPS))
    a = ap.parse_args()
    NEGSAMP, MPIEXEC, CUDA = a.negsamp, a.mpiexec, a.cuda
    failed = ran = 0
    for g in a.group or list(GROUPS):
        with tempfile.TemporaryDirectory(prefix=f"negsamp-cli-{g}-") as tmp:
            t0 = time.time()
            try:
                GROUPS[g](tmp)
                ran += 1
                print(f"PASS {g} ({time.time() - t0:.1f}s)")
            except Skip as e:
                print(f"SKIP {g}: {e}")
            except Exception:
                ran += 1
                failed += 1
                print(f"FAIL {g}")
                traceback.print_exc()
    if not ran:
        return 77
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
