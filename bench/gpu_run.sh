#!/usr/bin/env bash
# One run of everything that needs a GPU, from the repository root:
#   configure + build (Release, CUDA arch 90) → ctest → compute-sanitizer memcheck and racecheck
#   over the CUDA tests → GPU benchmarks (mining, loss, sampling, with their cuBLAS / copy
#   ceilings, and PyTorch beside them when `import torch` works) → bench/results/<gpu>-<date>.json
#   and .md.
# Environment: BUILD_DIR (default build-gpu); NS_STEPS (default "build test sanitize bench torch":
# run a subset per call where one call may not take long, e.g. NS_STEPS=build, then
# NS_STEPS=test, ... with the same NS_RUN_ID so the results gather in one file);
# NS_RUN_ID (default: date-time); NS_BENCH_MINE_Q (queries mined, default 8192; the full
# Q = 65,536 run takes ~8× longer: NS_BENCH_FULL=1); NS_SANITIZE_FILTER (gtest filter for the
# sanitizer runs, default every CUDA case); NS_SANITIZE_TIMEOUT (seconds per binary, 1800).
set -uo pipefail

root=$(pwd)
if [[ ! -f "$root/include/negsamp.h" ]]; then
    echo "gpu_run.sh: run me from the repository root" >&2
    exit 1
fi
build=${BUILD_DIR:-build-gpu}
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_run.sh: nvidia-smi not found: this script needs a GPU machine" >&2
    exit 1
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr -c 'A-Za-z0-9\n' '-' | sed 's/-\+/-/g; s/-$//')
stamp=${NS_RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}
steps=" ${NS_STEPS:-build test sanitize bench torch} "
out_dir="$root/bench/results"
mkdir -p "$out_dir"
base="$out_dir/$gpu-$stamp"
log="$base.log"
raw="$base.jsonl"
touch "$raw"
echo "gpu_run.sh: $gpu, steps:$steps results in $base.*" | tee -a "$log"
want() { [[ $steps == *" $1 "* ]]; }
# Step statuses persist next to the results, so split calls add up.
set_status() { echo "$2" >"$base.status.$1"; }
get_status() { cat "$base.status.$1" 2>/dev/null || echo skipped; }

# ------------------------------------------------------------------ build
if want build; then
    if cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >>"$log" 2>&1 &&
        cmake --build "$build" -j"$(nproc)" >>"$log" 2>&1; then
        set_status build ok
    else
        set_status build fail
        echo "build failed: see $log" >&2
    fi
fi
built=0
[[ -f $build/CMakeCache.txt && $(get_status build) != fail ]] && built=1

# ------------------------------------------------------------------ tests
if want test && [[ $built == 1 ]]; then
    if ctest --test-dir "$build" --output-on-failure -j4 >>"$log" 2>&1; then set_status ctest ok; else set_status ctest fail; fi
fi

# ------------------------------------------------------------------ sanitizers
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if want sanitize && [[ $built == 1 && -x $san ]]; then
    set_status memcheck ok
    set_status racecheck ok
    # Every test binary, restricted to its CUDA cases (test_cuda_parity: all of it).
    for t in "$build"/tests/test_*; do
        [[ -x $t && -f $t ]] || continue
        filter=${NS_SANITIZE_FILTER:-'*CUDA*:*Cuda*:*cuda*'}
        [[ -z ${NS_SANITIZE_FILTER:-} && $(basename "$t") == test_cuda_parity ]] && filter='*'
        for tool in memcheck racecheck; do
            extra=()
            [[ $tool == memcheck ]] && extra=(--leak-check full)
            echo "== $tool $(basename "$t") --gtest_filter=$filter" >>"$log"
            if ! timeout "${NS_SANITIZE_TIMEOUT:-1800}" "$san" --tool "$tool" --error-exitcode 99 "${extra[@]}" \
                "$t" --gtest_filter="$filter" >>"$log" 2>&1; then
                set_status "$tool" fail
            fi
        done
    done
fi

# ------------------------------------------------------------------ benchmarks
bench="$build/bench/bench_gpu_ops"
if want bench && [[ $built == 1 && ! -x $bench ]]; then
    # Not (yet) a CMake target: build it against the library just built.
    cuda_home=${CUDA_HOME:-/usr/local/cuda}
    bench="$build/bench_gpu_ops"
    gcc -std=c11 -O2 -DNS_HAVE_CUDA=1 "$root/bench/bench_gpu_ops.c" -I"$root/include" -I"$cuda_home/include" \
        -L"$build" -lnegsamp -L"$cuda_home/lib64" -lcudart -lcublas -Wl,-rpath,"$root/$build" \
        -Wl,-rpath,"$build" -o "$bench" >>"$log" 2>&1 || echo "bench build failed: see $log" >&2
fi
mine_q=${NS_BENCH_MINE_Q:-8192}
[[ ${NS_BENCH_FULL:-0} == 1 ]] && mine_q=65536
run_bench() {
    echo "== bench $*" >>"$log"
    if ! "$bench" "$@" >>"$raw" 2>>"$log"; then echo "bench $* failed: see $log" >&2; fi
}
if want bench && [[ -x $bench ]]; then
    run_bench copy $((4 << 30))
    run_bench gemm 8192 65536 768
    # mining at k = 256, 4096, 16384, each beside cuBLAS on the same shape in the miner's tiles
    for k in 256 4096 16384; do run_bench mine "$mine_q" 2000000 768 $k; done
    run_bench loss 32768 32768 768
    run_bench sample 2000 65536 16      # the large-C path (arena scratch); before the 1M row,
    run_bench sample 1000000 1024 16    # which the derived sample_* figures below read
fi

# ------------------------------------------------------------------ PyTorch beside it
if want torch && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "== torch" >>"$log"
    NS_MINE_Q=$mine_q python3 - >>"$raw" 2>>"$log" <<'PY' || echo "torch comparison failed: see $log" >&2
import json, os, time
import torch
import torch.nn.functional as F
dev = "cuda"
name = torch.cuda.get_device_name(0)

def timed(fn, reps=3):
    best = 1e30
    for r in range(reps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if r:
            best = min(best, (time.perf_counter() - t) * 1e3)
    return best

# Mining: matmul + topk over corpus chunks, merged, bf16 (what a PyTorch user writes).
Q, N, d, k, chunk = int(os.environ["NS_MINE_Q"]), 2_000_000, 768, 256, 65536
q = torch.randn(Q, d, device=dev, dtype=torch.bfloat16)
c = torch.randn(N, d, device=dev, dtype=torch.bfloat16)
def mine():
    best_s = torch.full((Q, k), float("-inf"), device=dev)
    best_i = torch.zeros((Q, k), dtype=torch.long, device=dev)
    for qs in range(0, Q, 8192):
        qq = q[qs:qs + 8192]
        bs, bi = best_s[qs:qs + 8192], best_i[qs:qs + 8192]
        for c0 in range(0, N, chunk):
            s = (qq @ c[c0:c0 + chunk].T).float()
            ts, ti = s.topk(k, dim=1)
            allv = torch.cat([bs, ts], 1)
            alli = torch.cat([bi, ti + c0], 1)
            v, pos = allv.topk(k, dim=1)
            bs.copy_(v)
            bi.copy_(alli.gather(1, pos))
ms = timed(mine, reps=1)
print(json.dumps({"bench": "torch_mine_topk", "gpu": name, "Q": Q, "N": N, "d": d, "k": k, "ms": ms,
                  "effective_tflops": 2.0 * Q * N * d / (ms * 1e-3) / 1e12}))
del q, c
torch.cuda.empty_cache()

# Loss: matmul + cross_entropy forward + backward, bf16 inputs, peak extra memory.
B = Nn = 32768
qq = (torch.randn(B, d, device=dev) * 0.05).to(torch.bfloat16).requires_grad_()
pp = (torch.randn(Nn, d, device=dev) * 0.05).to(torch.bfloat16).requires_grad_()
labels = torch.arange(B, device=dev)
def fwd():
    return F.cross_entropy((qq @ pp.T).float() / 0.05, labels)
def fwd_bwd():
    qq.grad = pp.grad = None
    fwd().backward()
torch.cuda.synchronize()
base = torch.cuda.memory_allocated()
torch.cuda.reset_peak_memory_stats()
fwd_bwd()
torch.cuda.synchronize()
extra = torch.cuda.max_memory_allocated() - base
print(json.dumps({"bench": "torch_infonce_fwd_bwd", "gpu": name, "B": B, "N": Nn, "d": d, "dtype": "bf16",
                  "forward_ms": timed(lambda: fwd()), "forward_backward_ms": timed(fwd_bwd),
                  "extra_bytes": extra}))
PY
fi

# ------------------------------------------------------------------ JSON + Markdown
status_build=$(get_status build) status_ctest=$(get_status ctest)
status_memcheck=$(get_status memcheck) status_racecheck=$(get_status racecheck)
python3 - "$raw" "$base" "$gpu" "$status_build" "$status_ctest" "$status_memcheck" \
    "$status_racecheck" <<'PY'
import json, sys
raw, base, gpu, sb, sc, sm, sr = sys.argv[1:8]
rows = [json.loads(l) for l in open(raw) if l.strip().startswith("{")]
by = {r["bench"]: r for r in rows}
derived = {}
if "mine_topk" in by and "cublas_gemm_bf16" in by:
    derived["mine_fraction_of_cublas"] = by["mine_topk"]["effective_tflops"] / by["cublas_gemm_bf16"]["tflops"]
if "mine_topk" in by and "torch_mine_topk" in by:
    derived["mine_speedup_vs_torch"] = by["torch_mine_topk"]["ms"] / by["mine_topk"]["ms"]
if "infonce_fwd_bwd" in by and "torch_infonce_fwd_bwd" in by:
    a, t = by["infonce_fwd_bwd"], by["torch_infonce_fwd_bwd"]
    derived["loss_speedup_vs_torch"] = t["forward_backward_ms"] / a["forward_backward_ms"]
    derived["loss_memory_ratio_vs_torch"] = t["extra_bytes"] / max(1, a["extra_bytes"])
for r in rows:
    if r["bench"] == "mine_topk" and r.get("fraction_of_gemm"):
        derived[f"mine_k{r['k']}_fraction_of_same_shape_gemm"] = r["fraction_of_gemm"]
    if r["bench"] == "sample_simans" and r.get("ratio_to_copy"):
        derived[f"sample_C{r['C']}_ratio_to_score_copy"] = r["ratio_to_copy"]
if "sample_simans" in by and "copy_d2d" in by:
    bw = by["copy_d2d"]["read_plus_write_GBps"] / 2 * 1e9  # one direction of the copy
    s = by["sample_simans"]
    derived["sample_floor_scores_ms"] = s["score_bytes"] / bw * 1e3
    derived["sample_floor_inputs_ms"] = s["input_bytes"] / bw * 1e3
    derived["sample_ratio_to_score_floor"] = s["ms"] / derived["sample_floor_scores_ms"]
doc = {"gpu": gpu, "build": sb, "ctest": sc, "memcheck": sm, "racecheck": sr, "results": rows,
       "derived": derived}
json.dump(doc, open(base + ".json", "w"), indent=1)
with open(base + ".md", "w") as f:
    f.write(f"# negsamp GPU run on {gpu}\n\n")
    f.write(f"build {sb}, ctest {sc}, compute-sanitizer memcheck {sm}, racecheck {sr}\n\n")
    f.write("| benchmark | shape | time (ms) | rate / memory |\n| --- | --- | --- | --- |\n")
    for r in rows:
        shape = " ".join(f"{k}={r[k]}" for k in ("Q", "B", "N", "C", "M", "K", "d", "k", "m", "bytes", "corpus") if k in r)
        ms = r.get("forward_backward_ms", r.get("ms", ""))
        extra = []
        for k in ("tflops", "effective_tflops", "read_plus_write_GBps", "forward_ms", "extra_bytes", "largest_BN_estimate"):
            if k in r:
                extra.append(f"{k} {r[k]:.4g}" if isinstance(r[k], float) else f"{k} {r[k]}")
        f.write(f"| {r['bench']} | {shape} | {ms if isinstance(ms, str) else f'{ms:.3f}'} | {', '.join(extra)} |\n")
    if derived:
        f.write("\n| derived | value |\n| --- | --- |\n")
        for k, v in derived.items():
            f.write(f"| {k} | {v:.3f} |\n")
print(open(base + ".md").read())
PY
echo "gpu_run.sh: done: build $status_build, ctest $status_ctest, memcheck $status_memcheck, racecheck $status_racecheck"
[[ $status_build != fail && $status_ctest != fail && $status_memcheck != fail && $status_racecheck != fail ]]
