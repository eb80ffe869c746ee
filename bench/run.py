#!/usr/bin/env python3
"""negsamp beside its peers: the one benchmark runner.

    python3 bench/run.py [--quick] [--suite cpu|gpu|quality|all|mine|kmeans|sample|loss]
                         [--build DIR] [--out DIR] [--readme]

Runs every suite this machine supports and writes bench/results/<machine>-<date>.json, a
Markdown report bench/results/<machine>-<date>.md and PNG plots beside them.

  cpu      mining: negsamp's CPU backend vs faiss-cpu IndexFlatIP vs numpy (matmul +
           argpartition per query chunk); InfoNCE forward+backward: negsamp vs numpy
           (materialised logits); peak RSS of each InfoNCE in its own process against batch size.
  gpu      bench/gpu_run.sh when a GPU exists, else recorded as skipped with the reason.
  kmeans   negsamp.kmeans vs faiss.Kmeans: time (interleaved medians) and final inertia
           (--suite kmeans only; not part of all).
  quality  bench/quality_digits (C): negative-sampling strategies on the UCI digits, false-
           negative share and held-out retrieval over several seeds.
  mine     exact mining beside faiss-cpu, torch and numpy at 1 and 2 threads.
  sample   filter + SimANS sampling (bench/bench_sample) beside numpy and one read of the
           scores, interleaved rounds (section "sampling suite" below).
  loss     InfoNCE forward + backward: negsamp's fused C call and two calls, the PyTorch op
           (fused, separate), torch and numpy on the same inputs, a fresh process per run,
           interleaved rounds, medians, peak memory, a plot (section "loss suite" below).

--readme regenerates README.md's results blocks (between <!-- NAME:begin/end --> markers) from
every suite's latest results under bench/results (section "README results" below).

negsamp is called through its Python binding (python/negsamp) with NEGSAMP_LIBRARY pointing at
the libnegsamp.so of the build directory (--build, default build-bench/; configured and built
here with CMake when missing). Python deps: bench/requirements.txt (faiss-cpu optional: skipped
with the reason when absent). --report-only JSON rewrites the report and plots from a result.
"""
import argparse
import datetime
import gzip
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DIGITS_CANDIDATES = [os.path.join(ROOT, "..", "shared", "data", "digits", "digits.csv.gz"),
                     os.path.join(ROOT, "shared", "data", "digits", "digits.csv.gz"),
                     "/work/shared/data/digits/digits.csv.gz"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ building and finding things


def cmake_cache_value(build, key):
    """A CMakeCache.txt entry of `build` (None when absent)."""
    try:
        for line in open(os.path.join(build, "CMakeCache.txt")):
            if line.startswith(key + ":"):
                return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return None


def ensure_build(build):
    """libnegsamp.so and the benchmark programs in `build`, built when missing. A directory
    CMake has not configured yet (the runner's own, build-bench/ by default) is configured
    Release without tests; one already configured is never reconfigured: it may be someone's
    test build (NS_TESTS=ON, another build type), and a configure here would turn its tests
    off. Only the targets are built there."""
    lib = os.path.join(build, "libnegsamp.so")
    if not os.path.exists(os.path.join(build, "CMakeCache.txt")):
        log(f"[build] configuring {build}")
        subprocess.run(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                        "-DNS_TESTS=OFF"], check=True, stdout=subprocess.DEVNULL)
    elif (cmake_cache_value(build, "CMAKE_BUILD_TYPE") or "") != "Release":
        log(f"[build] note: {build} is a {cmake_cache_value(build, 'CMAKE_BUILD_TYPE') or 'default'}"
            " build (left as configured); timings of a Release build are what the README shows")
    targets = ["negsamp", "negsamp_static"]
    have_bench_target = os.path.exists(os.path.join(HERE, "CMakeLists.txt"))
    if have_bench_target:
        targets += [n for n in ("quality_digits", "bench_mine", "bench_infonce")
                    if os.path.exists(os.path.join(HERE, n + ".c"))]
    log(f"[build] cmake --build {build} --target {' '.join(targets)} -j2")
    r = subprocess.run(["cmake", "--build", build, "-j2", "--target"] + targets,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0 and have_bench_target:
        # bench/CMakeLists.txt may not know the target yet: build the library alone.
        r = subprocess.run(["cmake", "--build", build, "-j2", "--target", "negsamp",
                            "negsamp_static"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit("build failed:\n" + r.stdout[-4000:])
    return lib


def quality_executable(build):
    """The quality_digits program: CMake's, else compiled here against libnegsamp.a."""
    for p in (os.path.join(build, "bench", "quality_digits"), os.path.join(build, "quality_digits")):
        if os.path.exists(p) and os.path.getmtime(p) >= os.path.getmtime(
                os.path.join(HERE, "quality_digits.c")):
            return p
    exe = os.path.join(build, "quality_digits_runpy")
    # Linked against the shared library, which carries its own dependencies (BLAS, OpenMP,
    # CUDA, MPI as built).
    cmd = [os.environ.get("CC", "cc"), "-O2", "-std=c11", "-I", os.path.join(ROOT, "include"),
           os.path.join(HERE, "quality_digits.c"), "-L", build, "-lnegsamp",
           "-Wl,-rpath," + build, "-lm", "-o", exe]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError("cannot compile quality_digits: " + r.stdout[-2000:])
    return exe


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def slug(s):
    s = re.sub(r"\((R|TM|tm|r)\)", "", s)
    s = re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-").lower()
    return re.sub(r"-+", "-", s)


def write_results(args, res, suite, plot, report):
    """bench/results/<machine>-<date>-<suite>[-quick].{json,md,png}: the one naming and writing
    of every suite's results (the README regeneration reads them back by these names)."""
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"cpu-{os.cpu_count()}core-{slug(cpu_model())}-"
                        f"{res['date'][:10]}-{suite}" + ("-quick" if args.quick else ""))
    res["plot"] = plot(res, stem + ".png")
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(report(res))
    log(f"wrote {stem}.json/.md" + (" and .png" if res["plot"] else ""))
    return stem


def gpu_name():
    """The first GPU's name, or None with the reason."""
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0], None
        return None, "nvidia-smi finds no GPU"
    try:
        import torch  # noqa: F401
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0), None
    except Exception:
        pass
    return None, "no GPU (no nvidia-smi, torch.cuda.is_available() is false or torch absent)"


def summary(times):
    s = sorted(times)
    q1, q3 = (s[0], s[-1]) if len(s) < 4 else statistics.quantiles(s, n=4)[0::2]
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "q1": q1, "q3": q3,
            "runs": times}


# ------------------------------------------------------------------ the CPU suite


def make_data(rng, rows, d):
    import numpy as np
    x = rng.standard_normal((rows, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def numpy_topk(q, c, k, chunk=128):
    """Exact top-k by numpy: a query chunk's full score rows, argpartition, then sort the k."""
    import numpy as np
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    sc = np.empty((q.shape[0], k), dtype=np.float32)
    for a in range(0, q.shape[0], chunk):
        s = q[a:a + chunk] @ c.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        idx[a:a + chunk] = np.take_along_axis(part, order, axis=1)
        sc[a:a + chunk] = np.take_along_axis(ps, order, axis=1)
    return idx, sc


def numpy_infonce(q, p, tau):
    """In-batch InfoNCE (positive of query i is passage i) with its gradients, the plain way:
    the B×N logits materialised, log-softmax, dL/dlogits = softmax − onehot."""
    import numpy as np
    B = q.shape[0]
    logits = (q @ p.T) / np.float32(tau)
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    z = e.sum(axis=1, keepdims=True)
    lse = (m + np.log(z))[:, 0]
    loss = float(np.mean(lse - np.diagonal(logits)))
    g = e / z
    g[np.arange(B), np.arange(B)] -= 1.0
    g *= np.float32(1.0 / (tau * B))
    dq = g @ p
    dp = g.T @ q
    return loss, dq, dp


def negsamp_infonce(ns, ctx, q, p, tau):
    f = ns.infonce_forward(q, p, temperature=tau, ctx=ctx)
    g = ns.infonce_backward(q, p, f.saved, temperature=tau, want=("query", "passage"), ctx=ctx)
    return f.loss, g.query, g.passage


def timed(fn, repeats, settle=0.3):
    out, times = None, []
    for _ in range(repeats):
        # Let the previous library's worker threads (OpenMP / OpenBLAS spin-wait) go idle:
        # three thread pools share these cores, and a spinning pool slows the next caller.
        time.sleep(settle)
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def suite_cpu(args, lib, build):
    import numpy as np
    import negsamp as ns
    threads = args.threads or os.cpu_count()
    res = {"threads": threads, "repeats": args.repeats}
    ctx = ns.Context("cpu", threads=threads)
    try:
        import faiss
        faiss.omp_set_num_threads(threads)
        res["faiss"] = {"version": faiss.__version__}
    except Exception as e:  # noqa: BLE001
        faiss = None
        res["faiss"] = {"skipped": f"faiss-cpu not importable ({type(e).__name__}: {e}); "
                                   f"pip install -r bench/requirements.txt"}
        log("[cpu] faiss skipped:", res["faiss"]["skipped"])
    rng = np.random.default_rng(0)
    d, k = 384, 100

    # ---- mining
    if args.quick:
        points = [(256, 10_000), (256, 20_000), (256, 50_000), (512, 20_000), (1024, 20_000)]
    else:
        points = [(1024, 50_000), (1024, 100_000), (1024, 200_000), (2048, 50_000),
                  (4096, 50_000)]
    mining = []
    for Q, N in points:
        corpus = make_data(rng, N, d)
        q = make_data(rng, Q, d)
        row = {"Q": Q, "N": N, "d": d, "k": k}
        impls = {"negsamp": lambda: ns.mine_topk(q, corpus, k, ctx=ctx),
                 "numpy": lambda: numpy_topk(q, corpus, k)}
        if faiss is not None:
            index = faiss.IndexFlatIP(d)
            t = time.perf_counter()
            index.add(corpus)
            row["faiss_add_s"] = time.perf_counter() - t

            def fs(index=index):
                sc, ix = index.search(q, k)
                return ix, sc
            impls["faiss"] = fs
        for fn in impls.values():  # warm-up (page faults, thread pools), untimed
            fn()
        times = {name: [] for name in impls}
        outs = {}
        for _ in range(args.repeats):  # interleaved, so drifting load hits every library alike
            for name, fn in impls.items():
                outs[name], t = timed(fn, 1)
                times[name] += t
        for name in impls:
            row[name] = summary(times[name])
        ref = outs["numpy"][0]
        for name in impls:  # agreement of the top-k sets with numpy's (ties may differ)
            got = outs[name][0]
            row.setdefault("agreement_with_numpy", {})[name] = float(np.mean(
                [len(np.intersect1d(got[i], ref[i])) / k for i in range(0, Q, max(1, Q // 64))]))
        flops = 2.0 * Q * N * d
        row["gflops"] = {name: flops / row[name]["median"] / 1e9 for name in impls}
        mining.append(row)
        log(f"[cpu] mine Q={Q} N={N}: " + ", ".join(
            f"{n} {row[n]['median']*1e3:.0f} ms" for n in impls))
        del corpus, q, impls, outs
        if faiss is not None:
            del index
    res["mining"] = mining

    # ---- InfoNCE forward + backward, time
    Bs = [256, 512, 1024, 2048] if args.quick else [512, 1024, 2048, 4096]
    tau = 0.05
    infonce = []
    for B in Bs:
        q = make_data(rng, B, d)
        p = make_data(rng, B, d)
        row = {"B": B, "N": B, "d": d, "tau": tau}
        impls = {"negsamp": lambda: negsamp_infonce(ns, ctx, q, p, tau),
                 "numpy": lambda: numpy_infonce(q, p, tau)}
        for fn in impls.values():
            fn()
        times = {n: [] for n in impls}
        outs = {}
        for _ in range(args.repeats + 2):  # cheaper than mining: two more runs
            for name, fn in impls.items():
                outs[name], t = timed(fn, 1)
                times[name] += t
        for name in impls:
            row[name] = summary(times[name])
        a, b = outs["negsamp"], outs["numpy"]
        row["loss"] = {"negsamp": a[0], "numpy": b[0]}
        row["max_abs_grad_diff"] = float(max(np.max(np.abs(a[1] - b[1])),
                                             np.max(np.abs(a[2] - b[2]))))
        row["max_abs_grad"] = float(max(np.max(np.abs(b[1])), np.max(np.abs(b[2]))))
        infonce.append(row)
        log(f"[cpu] infonce B={B}: negsamp {row['negsamp']['median']*1e3:.1f} ms, numpy "
            f"{row['numpy']['median']*1e3:.1f} ms, loss {a[0]:.5f} vs {b[0]:.5f}")
    res["infonce"] = infonce

    # ---- InfoNCE peak memory, each in a fresh process
    mem_Bs = [256, 512, 1024, 2048, 4096] if args.quick else [512, 1024, 2048, 4096, 8192]
    memory = []
    for B in mem_Bs:
        row = {"B": B, "N": B, "d": d}
        for impl in ("negsamp", "numpy"):
            row[impl] = child_memory(impl, B, d, lib)
        memory.append(row)
        log(f"[cpu] memory B={B}: negsamp +{row['negsamp']['extra_mib']:.0f} MiB, numpy "
            f"+{row['numpy']['extra_mib']:.0f} MiB")
    res["memory"] = memory
    res["c_programs"] = c_benches(args, build)
    return res


def child_memory(impl, B, d, lib):
    """Peak RSS of one InfoNCE forward+backward in a fresh process, and that process's peak
    before the call (interpreter, numpy, inputs) to subtract. The child reports its own
    ru_maxrss: Linux carries a parent's peak RSS into a forked child across exec, so the child
    is started from a small shell (which forks it) rather than from this large process."""
    env = dict(os.environ, NEGSAMP_LIBRARY=lib)
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + os.pathsep + env.get("PYTHONPATH", "")
    # A fixed mmap threshold: large arrays are mapped fresh and unmapped on free, so memory
    # freed while building the inputs is not silently reused (and hidden) by the call.
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, os.path.abspath(__file__),
           "--child-memory", impl, str(B), str(d)]
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return {"error": f"child exited with status {r.returncode}: {r.stderr[-300:]}"}
    info = json.loads(r.stdout)
    info["extra_mib"] = info["peak_mib"] - info["before_mib"]
    return info


def proc_status_mib(key):
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def child_memory_main(impl, B, d):
    import numpy as np
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    rng = np.random.default_rng(1)
    q = make_data(rng, B, d)
    p = make_data(rng, B, d)
    if impl == "negsamp":
        import negsamp as ns
        ctx = ns.Context("cpu", threads=0)
        fn = lambda: negsamp_infonce(ns, ctx, q, p, 0.05)  # noqa: E731
        negsamp_infonce(ns, ctx, q[:2], p[:2], 0.05)  # load the library, touch its code
    else:
        fn = lambda: numpy_infonce(q, p, 0.05)  # noqa: E731
        numpy_infonce(q[:2], p[:2], 0.05)
    # Reset the high-water mark (Linux: "5" to clear_refs) so the transients of building the
    # inputs do not hide in the baseline; else fall back to ru_maxrss.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, how = proc_status_mib("VmRSS"), "VmHWM reset, VmRSS before"
    except OSError:
        before, how = None, None
    if before is None:
        before, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss"
    t = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t
    peak = (proc_status_mib("VmHWM") if how != "ru_maxrss"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    del out
    print(json.dumps({"start_mib": start, "before_mib": before, "peak_mib": peak,
                      "seconds": secs, "method": how}))


# ------------------------------------------------------------------ the GPU suite


def suite_gpu(args, lib, outdir, stem):
    """bench/gpu_run.sh (build, tests, sanitizers, GPU benchmarks, PyTorch beside them) when a
    GPU exists; it writes its own <gpu>-<stamp>.json/.md into bench/results, folded in here."""
    name, why = gpu_name()
    if name is None:
        return {"skipped": why}
    script = os.path.join(HERE, "gpu_run.sh")
    if not os.path.exists(script):
        return {"skipped": f"GPU {name} found, but bench/gpu_run.sh is missing"}
    before = set(os.listdir(outdir))
    t = time.perf_counter()
    r = subprocess.run(["bash", script], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    res = {"gpu": name, "returncode": r.returncode, "seconds": time.perf_counter() - t,
           "output_tail": r.stdout[-6000:], "command": "bash bench/gpu_run.sh"}
    new = sorted(set(os.listdir(outdir)) - before)
    res["files"] = new
    for f in new:
        if f.endswith(".json"):
            try:
                res.setdefault("results", {})[f] = json.load(open(os.path.join(outdir, f)))
            except ValueError:
                pass
    return res


def c_benches(args, build):
    """The C benchmark programs beside the Python comparison: bench_mine (ns_mine_topk vs the
    bare OpenBLAS sgemm of the same shape) and bench_infonce (loss time and peak memory)."""
    out = {}
    runs = {
        "bench_mine": (["--queries", "256", "--corpus", "20000", "--repeat", "2"] if args.quick
                       else ["--queries", "1024", "--corpus", "100000", "--repeat", "3"]),
        "bench_infonce": (["--B", "2048", "--N", "2048", "--reps", "2"] if args.quick
                          else ["--B", "8192", "--N", "8192", "--reps", "3"]),
    }
    for name, argv in runs.items():
        exe = os.path.join(build, "bench", name)
        if not os.path.exists(exe):
            out[name] = {"skipped": f"{exe} not built"}
            continue
        with tempfile.TemporaryDirectory() as td:
            js = os.path.join(td, "out.json")
            cmd = [exe] + argv + ["--json", js]
            log("[cpu]", name, " ".join(argv))
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            row = {"command": f"build/bench/{name} " + " ".join(argv),
                   "returncode": r.returncode, "stdout": r.stdout[-4000:]}
            if os.path.exists(js):
                try:
                    row["json"] = json.load(open(js))
                except ValueError:
                    pass
        out[name] = row
    return out


# ------------------------------------------------------------------ the quality suite


def find_digits():
    for p in DIGITS_CANDIDATES:
        if os.path.exists(p):
            return os.path.abspath(p)
    return None


def run_quality(exe, argv):
    with tempfile.TemporaryDirectory() as td:
        out = os.path.join(td, "quality.json")
        log("[quality]", " ".join(argv))
        r = subprocess.run([exe] + argv + ["--out", out], stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"quality_digits exited {r.returncode}: {r.stderr[-3000:]}")
        log(r.stderr)
        return json.load(open(out))


def suite_quality(args, build):
    data = find_digits()
    if data is None:
        return {"skipped": "shared/data/digits/digits.csv.gz not found"}
    exe = quality_executable(build)
    seeds, epochs = (2, 10) if args.quick else (args.seeds, 30)
    argv = ["--data", data, "--seeds", str(seeds), "--epochs", str(epochs)]
    t = time.perf_counter()
    try:
        raw = run_quality(exe, argv)
        # How strong must the positive-aware filter be? TopK-PercPos at looser percentages,
        # on the first seeds (same splits and starts: paired with in-batch above).
        sweep_seeds = str(min(seeds, 3))
        raw["margin_sweep"] = {"seeds": int(sweep_seeds), "rel_margins": [], "command": []}
        for rel in ((0.2,) if args.quick else (0.1, 0.2, 0.3)):
            sw = run_quality(exe, ["--data", data, "--seeds", sweep_seeds, "--epochs",
                                   str(epochs), "--strategies", "topk+filter,simans+filter",
                                   "--rel-margin", str(rel)])
            raw["margin_sweep"]["rel_margins"].append(rel)
            raw["margin_sweep"]["command"].append(
                f"quality_digits --data {os.path.relpath(data, ROOT)} --seeds {sweep_seeds} "
                f"--epochs {epochs} --strategies topk+filter,simans+filter --rel-margin {rel}")
            for r in sw["runs"]:
                if r["trained"]:
                    r["strategy"] += f" (rel {rel:g})"
                    raw["runs"].append(r)
    except RuntimeError as e:
        return {"error": str(e)}
    raw["seconds"] = time.perf_counter() - t
    raw["command"] = ("quality_digits --data " + os.path.relpath(data, ROOT) + " "
                      + " ".join(argv[2:]))
    raw["summary"] = summarise_quality(raw["runs"])
    return raw


def summarise_quality(runs):
    import numpy as np
    names = []
    for r in runs:
        if r["strategy"] not in names:
            names.append(r["strategy"])
    base = {(r["seed"]): r for r in runs if r["strategy"] == "inbatch"}
    out = []
    for n in names:
        rs = [r for r in runs if r["strategy"] == n]
        row = {"strategy": n, "seeds": len(rs), "trained": rs[0]["trained"]}
        for key in ("r1", "r10", "p10", "fn_share_chosen", "fn_share_inbatch",
                    "fn_share_candidates", "filter_removed", "filter_precision",
                    "filter_recall", "found_per_query", "seconds"):
            v = [r[key] for r in rs if r.get(key) is not None]
            if v:
                row[key] = {"mean": float(np.mean(v)),
                            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
        for key in ("r1", "p10"):  # paired with in-batch on the same split and start
            dv = [r[key] - base[r["seed"]][key] for r in rs if r["seed"] in base]
            if dv and n != "inbatch":
                row["delta_vs_inbatch_" + key] = {
                    "mean": float(np.mean(dv)),
                    "std": float(np.std(dv, ddof=1)) if len(dv) > 1 else 0.0}
        out.append(row)
    return out


# ------------------------------------------------------------------ plots and report


def plots(res, outdir, stem):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = {}
    cpu = res.get("cpu") or {}
    colors = {"negsamp": "C0", "faiss": "C1", "numpy": "C2"}

    def errbars(rows, impl, x):
        xs = [x(r) for r in rows if impl in r]
        med = [r[impl]["median"] for r in rows if impl in r]
        lo = [r[impl]["median"] - r[impl]["min"] for r in rows if impl in r]
        hi = [r[impl]["max"] - r[impl]["median"] for r in rows if impl in r]
        return xs, med, [lo, hi]

    if cpu.get("mining"):
        rows = cpu["mining"]
        q0 = rows[0]["Q"]
        byN = [r for r in rows if r["Q"] == q0]
        n0 = max(set(r["N"] for r in rows), key=lambda n: sum(r["N"] == n for r in rows))
        byQ = [r for r in rows if r["N"] == n0]
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for impl in ("negsamp", "faiss", "numpy"):
            for a, sel, x, lab in ((ax[0], byN, lambda r: r["N"], "corpus rows N"),
                                   (ax[1], byQ, lambda r: r["Q"], "queries Q")):
                xs, med, err = errbars(sel, impl, x)
                if xs:
                    a.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=impl,
                               color=colors[impl])
                a.set_xlabel(lab)
                a.set_ylabel("seconds (median, min–max)")
                a.set_xscale("log")
                a.set_yscale("log")
                a.grid(True, which="both", alpha=0.3)
        ax[0].set_title(f"exact top-{rows[0]['k']} mining, Q={q0}, d={rows[0]['d']}")
        ax[1].set_title(f"exact top-{rows[0]['k']} mining, N={n0}, d={rows[0]['d']}")
        ax[0].legend()
        fig.tight_layout()
        made["mining"] = stem + "-mining.png"
        fig.savefig(os.path.join(outdir, made["mining"]), dpi=110)
        plt.close(fig)
    if cpu.get("infonce") or cpu.get("memory"):
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for impl in ("negsamp", "numpy"):
            if cpu.get("infonce"):
                xs, med, err = errbars(cpu["infonce"], impl, lambda r: r["B"])
                ax[0].errorbar(xs, med, yerr=err, marker="o", capsize=3, label=impl,
                               color=colors[impl])
            if cpu.get("memory"):
                rows = [r for r in cpu["memory"] if "extra_mib" in r[impl]]
                ax[1].plot([r["B"] for r in rows], [max(r[impl]["extra_mib"], 0.1)
                                                    for r in rows],
                           marker="o", label=impl, color=colors[impl])
        ax[0].set_title("InfoNCE forward+backward time (N = B, d = 384)")
        ax[0].set_xlabel("batch size B")
        ax[0].set_ylabel("seconds (median, min–max)")
        ax[1].set_title("InfoNCE forward+backward peak memory")
        ax[1].set_xlabel("batch size B")
        ax[1].set_ylabel("peak RSS above inputs (MiB)")
        for a in ax:
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            a.grid(True, which="both", alpha=0.3)
            a.legend()
        fig.tight_layout()
        made["infonce"] = stem + "-infonce.png"
        fig.savefig(os.path.join(outdir, made["infonce"]), dpi=110)
        plt.close(fig)
    qs = (res.get("quality") or {}).get("summary")
    if qs:
        fig, ax = plt.subplots(1, 2, figsize=(14, 4.8))
        names = [r["strategy"] for r in qs]
        x = range(len(names))
        for off, key, lab in ((-0.2, "r1", "R@1"), (0.2, "p10", "P@10")):
            ax[0].bar([i + off for i in x], [r[key]["mean"] for r in qs], width=0.4,
                      yerr=[r[key]["std"] for r in qs], capsize=3, label=lab)
        lo = min(min(r["r1"]["mean"], r["p10"]["mean"]) for r in qs)
        ax[0].set_ylim(max(0.0, lo - 0.05), 1.03)
        ax[0].set_title("held-out retrieval of the own class (mean ± std over seeds)")
        fnk = ["fn_share_inbatch" if r["strategy"] == "inbatch" else "fn_share_chosen"
               for r in qs]
        ax[1].bar(list(x), [r.get(k, {}).get("mean", 0) for r, k in zip(qs, fnk)],
                  yerr=[r.get(k, {}).get("std", 0) for r, k in zip(qs, fnk)], capsize=3,
                  color=["C7" if k == "fn_share_inbatch" else "C3" for k in fnk])
        ax[1].set_title("false-negative share of chosen negatives (grey: in-batch)")
        ax[1].set_ylim(0, 1)
        for a in ax:
            a.set_xticks(list(x))
            a.set_xticklabels(names, rotation=30, ha="right")
            a.grid(True, axis="y", alpha=0.3)
        ax[0].legend(loc="upper right", ncol=2, fontsize=8)
        fig.tight_layout()
        made["quality"] = stem + "-quality.png"
        fig.savefig(os.path.join(outdir, made["quality"]), dpi=110)
        plt.close(fig)
    return made


def fmt_t(s):
    return f"{s*1e3:.0f} ms" if s >= 0.1 else f"{s*1e3:.1f} ms"


def spread(x):
    return f"{fmt_t(x['median'])} [{fmt_t(x['min'])}–{fmt_t(x['max'])}]"


def report(res, made, stem):
    m = res["machine"]
    L = [f"# negsamp benchmarks — {m['name']}, {res['date']}", ""]
    L.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB; "
             f"{m['os']}; Python {m['python']}, numpy {m['numpy']}"
             + (f", faiss-cpu {m['faiss']}" if m.get("faiss") else "") + ". "
             f"Load average at start {m['load_start']}, at end {res.get('load_end', '?')}"
             " (the machine is shared: other processes can inflate every timing alike).")
    L.append("")
    L.append(f"Reproduce: `{res['command']}`.")
    L.append("")
    cpu = res.get("cpu")
    if cpu and "mining" in cpu:
        L += ["## Exact top-k mining (CPU)", "",
              "Same random unit vectors (d = 384, k = 100) for all three; negsamp "
              "`ns_mine_topk` (CPU backend, OpenBLAS + blocked top-k), faiss-cpu "
              "`IndexFlatIP.search` (index build excluded), numpy `q @ c.T` per 128-query "
              "chunk + `argpartition` + sort of the k. Agreement = share of numpy's top-k ids "
              "found by the other (ties may legitimately differ). "
              f"{cpu['threads']} threads each; median of {cpu['repeats']} interleaved runs "
              "after one warm-up, [min–max] in brackets.", ""]
        has_f = any("faiss" in r for r in cpu["mining"])
        hdr = "| Q | N | negsamp | " + ("faiss IndexFlatIP | " if has_f else "") + \
              "numpy | negsamp vs numpy | " + ("negsamp vs faiss | " if has_f else "") + \
              "negsamp GFLOP/s | agreement |"
        L += [hdr, "|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|"]
        for r in cpu["mining"]:
            cells = [str(r["Q"]), f"{r['N']:,}", spread(r["negsamp"])]
            if has_f:
                cells.append(spread(r["faiss"]) if "faiss" in r else "—")
            cells.append(spread(r["numpy"]))
            cells.append(f"{r['numpy']['median']/r['negsamp']['median']:.2f}× faster")
            if has_f:
                cells.append(f"{r['faiss']['median']/r['negsamp']['median']:.2f}×"
                             if "faiss" in r else "—")
            cells.append(f"{r['gflops']['negsamp']:.0f}")
            cells.append(", ".join(f"{k} {v:.3f}" for k, v in r["agreement_with_numpy"].items()
                                   if k != "numpy"))
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
        L.append("Ratios are median time of the other ÷ median time of negsamp (> 1: negsamp "
                 "faster).")
        if "skipped" in cpu.get("faiss", {}):
            L.append(f"faiss: skipped — {cpu['faiss']['skipped']}.")
        L.append("")
        if "mining" in made:
            L += [f"![mining time]({made['mining']})", ""]
    if cpu and "infonce" in cpu:
        L += ["## InfoNCE forward + backward (CPU)", "",
              "In-batch InfoNCE, B queries against N = B passages, d = 384, τ = 0.05, "
              "gradients for queries and passages. negsamp: `ns_infonce_forward` + "
              "`ns_infonce_backward` (tiled online softmax, recomputing backward); numpy: "
              "logits materialised, log-softmax, `softmax − I`, two GEMMs. "
              f"Median of {cpu['repeats'] + 2} interleaved runs after one warm-up.", "",
              "| B | negsamp | numpy | ratio | loss negsamp / numpy | max grad diff / max grad |",
              "|---|---|---|---|---|---|"]
        for r in cpu["infonce"]:
            L.append(f"| {r['B']} | {spread(r['negsamp'])} | {spread(r['numpy'])} | "
                     f"{r['numpy']['median']/r['negsamp']['median']:.2f}× | "
                     f"{r['loss']['negsamp']:.5f} / {r['loss']['numpy']:.5f} | "
                     f"{r['max_abs_grad_diff']:.2e} / {r['max_abs_grad']:.2e} |")
        L.append("")
    if cpu and "memory" in cpu:
        L += ["Peak memory of one forward+backward, each in a fresh process: its peak "
              "resident set during the call (VmHWM, reset just before) minus its resident set "
              "before the call (interpreter, numpy, inputs). The gradients (2·B·d floats, "
              f"{2 * cpu['memory'][-1]['B'] * 384 * 4 / 2**20:.0f} MiB at B = "
              f"{cpu['memory'][-1]['B']}) are part of both:", "",
              "| B | negsamp extra MiB | numpy extra MiB | negsamp beyond gradients | "
              "numpy beyond gradients | one B×B f32 matrix |",
              "|---|---|---|---|---|---|"]
        for r in cpu["memory"]:
            grads = 2 * r["B"] * r["d"] * 4 / 2**20
            cell = lambda x, g=0.0: (f"{x['extra_mib'] - g:.1f}" if "extra_mib" in x  # noqa
                                     else x.get("error"))
            L.append(f"| {r['B']} | {cell(r['negsamp'])} | {cell(r['numpy'])} | "
                     f"{cell(r['negsamp'], grads)} | {cell(r['numpy'], grads)} | "
                     f"{r['B']*r['B']*4/2**20:.0f} MiB |")
        L.append("")
        if "infonce" in made:
            L += [f"![InfoNCE time and memory]({made['infonce']})", ""]
    progs = (cpu or {}).get("c_programs") or {}
    if progs:
        L += ["### The C benchmark programs", ""]
        for name, r in progs.items():
            if "skipped" in r:
                L += [f"`{name}`: skipped ({r['skipped']}).", ""]
                continue
            L += [f"`{r['command']}` (exit {r['returncode']}):", "", "```",
                  r["stdout"].rstrip()[-2500:], "```", ""]
    g = res.get("gpu")
    L += ["## GPU", ""]
    if g is None:
        L.append("Not run (`--suite` excluded it).")
    elif "skipped" in g:
        L.append(f"Skipped: {g['skipped']}. On a machine with a GPU the runner calls "
                 "`bench/gpu_run.sh` and folds its JSON in here.")
    else:
        L.append(f"{g['gpu']}: `bash bench/gpu_run.sh` exited {g['returncode']} after "
                 f"{g['seconds']:.0f} s; it wrote " + (", ".join(f"`{f}`" for f in g["files"])
                                                    or "nothing") + " beside this report.")
        L += ["", "```", g["output_tail"][-3000:], "```"]
    L.append("")
    q = res.get("quality")
    if q and "summary" in q:
        c = q["config"]
        L += ["## What negative sampling does to quality (UCI digits)", "",
              f"1,797 real 8×8 digit images; a stratified {int(q['data']['test_share']*100)} % "
              f"is held out per seed. A linear map W (64 → {c['dim']}) followed by L2 "
              f"normalisation is trained with negsamp's InfoNCE (τ = {c['tau']}, Adam lr "
              f"{c['lr']}, batch {c['batch']}, {c['epochs']} epochs): the anchor is a training "
              "image, its positive another training image of the same class (supervised "
              f"contrastive); every strategy keeps the batch's in-batch negatives and adds "
              f"h = {c['hard']} negatives per query chosen from {c['candidates']} candidates "
              "mined with `ns_mine_topk` over the training set under the current W every "
              f"{c['remine_every']} epoch(s) (scores in logit units, s/τ). A negative with the "
              "anchor's label is a false negative. Filter = `ns_filter` with SAME_ID + "
              f"REL_MARGIN {c['rel_margin']} (NV-Retriever TopK-PercPos 95 %); SimANS a = "
              f"{c['simans_a']}, b = {c['simans_b']}; `topk+oracle` drops every same-label "
              "candidate using the labels — an upper bound no real filter has. Retrieval: each "
              "held-out image queries the training images (cosine); R@1 = the nearest has its "
              "class, R@10 = one of the first 10 has, P@10 = share of the first 10 that have. "
              f"{q['summary'][0]['seeds']} seeds, mean ± std; Δ = paired difference to "
              "in-batch on the same split and initial W.", "",
              f"Reproduce: `python3 bench/run.py --suite quality` (it runs `{q['command']}` "
              f"from the build's bench/); {q['seconds']:.0f} s here.", "",
              "| strategy | R@1 | R@10 | P@10 | ΔR@1 vs in-batch | ΔP@10 vs in-batch | "
              "FN share of chosen negatives | FN share of candidates | filter removed | "
              "removed that were FN |",
              "|---|---|---|---|---|---|---|---|---|---|"]

        def ms(row, key, pct=False):
            v = row.get(key)
            if not v:
                return "—"
            f = 100.0 if pct else 1.0
            return (f"{v['mean']*f:.1f} ± {v['std']*f:.1f} %" if pct
                    else f"{v['mean']:.3f} ± {v['std']:.3f}")

        def md(row, key):
            v = row.get(key)
            return "—" if not v else f"{v['mean']*100:+.1f} ± {v['std']*100:.1f} pt"

        for r in q["summary"]:
            name = r["strategy"] + ("" if r["trained"] else " (no training)")
            fn_chosen = ms(r, "fn_share_chosen", True)
            if r["strategy"] == "inbatch":
                fn_chosen = f"(in-batch: {ms(r, 'fn_share_inbatch', True)})"
            L.append(f"| {name} | {ms(r, 'r1')} | {ms(r, 'r10')} | {ms(r, 'p10')} | "
                     f"{md(r, 'delta_vs_inbatch_r1')} | {md(r, 'delta_vs_inbatch_p10')} | "
                     f"{fn_chosen} | {ms(r, 'fn_share_candidates', True)} | "
                     f"{ms(r, 'filter_removed', True)} | {ms(r, 'filter_precision', True)} |")
        if q.get("margin_sweep"):
            L += ["", "Rows marked (rel r) repeat the filtered strategies with TopK-PercPos at "
                  f"{', '.join(f'{(1 - x) * 100:.0f} %' for x in q['margin_sweep']['rel_margins'])}"
                  f" (REL_MARGIN r) on the first {q['margin_sweep']['seeds']} seeds: how strong "
                  "must the filter be?"]
        L.append("")
        verdict = quality_verdict(q["summary"], q.get("runs"))
        if verdict:
            L += [verdict, ""]
        if "quality" in made:
            L += [f"![quality]({made['quality']})", ""]
    elif q:
        L += ["## Quality", "", f"Not available: {q.get('skipped') or q.get('error')}", ""]
    return "\n".join(L) + "\n"


def quality_verdict(summary, runs=None):
    """Honest sentences from the numbers: the best and worst strategies without labels, their
    paired difference to in-batch, and whether it exceeds the seed noise (2 standard errors)."""
    # The main strategies only: picking the best of the sweep's variants too would be a
    # best-of-many selection on 3 seeds.
    real = [r for r in summary if r["trained"] and r["strategy"] != "topk+oracle"
            and "(rel" not in r["strategy"]]
    by = {r["strategy"]: r for r in summary}
    if not real:
        return ""
    parts = []

    def delta(r, key):
        d = r.get("delta_vs_inbatch_" + key)
        if d is None:
            return "", False
        n = r["seeds"]
        # a paired 95 % t-interval over the seeds: "beyond noise" when it excludes zero
        t975 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31,
                10: 2.26}.get(n, 2.0)
        sig = n > 1 and abs(d["mean"]) > t975 * d["std"] / n ** 0.5
        return (f"{d['mean']*100:+.1f} ± {d['std']*100:.1f} points vs in-batch only, "
                + ("beyond" if sig else "within") + " seed noise (paired 95 % t-interval)"), sig

    for key, lab in (("p10", "P@10"), ("r1", "R@1")):
        best = max(real, key=lambda r: r[key]["mean"])
        worst = min(real, key=lambda r: r[key]["mean"])
        s = f"By {lab} the best strategy without labels is **{best['strategy']}** " \
            f"({best[key]['mean']:.3f} ± {best[key]['std']:.3f}"
        txt, _ = delta(best, key)
        s += (f"; {txt})" if txt else ")")
        s += f", the worst **{worst['strategy']}** ({worst[key]['mean']:.3f}"
        txt, _ = delta(worst, key)
        s += (f"; {txt})." if txt else ").")
        parts.append(s)
    if "topk+oracle" in by and "inbatch" in by:
        txt, _ = delta(by["topk+oracle"], "p10")
        parts.append(f"With a perfect (label) filter, top-k reaches P@10 "
                     f"{by['topk+oracle']['p10']['mean']:.3f} ({txt}): the ceiling for any "
                     "false-negative filter here.")
    if "topk" in by and "topk+filter" in by and "fn_share_chosen" in by["topk"]:
        parts.append(f"The positive-aware filter lowers the share of false negatives among "
                     f"the chosen top-k negatives from "
                     f"{by['topk']['fn_share_chosen']['mean']*100:.0f} % to "
                     f"{by['topk+filter']['fn_share_chosen']['mean']*100:.0f} %"
                     + (f" (SimANS: {by['simans']['fn_share_chosen']['mean']*100:.0f} % → "
                        f"{by['simans+filter']['fn_share_chosen']['mean']*100:.0f} %)"
                        if "simans" in by and "simans+filter" in by else "") + ".")
    sweep = [r for r in summary if r["strategy"].startswith("topk+filter (rel")]
    if sweep and runs and "topk+filter" in by:
        n = sweep[0]["seeds"]  # the default filter on the sweep's seeds, for a like comparison
        base = [r for r in runs if r["strategy"] == "topk+filter" and r["seed"] <= n]
        mean = lambda key: sum(r[key] for r in base) / len(base)  # noqa: E731
        fn = [mean("fn_share_chosen")] + [r["fn_share_chosen"]["mean"] for r in sweep]
        p10 = [mean("p10")] + [r["p10"]["mean"] for r in sweep]
        parts.append(f"Tightening the filter on top-k (TopK-PercPos 95 % → "
                     f"{(1 - float(sweep[-1]['strategy'].split()[-1][:-1])) * 100:.0f} %, "
                     f"seeds 1–{n}) takes the false-negative share of the chosen negatives "
                     + " → ".join(f"{x*100:.0f} %" for x in fn) + " while P@10 reads "
                     + " → ".join(f"{x:.3f}" for x in p10) + ".")
    return " ".join(parts)


# ------------------------------------------------------------------ main


# ------------------------------------------------------------------ mining beside the peers (issue 12)
# python3 bench/run.py --suite mine [--quick] [--mine-shapes Q,N,d,k;...] [--repeats 3]
# Each thread count (1, 2) runs in its own process with OMP/OpenBLAS/MKL thread variables set
# before any library loads; inside it, per shape, the implementations run interleaved, medians
# of --repeats: negsamp f32 (default GEMM: bf16 candidates + exact re-score), negsamp f32 with
# NS_CPU_MINE_GEMM=f32, negsamp on bf16 inputs, faiss-cpu IndexFlatIP, torch (mm + topk over
# query chunks), numpy (matmul + argpartition), and the bare GEMM with no selection (torch.mm over
# the same query chunks, f32 and bf16: what mining cannot go below). Top-k sets: negsamp's default
# and f32-GEMM paths must be identical (exact mining); agreement with faiss/torch/numpy (f32
# GEMMs, whose near-ties may order differently) is reported. Writes .json, .md and a .png of the
# ratios under bench/results/, named by CPU and date.

MINE_SHAPES_FULL = [(4096, 200_000, 384, 100), (4096, 200_000, 384, 1000), (1024, 1_000_000, 768, 100)]
MINE_SHAPES_QUICK = [(1024, 100_000, 384, 100), (1024, 100_000, 384, 1000), (512, 200_000, 768, 100)]


def gemm_library(build):
    exe = os.path.join(build, "tools", "negsamp")
    try:
        out = subprocess.run([exe, "info"], stdout=subprocess.PIPE, text=True).stdout
        for line in out.splitlines():
            if line.startswith("cpu gemm:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown (tools/negsamp not built)"


def torch_topk(torch, q, c, k, chunk=256):
    qt, ct = torch.from_numpy(q), torch.from_numpy(c)
    idx = []
    for i in range(0, qt.shape[0], chunk):
        s = qt[i:i + chunk] @ ct.T
        idx.append(torch.topk(s, k, dim=1).indices)
    return torch.cat(idx).numpy()


def torch_bare_gemm(qt, ct, chunk=256):
    """The score GEMM alone, query chunk by chunk into one reused output (no selection)."""
    import torch
    out = torch.empty((min(chunk, qt.shape[0]), ct.shape[0]), dtype=qt.dtype)
    ctt = ct.T
    for i in range(0, qt.shape[0], chunk):
        qq = qt[i:i + chunk]
        torch.mm(qq, ctt, out=out[:qq.shape[0]])
    return None


def mine_child(shapes, repeats, threads, lib):
    """One process, one thread count: every shape, every implementation, interleaved."""
    import numpy as np
    sys.path.insert(0, os.path.join(ROOT, "python"))
    os.environ["NEGSAMP_LIBRARY"] = lib
    import negsamp as ns
    ctx = ns.Context("cpu", threads=threads)
    peers = {}
    try:
        import faiss
        faiss.omp_set_num_threads(threads)
        peers["faiss"] = faiss
    except Exception as e:  # noqa: BLE001
        log("[mine] faiss skipped:", e)
    try:
        import torch
        torch.set_num_threads(threads)
        peers["torch"] = torch
    except Exception as e:  # noqa: BLE001
        log("[mine] torch skipped:", e)
    rng = np.random.default_rng(0)
    rows = []
    for Q, N, d, k in shapes:
        c = rng.standard_normal((N, d), dtype=np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        q = rng.standard_normal((Q, d), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        bits = lambda a: ((a.view(np.uint32) + 0x7FFF + ((a.view(np.uint32) >> 16) & 1)) >> 16).astype(np.uint16)  # noqa: E731
        q16, c16 = bits(q), bits(c)

        def ns_run(qq, cc, gemm=None, tiles=None):
            for var, val in (("NS_CPU_MINE_GEMM", gemm), ("NS_CPU_MINE_TILES", tiles)):
                if val:
                    os.environ[var] = val
                else:
                    os.environ.pop(var, None)
            try:
                return ns.mine_topk(qq, cc, k, ctx=ctx,
                                    dtype="bfloat16" if qq.dtype == np.uint16 else None)[0]
            finally:
                os.environ.pop("NS_CPU_MINE_GEMM", None)
                os.environ.pop("NS_CPU_MINE_TILES", None)
        impls = {"negsamp": lambda: ns_run(q, c),
                 "negsamp_shared_tile": lambda: ns_run(q, c, tiles="shared"),
                 "negsamp_f32gemm": lambda: ns_run(q, c, "f32"),
                 "negsamp_bf16in": lambda: ns_run(q16, c16),
                 "negsamp_bf16in_f32gemm": lambda: ns_run(q16, c16, "f32"),
                 "numpy": lambda: numpy_topk(q, c, k)[0]}
        if "faiss" in peers:
            index = peers["faiss"].IndexFlatIP(d)
            index.add(c)
            impls["faiss"] = lambda: index.search(q, k)[1]
        if "torch" in peers:
            impls["torch"] = lambda: torch_topk(peers["torch"], q, c, k)
            tq, tc = peers["torch"].from_numpy(q), peers["torch"].from_numpy(c)
            tq16, tc16 = tq.to(peers["torch"].bfloat16), tc.to(peers["torch"].bfloat16)
            impls["gemm_f32"] = lambda: torch_bare_gemm(tq, tc)
            impls["gemm_bf16"] = lambda: torch_bare_gemm(tq16, tc16)
        for fn in impls.values():  # warm-up, untimed
            fn()
        times = {n: [] for n in impls}
        outs = {}
        for _ in range(repeats):
            for n, fn in impls.items():
                t = time.perf_counter()
                outs[n] = fn()
                times[n].append(time.perf_counter() - t)
        row = {"Q": Q, "N": N, "d": d, "k": k, "threads": threads,
               "load": " ".join(open("/proc/loadavg").read().split()[:3])}
        for n in impls:
            row[n] = summary(times[n])
        row["identical_default_vs_f32gemm"] = bool(np.array_equal(outs["negsamp"], outs["negsamp_f32gemm"])
                                                   and np.array_equal(outs["negsamp"],
                                                                      outs["negsamp_shared_tile"]))
        row["identical_bf16in_default_vs_f32gemm"] = bool(
            np.array_equal(outs["negsamp_bf16in"], outs["negsamp_bf16in_f32gemm"]))
        ref = outs["negsamp"]
        row["set_agreement_with_negsamp"] = {
            n: float(np.mean([len(np.intersect1d(outs[n][i], ref[i])) / k
                              for i in range(0, Q, max(1, Q // 128))]))
            for n in impls if n in ("faiss", "torch", "numpy")}
        rows.append(row)
        log(f"[mine] T={threads} Q={Q} N={N} d={d} k={k}: " + ", ".join(
            f"{n} {row[n]['median']:.2f} s" for n in impls))
        del c, q, q16, c16, impls, outs
        if "torch" in peers:
            del tq, tc, tq16, tc16
    return rows


MINE_PEERS = [("faiss", "faiss-cpu IndexFlatIP"), ("torch", "torch mm + topk"),
              ("numpy", "numpy matmul + argpartition"), ("gemm_f32", "bare GEMM f32 (torch.mm)"),
              ("gemm_bf16", "bare GEMM bf16 (torch.mm)")]


def mine_ratio(r, peer, ours):
    if peer not in r or ours not in r:
        return float("nan")
    return r[peer]["median"] / r[ours]["median"]


def mine_report(res):
    m = res["machine"]
    out = ["# Mining beside faiss-cpu, torch and numpy", "",
           f"{m['cpu']}, {m['cores']} cores; GEMM: {res['gemm']}; load average {res['load_start']} "
           f"at the start, {res['load_end']} at the end (`uptime`; a machine shared with other jobs: "
           "timings are noisy, compare ratios within a row).",
           f"Command: `{res['command']}`; medians of {res['repeats']} interleaved runs; "
           f"git {res['git']}.", "",
           "ratio = peer time ÷ negsamp time (> 1: negsamp faster). negsamp = exact mining (bf16 "
           "candidates, exact f32 re-score); `f32 GEMM` = the same exact mining with f32 "
           "candidates; `bf16 in` = bf16 inputs (peers on the f32 data). `bare GEMM` = the score "
           "GEMM alone with no selection (torch.mm; f32 for the f32 rows, bf16 for the bf16 rows): "
           "below 1 means the selection and re-score cost that much on top of a GEMM.", "",
           "`shared tile` = the same exact mining with one score tile threaded by the GEMM "
           "(NS_CPU_MINE_TILES=shared) instead of per-thread sub-tiles.", "",
           "| shape Q × N × d, k | threads | negsamp s | shared tile ÷ negsamp | f32 GEMM s | bf16 in s | faiss ÷ negsamp | "
           "faiss ÷ bf16 in | torch ÷ negsamp | numpy ÷ negsamp | bare f32 GEMM ÷ negsamp | "
           "bare bf16 GEMM ÷ bf16 in | same sets (exact paths) | agreement faiss |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        med = lambda n: r[n]["median"] if n in r else float("nan")  # noqa: E731
        out.append(
            f"| {r['Q']} × {r['N']} × {r['d']}, {r['k']} | {r['threads']} | {med('negsamp'):.2f} | "
            f"{mine_ratio(r, 'negsamp_shared_tile', 'negsamp'):.2f} | {med('negsamp_f32gemm'):.2f} | {med('negsamp_bf16in'):.2f} | "
            f"{mine_ratio(r, 'faiss', 'negsamp'):.2f} | {mine_ratio(r, 'faiss', 'negsamp_bf16in'):.2f} | "
            f"{mine_ratio(r, 'torch', 'negsamp'):.2f} | {mine_ratio(r, 'numpy', 'negsamp'):.2f} | "
            f"{mine_ratio(r, 'gemm_f32', 'negsamp'):.2f} | {mine_ratio(r, 'gemm_bf16', 'negsamp_bf16in'):.2f} | "
            f"{'yes' if r['identical_default_vs_f32gemm'] and r['identical_bf16in_default_vs_f32gemm'] else 'NO'} | "
            f"{r['set_agreement_with_negsamp'].get('faiss', float('nan')):.4f} |")
    by = {(r["Q"], r["N"], r["d"], r["k"], r["threads"]): r for r in res["rows"]}
    out += ["", "Thread scaling 1 → 2 (time at 1 ÷ time at 2; ideal 2, in brackets the share of "
            "ideal):", "",
            "| shape | negsamp | shared tile | bf16 in | faiss | torch | bare f32 GEMM |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for (Q, N, d, k, t), r in by.items():
        if t != 1 or (Q, N, d, k, 2) not in by:
            continue
        r2 = by[(Q, N, d, k, 2)]

        def f(n):
            if n not in r or n not in r2:
                return "—"
            x = r[n]["median"] / r2[n]["median"]
            return f"{x:.2f} ({x / 2:.0%})"
        out.append(f"| {Q} × {N} × {d}, {k} | {f('negsamp')} | {f('negsamp_shared_tile')} | "
                   f"{f('negsamp_bf16in')} | "
                   f"{f('faiss')} | {f('torch')} | {f('gemm_f32')} |")
    return "\n".join(out) + "\n"


def mine_plot(res, path):
    """Bars of peer ÷ negsamp per shape and thread count (f32 inputs left, bf16 inputs right),
    with the issue's targets (2× faiss on f32 inputs, 3× on bf16) as dashed lines."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return None
    rows = res["rows"]
    labels = [f"{r['Q']}×{r['N'] // 1000}k×{r['d']}\nk={r['k']} T={r['threads']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, ours, title, target, bare in (
            (axes[0], "negsamp", "f32 inputs: peer time ÷ negsamp time", 2.0, "gemm_f32"),
            (axes[1], "negsamp_bf16in", "bf16 inputs: peer time ÷ negsamp (bf16 in) time", 3.0,
             "gemm_bf16")):
        peers = [(n, lab) for n, lab in MINE_PEERS if n in ("faiss", "torch", "numpy", bare)]
        w = 0.8 / len(peers)
        for i, (n, lab) in enumerate(peers):
            ax.bar([j + i * w for j in range(len(rows))], [mine_ratio(r, n, ours) for r in rows],
                   w, label=lab)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(target, color="r", lw=0.8, ls="--", label=f"target {target:g}× faiss")
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(rows))])
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("ratio (> 1: negsamp faster)")
    fig.suptitle(f"exact top-k mining, {res['machine']['cpu']}, {res['machine']['cores']} cores, "
                 f"{res['gemm']}; load {res['load_start']} → {res['load_end']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mine_readme(md_path):
    """Replaces README's mining results table (between the markers) with the report's table."""
    readme = os.path.join(ROOT, "README.md")
    text = open(readme).read()
    a, b = "<!-- mining-results:begin -->", "<!-- mining-results:end -->"
    if a not in text or b not in text:
        return False
    body = open(md_path).read()
    rel = os.path.relpath(md_path, ROOT)
    png = md_path[:-len(".md")] + ".png"
    plot = (f"\n![mining ratios]({os.path.relpath(png, ROOT)})\n" if os.path.exists(png) else "")
    new = (text[:text.index(a) + len(a)] + "\n" + body.split("\n", 2)[2] + plot
           + f"\n(from `{rel}`)\n" + text[text.index(b):])
    open(readme, "w").write(new)
    return True


def mine_pool(pooled, row):
    """Adds a child's row to the pooled row of its (shape, threads): runs concatenated."""
    key = (row["Q"], row["N"], row["d"], row["k"], row["threads"])
    if key not in pooled:
        pooled[key] = row
        return
    p = pooled[key]
    for n, v in row.items():
        if isinstance(v, dict) and "runs" in v:
            p[n] = summary(p[n]["runs"] + v["runs"])
    for n in ("identical_default_vs_f32gemm", "identical_bf16in_default_vs_f32gemm"):
        p[n] = p[n] and row[n]
    p["load"] += " / " + row["load"]


def mine_main(args):
    build = os.path.abspath(args.build)
    lib = ensure_build(build)
    subprocess.run(["cmake", "--build", build, "-j2", "--target", "negsamp_cli"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shapes = MINE_SHAPES_QUICK if args.quick else MINE_SHAPES_FULL
    if args.mine_shapes:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.mine_shapes.split(";")]
    repeats = args.repeats or 3
    import numpy as np
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python3 bench/run.py --suite mine" + (" --quick" if args.quick else "")
           + (f" --mine-shapes '{args.mine_shapes}'" if args.mine_shapes else "")
           + f" --repeats {repeats}" + (f" --mine-rounds {args.mine_rounds}" if args.mine_rounds > 1 else ""),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "numpy": np.__version__},
           "gemm": gemm_library(build), "repeats": repeats,
           "load_start": " ".join(open("/proc/loadavg").read().split()[:3]),
           "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                 stdout=subprocess.PIPE, text=True).stdout.strip(), "rows": []}
    # Rounds of (1 thread, 2 threads), so that the thread scaling is measured interleaved too;
    # each (shape, threads) row pools its runs over the rounds.
    rounds = max(1, args.mine_rounds)
    pooled = {}
    for _ in range(rounds):
        for threads in (1, 2):
            env = dict(os.environ)
            for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                env[v] = str(threads)
            with tempfile.NamedTemporaryFile("r", suffix=".json") as tf:
                r = subprocess.run([sys.executable, __file__, "--mine-child", tf.name, str(threads),
                                    json.dumps([list(s) for s in shapes]), str(repeats), lib],
                                   env=env)
                if r.returncode != 0:
                    sys.exit(f"mining child (threads {threads}) failed")
                for row in json.load(open(tf.name)):
                    mine_pool(pooled, row)
    res["rows"] = sorted(pooled.values(), key=lambda r: r["threads"])
    res["load_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    stem = write_results(args, res, "mining-peers", mine_plot, mine_report)
    if mine_readme(stem + ".md"):
        log("README's mining table regenerated")


# ------------------------------------------------------------------ k-means beside faiss (issue 15)
# python3 bench/run.py --suite kmeans [--quick] [--kmeans-shape n,d,k,iterations] [--repeats 3]
# One process, all cores: negsamp.kmeans (random init, tolerance 0: exactly `iterations`
# updates) and faiss.Kmeans (same k, same iterations, no subsampling) on the same data,
# interleaved, medians of --repeats. Both final inertias are recomputed the same way (faiss
# IndexFlatL2 nearest centroid, f64 sum). negsamp runs iterations + 1 assignments (the init's
# and one after each update, so its labels match its centroids); faiss runs `iterations`.

KMEANS_SHAPE_FULL = (100_000, 384, 1024, 10)
KMEANS_SHAPE_QUICK = (20_000, 128, 256, 5)


def kmeans_inertia(faiss, x, centroids):
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids.astype("float32"))
    dist = index.search(x, 1)[0]
    return float(dist.astype("float64").sum())


def kmeans_main(args):
    import numpy as np
    build = os.path.abspath(args.build)
    lib = ensure_build(build)
    subprocess.run(["cmake", "--build", build, "-j2", "--target", "negsamp_cli"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sys.path.insert(0, os.path.join(ROOT, "python"))
    os.environ["NEGSAMP_LIBRARY"] = lib
    try:
        import faiss
    except ImportError as e:
        sys.exit(f"--suite kmeans needs faiss-cpu (bench/requirements.txt): {e}")
    import negsamp as ns
    n, d, k, iters = KMEANS_SHAPE_QUICK if args.quick else KMEANS_SHAPE_FULL
    if args.kmeans_shape:
        n, d, k, iters = (int(v) for v in args.kmeans_shape.split(","))
    repeats = args.repeats or 3
    threads = os.cpu_count()
    faiss.omp_set_num_threads(threads)
    ctx = ns.Context("cpu", threads=threads)
    rng = np.random.default_rng(0)
    # Clustered data (2k true centres, noise), as embeddings are: not uniform noise.
    centres = rng.standard_normal((2 * k, d), dtype=np.float32)
    x = centres[rng.integers(0, 2 * k, n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)

    def run_negsamp():
        r = ns.kmeans(x, k, seed=1, iterations=iters, init="random", tolerance=0, ctx=ctx)
        return r.centroids, list(r.inertia)

    def run_faiss():
        km = faiss.Kmeans(d, k, niter=iters, seed=1, verbose=False,
                          max_points_per_centroid=n)  # no subsampling: every row, as negsamp
        km.train(x)
        return km.centroids, list(km.obj)

    impls = {"negsamp": run_negsamp, "faiss": run_faiss}
    times = {name: [] for name in impls}
    outs = {}
    log(f"[kmeans] n={n} d={d} k={k} iterations={iters}, {threads} threads, {repeats} repeats")
    load0 = " ".join(open("/proc/loadavg").read().split()[:3])
    for rep in range(repeats):
        for name, fn in impls.items():
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
            log(f"[kmeans] {name} run {rep + 1}: {times[name][-1]:.2f} s")
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python3 bench/run.py --suite kmeans" + (" --quick" if args.quick else "")
           + (f" --kmeans-shape {args.kmeans_shape}" if args.kmeans_shape else "")
           + f" --repeats {repeats}" + (f" --mine-rounds {args.mine_rounds}" if args.mine_rounds > 1 else ""),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads,
                       "numpy": np.__version__, "faiss": getattr(faiss, "__version__", "?")},
           "gemm": gemm_library(build), "n": n, "d": d, "k": k, "iterations": iters,
           "repeats": repeats, "load_start": load0,
           "load_end": " ".join(open("/proc/loadavg").read().split()[:3]),
           "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                 stdout=subprocess.PIPE, text=True).stdout.strip()}
    for name in impls:
        res[name] = {"time": summary(times[name]), "curve": outs[name][1],
                     "inertia": kmeans_inertia(faiss, x, outs[name][0])}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"cpu-{os.cpu_count()}core-{slug(cpu_model())}-"
                        f"{res['date'][:10]}-kmeans-faiss" + ("-quick" if args.quick else ""))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name in impls:
            ax.plot(range(len(res[name]["curve"])), res[name]["curve"], marker="o", label=name)
        ax.set_xlabel("assignment pass")
        ax.set_ylabel("inertia (sum of squared distances)")
        ax.set_title(f"k-means, n={n} d={d} k={k}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(stem + ".png", dpi=120)
        res["plot"] = os.path.basename(stem + ".png")
    except Exception as e:  # noqa: BLE001
        log("[kmeans] no plot:", e)
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    ratio = res["faiss"]["time"]["median"] / res["negsamp"]["time"]["median"]
    md = ["# k-means beside faiss.Kmeans", "",
          f"{res['machine']['cpu']}, {threads} threads; GEMM: {res['gemm']}; faiss "
          f"{res['machine']['faiss']}; load average {res['load_start']} at the start, "
          f"{res['load_end']} at the end (a shared machine: timings are noisy, the ratio was "
          "taken interleaved).", f"Command: `{res['command']}`; git {res['git']}.", "",
          f"n = {n}, d = {d}, k = {k}, {iters} updates, random init, every row (no subsampling).",
          "", "| | median s | min s | final inertia (same recomputation) |",
          "| --- | --- | --- | --- |"]
    for name in impls:
        t = res[name]["time"]
        md.append(f"| {name} | {t['median']:.2f} | {t['min']:.2f} | {res[name]['inertia']:.6g} |")
    md += ["", f"faiss time ÷ negsamp time: {ratio:.2f} (> 1: negsamp faster). negsamp's "
           f"{iters + 1} assignments are exact and deterministic (the same bits at any thread "
           f"count, CPU or CUDA); faiss runs {iters}."]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    log(f"wrote {stem}.json/.md")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, fewer seeds (a smoke run)")
    ap.add_argument("--suite",
                    choices=["cpu", "gpu", "quality", "all", "mine", "kmeans", "sample", "loss"],
                    default="all",
                    help="mine: exact mining beside faiss-cpu, torch, numpy at 1 and 2 threads; "
                    "sample: filter + sampling beside numpy and one read of the scores")
    ap.add_argument("--readme", action="store_true",
                    help="regenerate README's results blocks from every suite's latest results "
                    "under bench/results (alone, or after --suite sample)")
    ap.add_argument("--mine-shapes", help="--suite mine: 'Q,N,d,k;Q,N,d,k...' instead of the defaults")
    ap.add_argument("--mine-rounds", type=int, default=1,
                    help="--suite mine: rounds of (1 thread, 2 threads) children, runs pooled")
    ap.add_argument("--mine-child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--kmeans-shape", help="--suite kmeans: 'n,d,k,iterations' instead of the default")
    ap.add_argument("--loss-shapes", help="--suite loss: 'BxD,BxD...' (B = N) instead of the "
                    "defaults (4096x384,4096x768,16384x384,16384x768)")
    ap.add_argument("--loss-impls", help="--suite loss: a subset of "
                    + ",".join(n for n, _ in LOSS_IMPLS))
    ap.add_argument("--symmetric-shape", help="--suite loss: also the symmetric loss at 'BxD' "
                    "(fused vs the two calls)")
    ap.add_argument("--build", default=os.environ.get("NEGSAMP_BUILD",
                                                      os.path.join(ROOT, "build-bench")),
                    help="CMake build directory (configured and built when missing)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per point")
    ap.add_argument("--seeds", type=int, default=5, help="quality seeds (full run)")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for every library (negsamp, faiss, numpy's BLAS); 0 = all cores")
    ap.add_argument("--report-only", metavar="JSON",
                    help="rewrite the Markdown report and plots from a results JSON")
    ap.add_argument("--child-memory", nargs=3, metavar=("IMPL", "B", "D"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_memory:
        impl, B, d = args.child_memory
        return child_memory_main(impl, int(B), int(d))
    if args.mine_child:
        out, threads, shapes, repeats, lib = args.mine_child
        rows = mine_child([tuple(x) for x in json.loads(shapes)], int(repeats), int(threads), lib)
        with open(out, "w") as f:
            json.dump(rows, f)
        return None
    if args.suite == "mine":
        return mine_main(args)
    if args.suite == "kmeans":
        return kmeans_main(args)
    if args.suite == "sample":
        return sample_main(args)
    if args.suite == "loss":
        return loss_main(args)
    if args.readme:
        return readme_regenerate()
    if args.report_only:
        res = json.load(open(args.report_only))
        res["quality"]["summary"] = summarise_quality(res["quality"]["runs"]) \
            if "runs" in (res.get("quality") or {}) else None
        outdir = os.path.dirname(os.path.abspath(args.report_only))
        stem = os.path.basename(args.report_only)[:-len(".json")]
        made = plots(res, outdir, stem)
        res["plots"] = made
        with open(args.report_only, "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(outdir, stem + ".md"), "w") as f:
            f.write(report(res, made, stem))
        return None
    if args.threads > 0:  # before numpy / faiss / libnegsamp load their thread pools
        for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[v] = str(args.threads)
    if args.repeats is None:
        args.repeats = 3

    build = os.path.abspath(args.build)
    lib = ensure_build(build)
    os.environ["NEGSAMP_LIBRARY"] = lib
    sys.path.insert(0, os.path.join(ROOT, "python"))

    import numpy as np
    cores = os.cpu_count()
    gname, _ = gpu_name()
    machine = (slug(gname) if gname else f"cpu-{cores}core-{slug(cpu_model())}")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    stem = machine + ("-quick" if args.quick else "") + "-" + date
    os.makedirs(args.out, exist_ok=True)
    try:
        import faiss
        fv = faiss.__version__
    except Exception:  # noqa: BLE001
        fv = None
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python3 bench/run.py" + (" --quick" if args.quick else "")
           + ("" if args.suite == "all" else f" --suite {args.suite}")
           + (f" --threads {args.threads}" if args.threads else ""),
           "machine": {"name": machine, "cpu": cpu_model(), "cores": cores, "memory_gib": mem,
                       "gpu": gname, "os": platform.platform(), "python": platform.python_version(),
                       "numpy": np.__version__, "faiss": fv,
                       "load_start": " ".join(open("/proc/loadavg").read().split()[:3])},
           "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                 stdout=subprocess.PIPE, text=True).stdout.strip()}
    t0 = time.perf_counter()
    if args.suite in ("cpu", "all"):
        res["cpu"] = suite_cpu(args, lib, build)
    if args.suite in ("gpu", "all"):
        res["gpu"] = suite_gpu(args, lib, args.out, stem)
    if args.suite in ("quality", "all"):
        res["quality"] = suite_quality(args, build)
    res["seconds"] = time.perf_counter() - t0
    res["load_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    made = plots(res, args.out, stem)
    res["plots"] = made
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write(report(res, made, stem))
    log(f"wrote {os.path.join(args.out, stem)}.json/.md and {len(made)} plot(s) "
        f"in {res['seconds']:.0f} s")


# ------------------------------------------------------------------ sampling suite
# python3 bench/run.py --suite sample [--quick] [--repeats N] [--threads T] [--readme]
#   Filter + SimANS sampling (m = 16) at issue 12's shapes: bench/bench_sample (one fresh process
#   per round: read the ids and scores once, ns_filter, ns_sample on every key path, the two
#   calls, the fused ns_filter_sample; draws of every path compared) beside numpy (a fresh
#   process per round: the same filter rules, Gumbel keys, argpartition + sort of the m, without
#   the duplicate-id rule), the two interleaved (order alternating), ratios taken per round and
#   their medians reported. Writes <machine>-<date>-sample.json/.md/.png.

SAMPLE_SHAPES_FULL = [(1000000, 100, 16), (100000, 1000, 16)]
SAMPLE_SHAPES_QUICK = [(100000, 100, 16), (10000, 1000, 16)]


def sample_numpy_child(B, C, m):
    """numpy filter (margin + max score) and SimANS Gumbel-top-m (sorted) on B × C candidates,
    the data drawn like bench_sample's; prints seconds as JSON."""
    import numpy as np
    rng = np.random.default_rng(2)
    s = rng.uniform(-0.2, 0.9, size=(B, C)).astype(np.float32)
    sp = rng.uniform(0.5, 1.0, size=(B, 1)).astype(np.float32)
    ids = rng.integers(0, 20000000, size=(B, C), dtype=np.int64)
    t0 = time.perf_counter()
    float(s.sum()) + float((ids & 1).sum())
    t1 = time.perf_counter()
    keep = (s <= np.float32(0.85)) & ~(s > sp - np.float32(0.05))
    u = rng.uniform(2.0**-24, 1 - 2.0**-24, size=(B, C)).astype(np.float32)
    key = np.where(keep, np.float32(-0.5) * (s - sp) ** 2 - np.log(-np.log(u)), -np.inf)
    top = np.argpartition(-key, m, axis=1)[:, :m]
    order = np.argsort(-np.take_along_axis(key, top, axis=1), axis=1)
    chosen = np.take_along_axis(ids, np.take_along_axis(top, order, axis=1), axis=1)
    t2 = time.perf_counter()
    print(json.dumps({"read_s": t1 - t0, "filter_sample_s": t2 - t1, "m": int(chosen.shape[1])}))


def sample_main(args):
    build = os.path.abspath(args.build)
    ensure_build(build)
    r = subprocess.run(["cmake", "--build", build, "-j2", "--target", "bench_sample"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit("building bench_sample failed:\n" + r.stdout[-3000:])
    exe = os.path.join(build, "bench", "bench_sample")
    shapes = SAMPLE_SHAPES_QUICK if args.quick else SAMPLE_SHAPES_FULL
    rounds = args.repeats or 3
    load = lambda: " ".join(open("/proc/loadavg").read().split()[:3])  # noqa: E731
    import numpy as np
    res = {"suite": "sample",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python3 bench/run.py --suite sample" + (" --quick" if args.quick else "")
           + f" --repeats {rounds}" + (f" --threads {args.threads}" if args.threads else ""),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "numpy": np.__version__},
           "load_start": load(), "rounds": rounds,
           "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                 stdout=subprocess.PIPE, text=True).stdout.strip(), "rows": []}
    tmp = tempfile.mkdtemp(prefix="ns-sample-")
    total, done = len(shapes) * rounds * 2, 0
    for B, C, m in shapes:
        runs = {"negsamp": [], "numpy": []}
        for rd in range(rounds):
            for impl in (["negsamp", "numpy"] if rd % 2 == 0 else ["numpy", "negsamp"]):
                if impl == "negsamp":
                    js = os.path.join(tmp, f"{B}-{C}-{rd}.json")
                    out = subprocess.run([exe, "--B", str(B), "--C", str(C), "--m", str(m),
                                          "--reps", "1", "--threads", str(args.threads),
                                          "--json", js],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
                    pt = json.load(open(js)) if out.returncode == 0 else \
                        {"error": out.stderr[-400:] or out.stdout[-400:]}
                else:
                    out = subprocess.run([sys.executable, os.path.abspath(__file__),
                                          "--sample-numpy-child", str(B), str(C), str(m)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
                    pt = json.loads(out.stdout) if out.returncode == 0 else \
                        {"error": out.stderr[-400:]}
                pt["load"] = load()
                runs[impl].append(pt)
                done += 1
                log(f"[sample {done}/{total}] B={B} C={C} m={m} {impl}: "
                    + (pt["error"] if "error" in pt else
                       f"{(pt.get('fused_s') or pt['filter_sample_s']) * 1e3:.0f} ms"))
        res["rows"].append(sample_row(B, C, m, runs))
    res["load_end"] = load()
    first = next((x for r in res["rows"] for x in r["runs"]["negsamp"] if "cpu" in x), {})
    res["machine"].update({"threads": first.get("threads"), "gemm": first.get("gemm"),
                           "keys": first.get("keys")})
    log(f"machine: {res['machine']['cpu']}, threads {res['machine']['threads']}, "
        f"GEMM {res['machine']['gemm']}, keys {res['machine']['keys']}")
    write_results(args, res, "sample", sample_plot, sample_report)
    if args.readme:
        readme_regenerate()


def sample_row(B, C, m, runs):
    """Per-round ratios (each from one round's side-by-side runs), then their medians."""
    ok = [(a, b) for a, b in zip(runs["negsamp"], runs["numpy"])
          if "error" not in a and "error" not in b]
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    row = {"B": B, "C": C, "m": m, "runs": runs, "rounds_ok": len(ok)}
    for k in ("read_s", "filter_s", "sample_s", "sample_avx2_s", "sample_scalar_s",
              "filter_sample_s", "fused_s", "read_cpu_s", "fused_cpu_s"):
        row[k] = med([a[k] for a, _ in ok if a.get(k, -1) >= 0])
    row["numpy_s"] = med([b["filter_sample_s"] for _, b in ok])
    for k in ("filter_s", "sample_s", "sample_avx2_s", "sample_scalar_s", "filter_sample_s",
              "fused_s"):
        row["x_read_" + k[:-2]] = med([a[k] / a["read_s"] for a, _ in ok if a.get(k, -1) >= 0])
    row["x_read_numpy"] = med([b["filter_sample_s"] / a["read_s"] for a, b in ok])
    row["x_read_fused_cpu"] = med([a["fused_cpu_s"] / a["read_cpu_s"] for a, _ in ok])
    row["numpy_over_fused"] = med([b["filter_sample_s"] / a["fused_s"] for a, b in ok])
    row["numpy_over_two_calls"] = med([b["filter_sample_s"] / a["filter_sample_s"]
                                       for a, b in ok])
    row["draws_identical"] = all(a.get("draws_identical") for a, _ in ok) and bool(ok)
    return row


def sample_report(res):
    mc = res["machine"]
    L = [f"# negsamp filter + sampling, CPU ({res['date']})", "",
         f"{mc['cpu']}, {mc['cores']} cores, {mc.get('threads')} threads; GEMM: {mc.get('gemm')} "
         f"(not used here); keys: {mc.get('keys')}; numpy {mc['numpy']} (1 thread). Load average "
         f"{res['load_start']} at the start, {res['load_end']} at the end (a shared machine: "
         "compare the ratios, each taken within one round, not absolute times).",
         f"Command: `{res['command']}`; {res['rounds']} interleaved rounds, medians; "
         f"git {res['git']}.", "",
         "× read = time ÷ reading every id and score once (the same process, the same round); "
         "SimANS, m = 16, filter rules margin + max score. fused = `ns_filter_sample` (one data "
         "check, filter and sample per row); two calls = `ns_filter` + `ns_sample`; numpy = "
         "mask, Gumbel keys, argpartition + sort of the m (no duplicate-id rule).", "",
         "| B × C | read once ms | ns_filter × read | ns_sample × read | two calls × read | "
         "fused × read | fused × read (CPU time) | numpy × read | numpy ÷ fused | "
         "sample AVX2 ÷ widest | sample scalar ÷ widest | draws identical |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        if not r["rounds_ok"]:
            err = (r["runs"]["negsamp"] + r["runs"]["numpy"])[0].get("error", "")
            L.append(f"| {r['B']:,} × {r['C']:,} | error: {err[:80]} |" + " |" * 10)
            continue
        avx2 = (f"{r['sample_avx2_s'] / r['sample_s']:.2f}"
                if r["sample_avx2_s"] == r["sample_avx2_s"] else "—")
        L.append(f"| {r['B']:,} × {r['C']:,} | {r['read_s'] * 1e3:.0f} | "
                 f"{r['x_read_filter']:.1f} | {r['x_read_sample']:.1f} | "
                 f"{r['x_read_filter_sample']:.1f} | **{r['x_read_fused']:.1f}** | "
                 f"{r['x_read_fused_cpu']:.1f} | {r['x_read_numpy']:.1f} | "
                 f"{r['numpy_over_fused']:.1f} | {avx2} | "
                 f"{r['sample_scalar_s'] / r['sample_s']:.2f} | "
                 f"{'yes' if r['draws_identical'] else 'NO'} |")
    if res.get("plot"):
        L += ["", f"![filter + sampling]({os.path.relpath(res['plot'], ROOT)})"]
    return "\n".join(L) + "\n"


def sample_plot(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return None
    rows = [r for r in res["rows"] if r["rounds_ok"]]
    if not rows:
        return None
    bars = [("x_read_filter", "ns_filter"), ("x_read_sample", "ns_sample"),
            ("x_read_filter_sample", "ns_filter + ns_sample"),
            ("x_read_fused", "ns_filter_sample (fused)"), ("x_read_numpy", "numpy")]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    w = 0.8 / len(bars)
    for i, (k, name) in enumerate(bars):
        ax.bar([j + i * w for j in range(len(rows))], [r[k] for r in rows], w, label=name)
    ax.axhline(10, color="k", ls="--", lw=1, label="target: 10× one read")
    ax.set_yscale("log")
    ax.set_ylim(1, 6 * max(max(r[k] for k, _ in bars) for r in rows))  # room for the legend
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(rows))])
    ax.set_xticklabels([f"{r['B']:,} × {r['C']:,} → {r['m']}" for r in rows], fontsize=8)
    ax.set_ylabel("time ÷ reading the scores once")
    mc = res["machine"]
    ax.set_title(f"filter + SimANS sampling, {mc['cpu']}, {mc.get('threads')} threads, "
                 f"keys {mc.get('keys')}; load {res['load_start']}", fontsize=8)
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ loss suite (issue 12)
# python3 bench/run.py --suite loss [--quick] [--loss-shapes BxD,...] [--repeats N] [--threads T]
#                      [--symmetric-shape BxD] [--readme]
#   InfoNCE forward + backward (B = N, positive of query i = passage i, τ = 0.05, f32, unit
#   rows): negsamp's fused C call (ns_infonce_forward_backward) and its two calls
#   (ns_infonce_forward + ns_infonce_backward), both through bench/bench_infonce; the PyTorch op
#   with autograd, fused (negsamp::infonce_fused) and separate (negsamp::infonce + its backward
#   op); torch (matmul + F.cross_entropy, autograd); numpy (logits materialised). Every
#   implementation reads the same inputs (.npy written once per shape) in a fresh process per
#   round: one untimed warm-up on 8 rows, the peak RSS mark reset (VmHWM), one timed forward +
#   backward, the peak RSS beyond the inputs (gradients included: torch allocates its own inside
#   the call; for the C calls the loss's workspace plus dQ, dP). Rounds interleaved with the
#   order rotated; medians of times, of memory and of per-round ratios torch ÷ impl. The losses
#   of all implementations are compared (same data). Optionally a symmetric row: bench_infonce
#   --symmetric --mode both (fused and two calls alternating in one process).
#   Writes <machine>-<date>-loss.json/.md/.png.

LOSS_SHAPES_FULL = [(4096, 384), (4096, 768), (16384, 384), (16384, 768)]
LOSS_SHAPES_QUICK = [(1024, 384), (2048, 384)]
LOSS_IMPLS = [("fused", "negsamp fused C call (ns_infonce_forward_backward)"),
              ("separate", "negsamp two C calls (ns_infonce_forward + ns_infonce_backward)"),
              ("op_fused", "PyTorch op, fused (negsamp::infonce_fused + autograd)"),
              ("op_separate", "PyTorch op, two calls (negsamp::infonce + its backward op)"),
              ("torch", "torch: matmul + F.cross_entropy, autograd"),
              ("numpy", "numpy: logits materialised, softmax − one-hot, two GEMMs")]
LOSS_TAU = 0.05
LOSS_TARGET = 1.2  # issue 12: forward + backward at least 1.2× torch CPU


def loss_child(impl, qpath, ppath, threads):
    """One forward + backward of `impl` (a Python one) in this fresh process: seconds, peak RSS
    beyond the inputs, the loss. Printed as JSON."""
    import numpy as np
    q, p = np.load(qpath), np.load(ppath)
    B = q.shape[0]
    if impl == "numpy":
        fn = lambda: numpy_infonce(q, p, LOSS_TAU)[0]  # noqa: E731
        numpy_infonce(q[:8], p[:8], LOSS_TAU)
    else:
        import torch
        if threads:
            torch.set_num_threads(threads)
        tq, tp = torch.from_numpy(q), torch.from_numpy(p)
        if impl == "torch":
            import torch.nn.functional as F

            def loss_of(a, b):
                return F.cross_entropy((a @ b.T) / LOSS_TAU, torch.arange(a.shape[0]))
        else:
            sys.path.insert(0, os.path.join(ROOT, "python"))
            from negsamp import torch_ops
            fused = impl == "op_fused"

            def loss_of(a, b):
                return torch_ops.infonce_loss(a, b, temperature=LOSS_TAU, mask_same_id=False,
                                              fused=fused)
        w = [t[:8].clone().requires_grad_(True) for t in (tq, tp)]
        loss_of(*w).backward()  # load the libraries, start the thread pools
        a, b = tq.requires_grad_(True), tp.requires_grad_(True)  # leaves, made before the reset

        def fn():
            loss = loss_of(a, b)
            loss.backward()
            return float(loss)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = proc_status_mib("VmRSS")
    t = time.perf_counter()
    loss = fn()
    secs = time.perf_counter() - t
    peak = proc_status_mib("VmHWM")
    print(json.dumps({"seconds": secs, "extra_mib": peak - before, "loss": float(loss),
                      "threads": threads or os.cpu_count(), "B": B}))


def loss_point(impl, qpath, ppath, B, d, threads, exe):
    """One fresh process of impl on the shape's inputs: its JSON, or {"error": ...}."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072",
               NEGSAMP_LIBRARY=os.path.join(os.path.dirname(os.path.dirname(exe)),
                                            "libnegsamp.so"))
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[v] = str(threads)
    if impl in ("fused", "separate"):
        with tempfile.TemporaryDirectory() as td:
            js = os.path.join(td, "out.json")
            r = subprocess.run([exe, "--inputs", f"{qpath},{ppath}", "--reps", "1", "--mode", impl,
                                "--threads", str(threads), "--json", js], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0 or not os.path.exists(js):
                return {"error": (r.stderr or r.stdout)[-400:]}
            j = json.load(open(js))
        secs = j["fused_s"] if impl == "fused" else j["forward_s"] + j["backward_s"]
        # the loss's workspace plus the dQ, dP it returns (torch's and numpy's are allocated
        # inside their calls, so they count there)
        return {"seconds": secs, "extra_mib": j["loss_mib"] + 2 * B * d * 4 / 2**20,
                "loss": j["loss"], "cpu": j["cpu"], "gemm": j["gemm"],
                "threads": threads or os.cpu_count(),
                "cpu_seconds": j["fused_cpu_s"] if impl == "fused"
                else j["forward_cpu_s"] + j["backward_cpu_s"]}
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, os.path.abspath(__file__),
           "--loss-child", impl, qpath, ppath, str(threads)]
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return {"error": r.stderr[-400:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def loss_row(B, d, runs, impls):
    """Medians of time and memory, per-round ratios torch ÷ impl and their medians, the largest
    relative difference of an implementation's loss from the fused call's."""
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    row = {"B": B, "N": B, "d": d, "runs": runs}
    for n in impls:
        ok = [x for x in runs[n] if "seconds" in x]
        row[n] = {"median_s": med([x["seconds"] for x in ok]),
                  "extra_mib": med([x["extra_mib"] for x in ok]), "ok": len(ok)}
        if "torch" in runs:
            row[n]["torch_over"] = med([t["seconds"] / x["seconds"]
                                        for t, x in zip(runs["torch"], runs[n])
                                        if "seconds" in t and "seconds" in x])
    ref = [x["loss"] for x in runs.get("fused", []) if "loss" in x]
    if ref:
        row["loss"] = ref[0]
        row["max_rel_loss_diff"] = max(
            [abs(x["loss"] - ref[0]) / abs(ref[0]) for n in impls for x in runs[n]
             if "loss" in x] or [float("nan")])
    return row


def loss_symmetric(exe, B, d, threads, rounds):
    """Symmetric InfoNCE, fused and the two calls alternating in one process (bench_infonce
    --mode both): best of rounds each, and the ratio."""
    with tempfile.TemporaryDirectory() as td:
        js = os.path.join(td, "sym.json")
        r = subprocess.run([exe, "--B", str(B), "--N", str(B), "--d", str(d), "--symmetric",
                            "--mode", "both", "--reps", str(rounds), "--threads", str(threads),
                            "--json", js], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        if r.returncode != 0 or not os.path.exists(js):
            return {"B": B, "d": d, "error": (r.stderr or r.stdout)[-400:]}
        j = json.load(open(js))
    return {"B": B, "d": d, "separate_s": j["forward_s"] + j["backward_s"],
            "fused_s": j["fused_s"], "separate_over_fused": (j["forward_s"] + j["backward_s"])
            / j["fused_s"], "reps": rounds}


def loss_main(args):
    import numpy as np
    build = os.path.abspath(args.build)
    ensure_build(build)
    subprocess.run(["cmake", "--build", build, "-j2", "--target", "negsamp_cli"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # `negsamp info`: GEMM
    exe = os.path.join(build, "bench", "bench_infonce")
    if not os.path.exists(exe):
        sys.exit(f"{exe} was not built (bench/CMakeLists.txt)")
    shapes = LOSS_SHAPES_QUICK if args.quick else LOSS_SHAPES_FULL
    if args.loss_shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.loss_shapes.split(",") if s]
    rounds = args.repeats or 3
    threads = args.threads
    impls = [n for n, _ in LOSS_IMPLS]
    if args.loss_impls:
        impls = [n for n in args.loss_impls.split(",") if n]
        unknown = [n for n in impls if n not in dict(LOSS_IMPLS)]
        if unknown:
            sys.exit(f"--loss-impls: unknown {unknown}; known: {[n for n, _ in LOSS_IMPLS]}")
    load = lambda: " ".join(open("/proc/loadavg").read().split()[:3])  # noqa: E731
    try:
        import torch
        tv = torch.__version__
    except Exception:  # noqa: BLE001
        tv = None
        impls = [n for n in impls if n not in ("torch", "op_fused", "op_separate")]
        log("[loss] torch not importable: torch and the PyTorch op left out")
    res = {"suite": "loss",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python3 bench/run.py --suite loss" + (" --quick" if args.quick else "")
           + (f" --loss-shapes {args.loss_shapes}" if args.loss_shapes else "")
           + (f" --loss-impls {args.loss_impls}" if args.loss_impls else "")
           + (f" --symmetric-shape {args.symmetric_shape}" if args.symmetric_shape else "")
           + f" --repeats {rounds}" + (f" --threads {threads}" if threads else ""),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                       "threads": threads or os.cpu_count(), "numpy": np.__version__,
                       "torch": tv, "gemm": gemm_library(build)},
           "impls": {n: lab for n, lab in LOSS_IMPLS if n in impls}, "tau": LOSS_TAU,
           "target": LOSS_TARGET, "rounds": rounds, "load_start": load(),
           "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                 stdout=subprocess.PIPE, text=True).stdout.strip(), "rows": []}
    log(f"[loss] {res['machine']['cpu']}, {res['machine']['threads']} threads, GEMM "
        f"{res['machine']['gemm']}, torch {tv}")
    tmp = tempfile.mkdtemp(prefix="ns-loss-")
    total, done = len(shapes) * rounds * len(impls), 0
    rng = np.random.default_rng(0)
    for B, d in shapes:
        qpath, ppath = os.path.join(tmp, "q.npy"), os.path.join(tmp, "p.npy")
        np.save(qpath, make_data(rng, B, d))
        np.save(ppath, make_data(rng, B, d))
        runs = {n: [] for n in impls}
        for rd in range(rounds):
            for n in impls[rd % len(impls):] + impls[:rd % len(impls)]:
                pt = loss_point(n, qpath, ppath, B, d, threads, exe)
                pt["load"] = load()
                runs[n].append(pt)
                done += 1
                log(f"[loss {done}/{total}] B=N={B} d={d} {n}: "
                    + (f"{pt['seconds']:.2f} s, +{pt['extra_mib']:.0f} MiB, loss {pt['loss']:.5f}"
                       if "seconds" in pt else pt["error"]))
        res["rows"].append(loss_row(B, d, runs, impls))
    shutil.rmtree(tmp, ignore_errors=True)
    if args.symmetric_shape:
        B, d = (int(v) for v in args.symmetric_shape.split("x"))
        res["symmetric"] = loss_symmetric(exe, B, d, threads, rounds)
        log(f"[loss] symmetric B=N={B} d={d}: {res['symmetric']}")
    res["load_end"] = load()
    write_results(args, res, "loss", loss_plot, loss_report)
    print(loss_report(res))
    if args.readme:
        readme_regenerate()


def loss_report(res):
    mc = res["machine"]
    names = list(res["impls"])
    L = [f"# negsamp InfoNCE forward + backward, CPU ({res['date']})", "",
         f"{mc['cpu']}, {mc['cores']} cores, {mc['threads']} threads for every implementation; "
         f"GEMM: {mc['gemm']}; torch {mc['torch']}, numpy {mc['numpy']}. Load average "
         f"{res['load_start']} at the start, {res['load_end']} at the end (a shared machine: "
         "compare the ratios, each taken within one round, not absolute times).",
         f"Command: `{res['command']}`; {res['rounds']} interleaved rounds, one fresh process per "
         f"implementation and round, medians; git {res['git']}.", "",
         "B = N, the positive of query i is passage i, τ = "
         f"{res['tau']}, f32 unit rows, the same inputs for all. × = torch time ÷ the "
         "implementation's time, per round, median (> 1: faster than torch; the issue's target "
         f"is {res['target']}× for the fused call). MiB = peak resident memory of the call "
         "beyond its inputs, gradients included. Implementations: "
         + "; ".join(f"{n} = {lab}" for n, lab in res["impls"].items()) + ".", "",
         "| B = N | d | " + " | ".join(f"{n} s" for n in names)
         + " | " + " | ".join(f"torch ÷ {n}" for n in names if n != "torch")
         + " | " + " | ".join(f"MiB {n}" for n in names) + " | losses agree |",
         "|" + " --- |" * (3 + 2 * len(names) + len([n for n in names if n != "torch"]))]
    for r in res["rows"]:
        cells = [f"{r['B']:,}", str(r["d"])]
        cells += [f"{r[n]['median_s']:.2f}" for n in names]
        for n in names:
            if n == "torch":
                continue
            x = r[n].get("torch_over", float("nan"))
            cells.append(f"**{x:.2f}×**" if n == "fused" else f"{x:.2f}×")
        cells += [f"{r[n]['extra_mib']:.0f}" for n in names]
        diff = r.get("max_rel_loss_diff", float("nan"))
        cells.append(f"{'yes' if diff < 1e-4 else 'NO'} ({diff:.1e})")
        L.append("| " + " | ".join(cells) + " |")
    sym = res.get("symmetric")
    if sym and "error" not in sym:
        L += ["", f"Symmetric loss (B = N = {sym['B']:,}, d = {sym['d']}; `bench_infonce "
              "--symmetric --mode both`, fused and the two calls alternating in one process, best "
              f"of {sym['reps']}): two calls {sym['separate_s']:.2f} s, fused {sym['fused_s']:.2f} s, "
              f"**{sym['separate_over_fused']:.2f}×**."]
    if res.get("plot"):
        L += ["", f"![InfoNCE forward + backward]({os.path.relpath(res['plot'], ROOT)})"]
    return "\n".join(L) + "\n"


def loss_plot(res, path):
    """Left: torch ÷ implementation per shape, the target as a dashed line; right: the peak
    memory beyond the inputs (log scale)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return None
    rows = res["rows"]
    if not rows:
        return None
    names = list(res["impls"])
    labels = [f"B=N={r['B']:,}\nd={r['d']}" for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.2))
    fast = [n for n in names if n != "torch"]
    color = {n: f"C{i}" for i, n in enumerate(names)}  # one colour per implementation
    w = 0.8 / max(1, len(fast))
    for i, n in enumerate(fast):
        ax[0].bar([j + i * w for j in range(len(rows))],
                  [r[n].get("torch_over", float("nan")) for r in rows], w, label=n,
                  color=color[n])
    ax[0].axhline(1.0, color="k", lw=0.8)
    ax[0].axhline(res["target"], color="r", ls="--", lw=1, label=f"target {res['target']}×")
    ax[0].set_ylabel("torch time ÷ time (> 1: faster)")
    ax[0].set_title("InfoNCE forward + backward: speed against torch", fontsize=9)
    w2 = 0.8 / len(names)
    for i, n in enumerate(names):
        ax[1].bar([j + i * w2 for j in range(len(rows))],
                  [max(r[n]["extra_mib"], 0.1) for r in rows], w2, label=n, color=color[n])
    ax[1].set_yscale("log")
    ax[1].set_ylabel("peak MiB beyond the inputs")
    ax[1].set_title("memory of one call (gradients included)", fontsize=9)
    for a, ww, k in ((ax[0], w, len(fast)), (ax[1], w2, len(names))):
        a.set_xticks([j + (k - 1) * ww / 2 for j in range(len(rows))])
        a.set_xticklabels(labels, fontsize=8)
        a.legend(fontsize=7)
        a.grid(True, axis="y", alpha=0.3)
    mc = res["machine"]
    fig.suptitle(f"{mc['cpu']}, {mc['threads']} threads, {mc['gemm']}; torch {mc['torch']}; "
                 f"load {res['load_start']} → {res['load_end']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ README results
# python3 bench/run.py --readme: every suite's latest results (bench/results/*.json, newest by
# the "date" inside) replace the README block between that suite's markers,
#     <!-- <marker>:begin --> ... <!-- <marker>:end -->
# with the suite's Markdown report (written beside its JSON), title line dropped, and its PNG
# plot when the report does not show it. A suite whose markers README lacks is left out; add
# the markers to bring it in.
README_SUITES = [
    # (name, results-file suffix, README marker)
    ("mining", "-mining-peers.json", "mining-results"),
    ("sampling", "-sample.json", "sampling-results"),
    ("loss", "-loss.json", "loss-results"),
    ("wordnet", "-wordnet.json", "wordnet-results"),
    ("kmeans", "-kmeans-faiss.json", "kmeans-results"),
]


def latest_results(suffix, results_dir=None):
    """The newest results JSON of a suite (quick runs excluded), by its recorded date."""
    results_dir = results_dir or os.path.join(HERE, "results")
    best, best_key = None, None
    for name in os.listdir(results_dir) if os.path.isdir(results_dir) else []:
        if not name.endswith(suffix) or "-quick" in name:
            continue
        path = os.path.join(results_dir, name)
        try:
            date = json.load(open(path)).get("date", "")
        except (OSError, ValueError):
            continue
        key = (date, os.path.getmtime(path))
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best


def readme_regenerate(readme=None, results_dir=None):
    """Rewrites each suite's README block from its latest results; returns what it did."""
    readme = readme or os.path.join(ROOT, "README.md")
    text = open(readme).read()
    did = []
    for name, suffix, marker in README_SUITES:
        a, b = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
        js = latest_results(suffix, results_dir)
        if a not in text or b not in text or not js:
            continue
        md = js[:-len(".json")] + ".md"
        if not os.path.exists(md):
            continue
        body = open(md).read().split("\n", 2)[2]  # without the title line and the blank after it
        rel = os.path.relpath(md, os.path.dirname(readme))
        png = md[:-len(".md")] + ".png"
        rel_png = os.path.relpath(png, os.path.dirname(readme))
        plot = (f"\n![{name} ratios]({rel_png})\n"
                if os.path.exists(png) and rel_png not in body else "")
        text = (text[:text.index(a) + len(a)] + "\n" + body + plot + f"\n(from `{rel}`)\n"
                + text[text.index(b):])
        did.append(f"{name} ← {rel}")
    open(readme, "w").write(text)
    for d in did:
        log(f"[readme] {d}")
    return did


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--loss-child":
        loss_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--sample-numpy-child":
        sample_numpy_child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
