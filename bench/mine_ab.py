"""Interleaved A/B of one CPU-mining environment switch beside faiss-cpu IndexFlatIP (medians).

  python3 bench/mine_ab.py ROOT Q N d k THREADS REPEATS VALUES [VAR]
  e.g. python3 bench/mine_ab.py . 512 100000 384 1000 2 5 1024,default NS_CPU_MINE_FIRST_COLS
VALUES: comma-separated values of VAR (default NS_CPU_MINE_FIRST_COLS); "default" unsets it.
Uses ROOT/build/libnegsamp.so; checks every variant returns the same rows. Prints the load."""
import os, sys, time, numpy as np
root = sys.argv[1]; Q, N, d, k, T = (int(x) for x in sys.argv[2:7]); reps = int(sys.argv[7])
variants = sys.argv[8].split(",")
VAR = sys.argv[9] if len(sys.argv) > 9 else "NS_CPU_MINE_FIRST_COLS"
sys.path.insert(0, os.path.join(root, "python"))
os.environ["NEGSAMP_LIBRARY"] = os.path.join(root, "build", "libnegsamp.so")
import negsamp as ns, faiss  # noqa: E401
faiss.omp_set_num_threads(T)
ctx = ns.Context("cpu", threads=T)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mine_ab_data import unit_rows  # noqa: E402
q, c, q16, c16 = unit_rows(Q, N, d)
index = faiss.IndexFlatIP(d); index.add(c)
def run(v, qq, cc):
    if v == "default": os.environ.pop(VAR, None)
    else: os.environ[VAR] = v
    return ns.mine_topk(qq, cc, k, ctx=ctx, dtype="bfloat16" if qq.dtype == np.uint16 else None)[0]
impls = {"faiss": lambda: index.search(q, k)[1]}
for v in variants:
    impls["f32 " + v] = (lambda v=v: run(v, q, c))
    impls["bf16 " + v] = (lambda v=v: run(v, q16, c16))
for f in impls.values(): f()
t = {n: [] for n in impls}; outs = {}
for _ in range(reps):
    for n, f in impls.items():
        s = time.perf_counter(); outs[n] = f(); t[n].append(time.perf_counter() - s)
ref = outs["f32 " + variants[0]]
for n in impls:
    if n.startswith("f32"): assert np.array_equal(outs[n], ref), n
for n in impls:
    if n.startswith("bf16"): assert np.array_equal(outs[n], outs["bf16 " + variants[0]]), n
fm = np.median(t["faiss"])
print(open("/proc/loadavg").read().strip(), f"Q={Q} N={N} d={d} k={k} T={T} reps={reps}")
for n in impls:
    m = np.median(t[n]); print(f"{n:16s} median {m*1e3:8.1f} ms  faiss/this {fm/m:5.2f}")
