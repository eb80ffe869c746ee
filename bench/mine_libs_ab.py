"""Interleaved A/B of two negsamp builds (e.g. main's and a branch's) beside faiss-cpu IndexFlatIP.

  python3 bench/mine_libs_ab.py ROUNDS Q N d k THREADS REPEATS NAME=ROOT NAME=ROOT ...
  e.g. python3 bench/mine_libs_ab.py 3 1024 200000 384 1000 1 2 main=/tmp/main wt=.
Each round runs one child process per build, in turn (ROOT/build/libnegsamp.so; one library per
process): the same unit-norm data, then faiss, negsamp f32 and negsamp bf16 inputs, interleaved,
REPEATS times after a warm-up. Prints, per build, the median wall and CPU (process) times and
the median over rounds of faiss ÷ negsamp — compare those ratios between builds; on one thread
the CPU-time ratio is the one a busy machine disturbs least. Checks every build returns the same
rows. Prints the CPU model, the GEMM library and the load."""
import json, os, subprocess, sys, time
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import cpu_model, gemm_library  # noqa: E402


def child(root, Q, N, d, k, T, reps):
    sys.path.insert(0, os.path.join(root, "python"))
    os.environ["NEGSAMP_LIBRARY"] = os.path.join(root, "build", "libnegsamp.so")
    import negsamp as ns, faiss  # noqa: E401
    faiss.omp_set_num_threads(T)
    ctx = ns.Context("cpu", threads=T)
    from mine_ab_data import unit_rows
    q, c, q16, c16 = unit_rows(Q, N, d)
    index = faiss.IndexFlatIP(d); index.add(c)
    impls = {"faiss": lambda: index.search(q, k)[1],
             "f32": lambda: ns.mine_topk(q, c, k, ctx=ctx)[0],
             "bf16": lambda: ns.mine_topk(q16, c16, k, ctx=ctx, dtype="bfloat16")[0]}
    out = {n: f() for n, f in impls.items()}
    wall = {n: [] for n in impls}; cpu = {n: [] for n in impls}
    for _ in range(reps):
        for n, f in impls.items():
            s, c0 = time.perf_counter(), time.process_time()
            out[n] = f()
            wall[n].append(time.perf_counter() - s); cpu[n].append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu, "rows": [int(out["f32"].sum()), int(out["bf16"].sum())]}


def main():
    if sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], *(int(x) for x in sys.argv[3:9]))))
        return
    rounds, shape, builds = int(sys.argv[1]), sys.argv[2:8], [a.split("=", 1) for a in sys.argv[8:]]
    print(f"CPU {cpu_model()}, {os.cpu_count()} cores; threads {shape[4]}; GEMM "
          f"{gemm_library(os.path.join(builds[0][1], 'build'))}; load {open('/proc/loadavg').read().strip()}")
    print("Q N d k threads repeats:", " ".join(shape), "; rounds", rounds)
    res = {n: [] for n, _ in builds}
    for r in range(rounds):
        for n, root in builds:
            o = subprocess.run([sys.executable, __file__, "--child", os.path.abspath(root), *shape],
                               capture_output=True, text=True, check=True)
            res[n].append(json.loads(o.stdout.strip().splitlines()[-1]))
    print("load at the end", open("/proc/loadavg").read().strip())
    same = len({tuple(x["rows"]) for v in res.values() for x in v}) == 1
    print("same rows from every build:", "yes" if same else "NO")
    for n, _ in builds:
        for kind in ("wall", "cpu"):
            line = f"{n:10s} {kind:4s}"
            for impl in ("faiss", "f32", "bf16"):
                line += f"  {impl} {np.median([x for r in res[n] for x in r[kind][impl]]) * 1e3:7.1f} ms"
            for impl in ("f32", "bf16"):
                rs = [np.median(r[kind]["faiss"]) / np.median(r[kind][impl]) for r in res[n]]
                line += f"  faiss/{impl} {np.median(rs):.2f} ({' '.join(f'{x:.2f}' for x in rs)})"
            print(line)


if __name__ == "__main__":
    main()
