#!/usr/bin/env bash
# The GPU kit: everything negsamp needs a GPU for, from a fresh machine with no package registry,
# in calls that fit a lent GPU's minutes. Documentation: bench/gpu/README.md.
#
#   bash bench/gpu_run.sh test       setup, build (Release, sm_90, ninja), every ctest test on the
#                                    GPU, compute-sanitizer memcheck + racecheck + synccheck over a
#                                    small-shape subset of the CUDA tests (budget 360 s)
#   bash bench/gpu_run.sh bench      setup, build what the benchmarks need, GPU benchmarks with their
#                                    cuBLAS / copy ceilings and their PyTorch peers (budget 300 s)
#   bash bench/gpu_run.sh sanitize   the sanitizer steps of `test` alone (a rerun with time left)
#   bash bench/gpu_run.sh [all]      both, one after the other (bench/run.py calls this)
#   bash bench/gpu_run.sh selftest   (or NS_GPU_KIT_SELFTEST=1) every step that needs no GPU, HERE:
#                                    the kit unpacked into a temporary prefix, the build pointed at it
#                                    and shown to use it, CPU tests; GPU-only steps skipped, said so
#
# Setup: the machine's OpenBLAS, GoogleTest and zlib are used where present; what is missing is
# unpacked (dpkg -x, never into /) from .gpukit/debs (bench/gpu/fetch.sh fetched them here) into
# a private prefix, and CMake and the loader are pointed at it (bench/gpu/kit.sh).
# Results go to $OUT when set (the run tool returns what is there), else bench/results/:
# <gpu>-<date>-<mode>.json, .md and .log, rewritten after every step, so a call killed at its
# limit still returns what it finished. Every step's status is recorded; a failing step does not
# stop later independent ones; every step runs under `timeout`, within the call's budget.
#
# Environment: NS_GPU_BUDGET_S (seconds this call may take, steps are cut to fit; default above),
# BUILD_DIR (default build-gpu), NS_RUN_ID (default date-time), NS_GPU_CMAKE_ARGS (more cmake -D
# arguments), NS_SANITIZE_FILTER / NS_SANITIZE_LARGE_FILTER (gtest filters of test_cuda_parity for
# the sanitizers), NS_BENCH_MINE_Q (queries mined, default 8192), NS_BENCH_FULL=1 (adds Q = 65,536
# mining, negsamp and PyTorch), NS_GPU_KIT_FORCE (kit groups to take from the kit even where the
# machine has them: "all" or e.g. "gtest zlib").
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
mode=${1:-all}
[[ ${NS_GPU_KIT_SELFTEST:-0} == 1 ]] && mode=selftest
case $mode in
test | bench | sanitize | all | selftest) ;;
*)
    sed -n '2,20p' "${BASH_SOURCE[0]}"
    exit 2
    ;;
esac
T0=$(date +%s)
case $mode in
test) budget=${NS_GPU_BUDGET_S:-360} ;;
bench | sanitize) budget=${NS_GPU_BUDGET_S:-300} ;;
all) budget=${NS_GPU_BUDGET_S:-1200} ;;
*) budget=${NS_GPU_BUDGET_S:-3600} ;; # selftest: on a shared 2-core machine
esac
reserve=12 # seconds kept for the last report
left() { echo $((budget - ($(date +%s) - T0))); }
say() { echo "[$(date -u +%H:%M:%S) +$(($(date +%s) - T0))s] $*"; }

# ------------------------------------------------------------------ where things go
gpu_ok=0
gpu_name=""
smi=$(command -v nvidia-smi || true)
for c in /usr/local/nvidia/bin/nvidia-smi /usr/bin/nvidia-smi; do [[ -z $smi && -x $c ]] && smi=$c; done
if [[ -n $smi ]]; then
    export PATH="$PATH:$(dirname "$smi")"
    if "$smi" -L 2>/dev/null | grep -q '^GPU '; then
        gpu_ok=1
        gpu_name=$("$smi" --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
    fi
fi
if [[ $gpu_ok == 0 && $mode != selftest ]]; then  # no nvidia-smi: ask PyTorch
    gpu_name=$(python3 -c 'import sys, torch; sys.exit(1) if not torch.cuda.is_available() else print(torch.cuda.get_device_name(0))' 2>/dev/null) &&
        [[ -n $gpu_name ]] && gpu_ok=1
fi
if [[ $mode == selftest ]]; then
    tmp=$(mktemp -d /tmp/negsamp-gpukit-selftest.XXXXXX)
    build=$tmp/build
    dest=${OUT:-$tmp/out}
    slug=selftest-nogpu
    export NS_GPU_KIT_FORCE=${NS_GPU_KIT_FORCE:-all}
    KIT_PREFIX=$build/_kit_prefix  # as in the GPU modes, so that the dry runs reuse the build
    # NCCL as the image's Python wheel lays it out (nvidia/nccl/{include,lib}), made from the
    # toolkit's NCCL here, so that the wheel path of kit_detect runs too.
    ch=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")")
    if [[ -z ${NS_GPU_KIT_PYNCCL_ROOT:-} && -f $ch/include/nccl.h ]] && so=$(ls "$ch"/lib*/libnccl.so.2 2>/dev/null | head -n1) && [[ -n $so ]]; then
        mkdir -p "$tmp/pynccl/nccl/include" "$tmp/pynccl/nccl/lib"
        for h in "$ch"/include/nccl*; do ln -s "$h" "$tmp/pynccl/nccl/include/"; done
        ln -s "$so" "$tmp/pynccl/nccl/lib/libnccl.so.2"
        export NS_GPU_KIT_PYNCCL_ROOT=$tmp/pynccl
    fi
else
    if [[ $gpu_ok != 1 ]]; then
        echo "gpu_run.sh: no GPU here (nvidia-smi lists none). Run the non-GPU steps with: bash bench/gpu_run.sh selftest" >&2
        exit 3
    fi
    build=${BUILD_DIR:-$root/build-gpu}
    [[ $build == /* ]] || build=$root/$build
    dest=${OUT:-$root/bench/results}
    slug=$(echo "${gpu_name:-gpu}" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9\n' '-' | sed 's/-\+/-/g; s/^-//; s/-$//')
    KIT_PREFIX=$build/_kit_prefix
fi
stem=$slug-${NS_RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}-$mode
state=$build/_kit_state/$stem
mkdir -p "$dest" "$state" "$build" || exit 1
log=$dest/$stem.log
exec 3>&1 4>&2 # the caller's stdout and stderr, restored at the end
exec > >(tee -a "$log") 2>&1
tee_pid=$!
KIT_ROOT=$root
KIT_DIR=${KIT_DIR:-$root/.gpukit}
# shellcheck source=bench/gpu/kit.sh
source "$root/bench/gpu/kit.sh"
py=python3
kpy="$root/bench/gpu/report.py"
rec() { "$py" "$kpy" step --state "$state" "$@" >/dev/null || echo "gpu_run.sh: could not record a step: $*"; }
render() { "$py" "$kpy" render --state "$state" --out "$dest" --stem "$stem" || echo "gpu_run.sh: could not write the report"; }
ms_now() { date +%s%N | cut -c1-13; }

# run_step NAME LIMIT [--to FILE | --stdout FILE] [record options...] -- COMMAND...
# Runs COMMAND under `timeout` (LIMIT seconds, cut to what is left of the budget), records its
# status (ok, fail, timeout, sanitizer-errors, no-device, skipped) and rewrites the report.
# --to FILE: stdout and stderr to FILE; --stdout FILE: stdout to FILE, stderr to the log (or to
# the --stderr FILE).
# Returns COMMAND's exit status (125 when skipped for lack of time).
last_status=""
run_step() {
    local name=$1 lim=$2 to="" out="" err="" extra=()
    shift 2
    while [[ $# -gt 0 && $1 != -- ]]; do
        case $1 in
        --to) to=$2; shift 2 ;;
        --stdout) out=$2; shift 2 ;;
        --stderr) err=$2; shift 2 ;;
        *) extra+=("$1" "$2"); shift 2 ;;
        esac
    done
    shift
    local l eff
    l=$(left)
    eff=$((l - reserve))
    ((lim < eff)) && eff=$lim
    if ((eff < 8)); then
        say "SKIP $name: ${l}s left of this call's ${budget}s budget"
        last_status=skipped
        rec --name "$name" --status skipped --detail "no time left (${l}s of ${budget}s)" "${extra[@]}"
        render
        return 125
    fi
    say "== $name (limit ${eff}s): $*"
    local t rc
    t=$(ms_now)
    if [[ -n $to ]]; then
        timeout -k 10 "$eff" "$@" >>"$to" 2>&1
    elif [[ -n $out && -n $err ]]; then
        timeout -k 10 "$eff" "$@" >>"$out" 2>"$err"
    elif [[ -n $out ]]; then
        timeout -k 10 "$eff" "$@" >>"$out"
    else
        timeout -k 10 "$eff" "$@"
    fi
    rc=$?
    local secs
    secs=$(awk -v a="$t" -v b="$(ms_now)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
    case $rc in
    0) last_status=ok ;;
    124 | 137) last_status=timeout ;;
    99) last_status=sanitizer-errors ;;
    *) last_status=fail ;;
    esac
    say "   $name: $last_status (exit $rc, ${secs}s)"
    rec --name "$name" --status "$last_status" --rc "$rc" --seconds "$secs" --limit "$eff" "${extra[@]}"
    render
    return $rc
}
note_step() {  # note_step NAME STATUS DETAIL: a step decided without running a command
    say "$1: $2${3:+ ($3)}"
    rec --name "$1" --status "$2" --detail "${3:-}"
    render
}

finish() {
    rec --name end --status ok --seconds "$(($(date +%s) - T0))"
    "$py" "$kpy" render --state "$state" --out "$dest" --stem "$stem" --print >/dev/null
    say "gpu_run.sh $mode: done in $(($(date +%s) - T0))s; results: $dest/$stem.{json,md,log}"
    sed -n '/^## Steps/,$p' "$dest/$stem.md" | head -n 80
}

# ------------------------------------------------------------------ setup (seconds)
setup() {
    say "gpu_run.sh $mode: budget ${budget}s, build $build, results $dest/$stem.*"
    "$py" "$kpy" env --state "$state" --root "$root" --mode "$mode" || echo "gpu_run.sh: env record failed"
    if [[ $gpu_ok == 1 && -n $smi ]]; then "$smi" 2>&1 | head -n 20; fi
    render
    # PATH: the toolkit's bin where nvcc / compute-sanitizer are not on it yet.
    local ch
    ch=$(kit_cuda_home)
    [[ -d $ch/bin ]] && export PATH="$PATH:$ch/bin"
    [[ -d $ch/compute-sanitizer ]] && export PATH="$PATH:$ch/compute-sanitizer"

    # The kit: intact? (a half-copied .deb fails here, not in dpkg)
    local kit_state=ok detail=""
    if [[ -f $KIT_DIR/SHA256SUMS ]]; then
        if (cd "$KIT_DIR" && sha256sum -c --quiet SHA256SUMS); then detail="kit intact ($(wc -l <"$KIT_DIR/SHA256SUMS") files)"
        else kit_state=fail; detail="kit files differ from SHA256SUMS"; fi
    else
        detail="no $KIT_DIR/SHA256SUMS: no kit carried (bench/gpu/fetch.sh, carry .gpukit); the machine's packages only"
    fi
    # ../shared/data does not travel: the CLI tests read the digits from there.
    if [[ ! -f $root/../shared/data/digits/digits.csv.gz && -f $KIT_DIR/data/digits/digits.csv.gz ]]; then
        if mkdir -p "$root/../shared/data/digits" 2>/dev/null && cp "$KIT_DIR"/data/digits/* "$root/../shared/data/digits/"; then
            detail="$detail; digits data copied to ../shared/data"
        else
            detail="$detail; cannot write ../shared/data: the CLI tests that read the digits will skip"
        fi
    fi
    note_step kit-files "$kit_state" "$detail"

    # What the machine has, what comes from the kit.
    kit_detect >"$state/kit.txt" 2>&1  # not in a pipe: it sets this shell's KIT_* variables
    cat "$state/kit.txt"
    local groups=() g st=ok
    for g in openblas fortran gtest zlib; do kit_needs "$g" && groups+=("$g"); done
    if ((${#groups[@]})); then
        # gtest's group is unpacked and probed; gtestsrc only when the probe fails.
        kit_unpack "${groups[@]}" 2>&1 | tee -a "$state/kit.txt" || st=fail
        if kit_needs gtest; then
            kit_gtest_probe >"$state/gtest.txt" 2>&1 || st=fail
            cat "$state/gtest.txt" | tee -a "$state/kit.txt"
            kit_say "gtest: $KIT_GTEST_HOW" >>"$state/kit.txt"
        fi
    fi
    local rt
    rt=$(kit_runtime_dir)
    export LD_LIBRARY_PATH="$rt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    kit_export_env >>"$state/kit.txt"
    tail -n 1 "$state/kit.txt"
    kit_say "loader: LD_LIBRARY_PATH starts with $rt ($(ls "$rt" | tr '\n' ' '))" | tee -a "$state/kit.txt"
    # Python wheels (none today): installed into a private folder, never over the image's.
    if compgen -G "$KIT_DIR/whl/*.whl" >/dev/null; then
        if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$KIT_PREFIX/site" "$KIT_DIR"/whl/*.whl; then
            export PYTHONPATH="$KIT_PREFIX/site${PYTHONPATH:+:$PYTHONPATH}"
            kit_say "wheels: installed into $KIT_PREFIX/site" | tee -a "$state/kit.txt"
        else
            st=fail
            kit_say "wheels: pip install from $KIT_DIR/whl FAILED" | tee -a "$state/kit.txt"
        fi
    fi
    note_step setup "$st" "from the kit:${KIT_GROUPS_NEEDED:- nothing}; the machine's:${KIT_GROUPS_SYSTEM:- nothing}; OpenMP $KIT_OPENMP; NCCL $KIT_NCCL_WHERE"
}

# ------------------------------------------------------------------ configure, build, verify
configured=0
built=0
configure() {
    local gen=() args=()
    command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
    if [[ -f $build/CMakeCache.txt ]]; then  # a different generator from an earlier call: start over
        local had
        had=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$build/CMakeCache.txt")
        if [[ ${#gen[@]} -gt 0 && $had != Ninja ]] || [[ ${#gen[@]} -eq 0 && $had == Ninja ]]; then
            rm -rf "$build/CMakeCache.txt" "$build/CMakeFiles"
        fi
    fi
    mapfile -t args < <(kit_cmake_args)
    # shellcheck disable=SC2206
    local more=(${NS_GPU_CMAKE_ARGS:-})
    run_step configure 180 --to "$state/configure.log" -- cmake -S "$root" -B "$build" "${gen[@]}" \
        -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DNS_MPI=OFF -DNS_CUDA_HOST=OFF \
        -DCMAKE_EXPORT_COMPILE_COMMANDS=ON --no-warn-unused-cli "${args[@]}" "${more[@]}"
    local rc=$?
    grep -E "negsamp:|Found (BLAS|GTest|ZLIB|NCCL|CUDAToolkit|OpenMP)|CMake Error|Error" "$state/configure.log" | head -n 30
    if [[ $rc == 0 ]]; then
        configured=1
        if [[ $mode != selftest ]] && ! grep -q "negsamp: CUDA=ON" "$state/configure.log"; then
            note_step cuda-backend fail "configured without the CUDA backend (no nvcc found?): nothing here would test the GPU"
        fi
    else
        tail -n 40 "$state/configure.log"
    fi
}

build_targets() {  # build_targets [TARGET...]
    [[ $configured == 1 ]] || { note_step build skipped "not configured"; return 1; }
    local tg=()
    (($#)) && tg=(--target "$@")
    run_step build 420 --to "$state/build.log" -- cmake --build "$build" -j"$(nproc)" "${tg[@]}"
    local rc=$?
    if [[ $rc == 0 ]]; then built=1; else grep -E "error|Error|FAILED" "$state/build.log" | head -n 40; tail -n 15 "$state/build.log"; fi
    return $rc
}

# Shows, with evidence, which files the build used: every kit group must resolve into the
# prefix, every machine group outside it (ldd, CMakeCache, the link lines).
verify_prefix() {
    local P=$KIT_PREFIX bad=() ev=() c=$build/CMakeCache.txt v
    cval() { sed -n "s|^$1:[A-Z]*=||p" "$c" | head -n1; }
    under() { [[ -n $1 && $1 == "$P"/* && $(readlink -f "$1") == "$P"/* ]]; }  # the path and the file it resolves to
    local lib=$build/libnegsamp.so cli=$build/tools/negsamp
    if [[ ! -f $c ]]; then note_step verify-prefix skipped "no CMakeCache"; return; fi
    v=$(cval BLAS_LIBRARIES)
    local ob
    ob=$(ldd "$lib" 2>/dev/null | awk '/libopenblas/ { print $3 }')
    ev+=("BLAS_LIBRARIES=$v" "libnegsamp.so -> ${ob:-no libopenblas}")
    if kit_needs openblas; then
        under "$v" || bad+=("BLAS_LIBRARIES outside the prefix")
        under "$(cval NS_CBLAS_INCLUDE)" || bad+=("NS_CBLAS_INCLUDE outside the prefix")
        under "$(readlink -f "$ob")" || bad+=("ldd: libopenblas not from the prefix")
    else
        [[ -n $ob ]] && under "$(readlink -f "$ob")" && bad+=("libopenblas from the prefix although the machine has it")
    fi
    local gf
    gf=$(ldd "$lib" 2>/dev/null | awk '/libgfortran/ { print $3 }')
    ev+=("libgfortran -> ${gf:-none}")
    if kit_needs fortran; then under "$(readlink -f "$gf")" || under "$gf" || bad+=("ldd: libgfortran not from the prefix"); fi
    v=$(cval GTest_DIR)
    local gl
    gl=$(grep -rhoE "[^ ]*libgtest\.a" "$build/build.ninja" "$build"/tests/CMakeFiles/*/link.txt 2>/dev/null | head -n1)
    [[ -n $gl && $gl != /* ]] && gl=$build/$gl  # ninja writes paths inside the build folder relative to it
    ev+=("GTest_DIR=$v" "tests link ${gl:-?}")
    if kit_needs gtest; then
        under "$v" || bad+=("GTest_DIR outside the prefix")
        under "$gl" || bad+=("tests not linked with the prefix's libgtest.a")
        grep -q -- "-isystem $P" "$build/compile_commands.json" 2>/dev/null || bad+=("no -isystem into the prefix in compile_commands.json")
    fi
    v=$(cval ZLIB_LIBRARY)
    local z
    z=$(ldd "$cli" 2>/dev/null | awk '/libz\.so/ { print $3 }')
    ev+=("ZLIB_LIBRARY=$v" "negsamp CLI -> ${z:-no libz}")
    if kit_needs zlib; then
        under "$v" || bad+=("ZLIB_LIBRARY outside the prefix")
        under "$(cval ZLIB_INCLUDE_DIR)" || bad+=("ZLIB_INCLUDE_DIR outside the prefix")
        grep -q -e "$P/usr/lib/$KIT_ARCH/libz.so" -e " ${P#"$build"/}/usr/lib/$KIT_ARCH/libz.so" \
            "$build/build.ninja" "$build"/tools/CMakeFiles/*/link.txt 2>/dev/null ||
            bad+=("the CLI is not linked with the prefix's libz.so")
    fi
    local nc
    nc=$(ldd "$lib" 2>/dev/null | awk '/libnccl/ { print $3 }')
    ev+=("libnccl -> ${nc:-not linked}")
    if [[ -n $KIT_NCCL_ROOT ]]; then
        [[ $(cval NCCL_LIBRARY) == "$KIT_NCCL_ROOT"/* ]] || bad+=("NCCL_LIBRARY not the wheel's")
        [[ -n $nc ]] || bad+=("libnegsamp.so does not link libnccl")
    fi
    if ldd "$lib" 2>/dev/null | grep -q "not found"; then bad+=("ldd: $(ldd "$lib" | grep 'not found' | tr -s ' \t' ' ' | tr '\n' ';')"); fi
    printf '   %s\n' "${ev[@]}"
    if ((${#bad[@]})); then
        note_step verify-prefix fail "$(printf '%s; ' "${bad[@]}")evidence: $(printf '%s; ' "${ev[@]}")"
        return 1
    fi
    note_step verify-prefix ok "$(printf '%s; ' "${ev[@]}")"
}

# ------------------------------------------------------------------ GPU tests
run_ctest() {
    [[ $built == 1 ]] || { note_step ctest skipped "not built"; return; }
    run_step ctest "${NS_CTEST_TIMEOUT:-170}" --to "$state/ctest.log" -- \
        ctest --test-dir "$build" --output-on-failure -j"${NS_CTEST_JOBS:-8}" --timeout 120 --no-tests=error
    grep -E "tests passed|Failed|\*\*\*|Total Test time" "$state/ctest.log" | tail -n 40
}

run_sanitizers() {
    [[ $built == 1 ]] || { note_step sanitize skipped "not built"; return; }
    local san parity=$build/tests/test_cuda_parity
    san=$(command -v compute-sanitizer || true)
    [[ -z $san ]] && { note_step sanitize skipped "compute-sanitizer not found"; return; }
    [[ -x $parity ]] || { note_step sanitize skipped "$parity not built"; return; }
    local small=${NS_SANITIZE_FILTER:-'CudaParity.*:-CudaParity.MineTopkManyTilesAndLargeK:CudaParity.InfoNceForwardBackwardF32'}
    local large=${NS_SANITIZE_LARGE_FILTER:-'CudaParity.MineTopkManyTilesAndLargeK:CudaParity.InfoNceForwardBackwardF32'}
    local tools=(memcheck racecheck synccheck) limits=("${NS_SANITIZE_TIMEOUT_MEMCHECK:-100}" \
        "${NS_SANITIZE_TIMEOUT_RACECHECK:-120}" "${NS_SANITIZE_TIMEOUT_SYNCCHECK:-60}") i n=3
    for i in 0 1 2; do
        local tool=${tools[$i]} lim=${limits[$i]} share opts=()
        share=$((($(left) - reserve) / (n - i)))  # a fair share of what is left: no tool starves the next
        ((share < lim)) && lim=$share
        [[ $tool == memcheck ]] && opts=(--leak-check full)
        local f=$state/san-$tool-small.log
        run_step "$tool" "$lim" --to "$f" --tool "$tool" --binary test_cuda_parity --filter "$small" --log "$f" -- \
            "$san" --tool "$tool" --error-exitcode 99 --print-limit 25 "${opts[@]}" "$parity" --gtest_filter="$small"
        san_excerpt "$f"
    done
    # The large cases (k = 16384, several tiles each way) under memcheck, when time is left.
    if (($(left) - reserve > 60)); then
        local f=$state/san-memcheck-large.log
        run_step memcheck-large 150 --to "$f" --tool memcheck --binary test_cuda_parity --filter "$large" --log "$f" -- \
            "$san" --tool memcheck --error-exitcode 99 --print-limit 25 "$parity" --gtest_filter="$large"
        san_excerpt "$f"
    else
        note_step memcheck-large skipped "$(left)s left"
    fi
    # Reads of device memory that nothing wrote, when time is left.
    if (($(left) - reserve > 45)); then
        local f=$state/san-initcheck-small.log
        run_step initcheck 90 --to "$f" --tool initcheck --binary test_cuda_parity --filter "$small" --log "$f" -- \
            "$san" --tool initcheck --error-exitcode 99 --print-limit 25 "$parity" --gtest_filter="$small"
        san_excerpt "$f"
    else
        note_step initcheck skipped "$(left)s left"
    fi
}
san_excerpt() {  # the sanitizer's reports and the test verdicts, not every passing line
    grep -E "^=========|^\[  (FAILED|PASSED)|^\[       OK|ERROR SUMMARY|RACECHECK SUMMARY|not supported" "$1" | head -n 60
}

# ------------------------------------------------------------------ benchmarks
bench_row() {  # bench_row NAME LIMIT COMMAND...: one benchmark process, its JSON rows to bench.jsonl
    local name=$1 lim=$2
    shift 2
    local e=$state/bench-$name.err
    run_step "bench:$name" "$lim" --stdout "$state/bench.jsonl" --stderr "$e" --group bench -- "$@"
    local rc=$?
    [[ -s $e ]] && sed 's/^/   stderr: /' "$e" | tail -n 20
    if [[ $rc != 0 ]]; then  # a row that says why, so the table shows the hole
        "$py" -c 'import json, sys; print(json.dumps({"bench": sys.argv[1], "failed": sys.argv[2]}))' "$name" \
            "$last_status (exit $rc): $(tail -n 1 "$e" 2>/dev/null | cut -c1-300)" >>"$state/bench.jsonl"
        render
    fi
    tail -n 1 "$state/bench.jsonl"
}

run_benchmarks() {
    local b=$build/bench/bench_gpu_ops tp="$py $root/bench/gpu/torch_peers.py"
    [[ -x $b ]] || { note_step benchmarks skipped "$b not built"; return; }
    local q=${NS_BENCH_MINE_Q:-8192} n=2000000 d=768 k=256
    # shellcheck disable=SC2086
    {
        bench_row torch-check 60 $tp check
        bench_row copy 40 "$b" copy $((4 << 30))
        bench_row gemm 40 "$b" gemm 8192 65536 768
        bench_row mine 90 "$b" mine "$q" $n $d $k
        # large k, each beside cuBLAS on the same shape in the miner's tiles (fraction_of_gemm)
        bench_row mine-k4096 90 "$b" mine "$q" $n $d 4096
        bench_row mine-k16384 90 "$b" mine "$q" $n $d 16384
        bench_row torch-mine 120 $tp mine "$q" $n $d $k
        # f32 rows: exact mining via the bf16 GEMM + re-score vs the plain f32 GEMM path
        bench_row mine-f32-exact 150 "$b" mine32 "$q" $n $d $k
        bench_row step-checked-vs-sync-free 60 "$b" step 4096 64 768 8
        bench_row loss 60 "$b" loss 32768 32768 768
        bench_row torch-loss 60 $tp loss 32768 32768 768
        # the fused forward + backward (3 GEMMs per tile) vs the two calls (4) vs cuBLAS's 3 GEMMs
        bench_row loss-fused 90 "$b" lossfused 32768 32768 768 0
        bench_row loss-fused-sym 90 "$b" lossfused 32768 32768 768 1
        # sampling beside one copy of the scores; each row also times every path that runs the
        # shape (forced_stream/shared/global_ms), interleaved: where the stream path should start
        bench_row sample 120 "$b" sample 1000000 1024 16
        bench_row sample-large-C 90 "$b" sample 4096 65536 16  # the stream path (C past shared memory)
        bench_row mine-host-corpus 90 "$b" mine "$q" $n $d $k host
        if [[ ${NS_BENCH_FULL:-0} == 1 ]]; then
            # the issue's shape, k = 256 / 4096 / 16384, each beside cuBLAS (interleaved, median
            # of 3); at k = 16384 the default 4 GiB budget mines in query super-blocks, and a
            # 32 GiB budget (one super-block) shows what the corpus re-reads cost
            bench_row mine-full 150 "$b" mine 65536 $n $d $k
            bench_row mine-full-k4096 240 "$b" mine 65536 $n $d 4096
            bench_row mine-full-k16384 300 "$b" mine 65536 $n $d 16384
            bench_row mine-full-k16384-one-superblock 300 env NS_BENCH_MINE_WORKSPACE=$((32 << 30)) \
                "$b" mine 65536 $n $d 16384
            bench_row torch-mine-full 240 $tp mine 65536 $n $d $k
        fi
    }
}

# ------------------------------------------------------------------ the self-test's own checks
selftest_checks() {
    local fails=() j=$dest/$stem.json
    # 1. detection without forcing: this machine has the packages, so nothing would be unpacked.
    local saved=$NS_GPU_KIT_FORCE
    NS_GPU_KIT_FORCE="" kit_detect >"$state/detect-unforced.txt" 2>&1
    NS_GPU_KIT_FORCE=$saved
    echo "   unforced detection here:"
    sed 's/^/     /' "$state/detect-unforced.txt"
    grep -q "openblas: the machine's" "$state/detect-unforced.txt" || fails+=("unforced: openblas not detected on this machine")
    grep -q "gtest: the machine's" "$state/detect-unforced.txt" || fails+=("unforced: gtest not detected")
    grep -q "zlib: the machine's" "$state/detect-unforced.txt" || fails+=("unforced: zlib not detected")
    kit_detect >/dev/null 2>&1  # restore the forced decisions
    # 2. the packaged GoogleTest's fallback: GoogleTest built from the googletest .deb's sources.
    if [[ ${NS_GPU_KIT_SELFTEST_GTEST_SOURCE:-1} == 1 ]]; then
        local keep=$KIT_PREFIX
        KIT_PREFIX=$tmp/prefix-gtestsrc
        run_step gtest-from-source 300 --to "$state/gtestsrc.log" -- env NS_GPU_KIT_GTEST_FROM_SOURCE=1 \
            bash -c 'source "$0"; KIT_ROOT="$1" KIT_DIR="$2" KIT_PREFIX="$3"; kit_gtest_probe && test -f "$KIT_GTEST_DIR/GTestConfig.cmake" && echo "GTest_DIR=$KIT_GTEST_DIR"' \
            "$root/bench/gpu/kit.sh" "$root" "$KIT_DIR" "$KIT_PREFIX" || fails+=("gtest from source")
        tail -n 3 "$state/gtestsrc.log"
        KIT_PREFIX=$keep
    fi
    # 3. the GPU-only programs fail as they should here, and are recorded.
    if [[ -x $build/bench/bench_gpu_ops ]]; then
        "$build/bench/bench_gpu_ops" copy 1024 >/dev/null 2>"$state/bench-nogpu.txt"
        local rc=$?
        [[ $rc == 4 ]] || fails+=("bench_gpu_ops without a GPU exited $rc, not 4")
        echo "   bench_gpu_ops without a GPU: exit $rc: $(cat "$state/bench-nogpu.txt")"
    else
        fails+=("bench_gpu_ops not built")
    fi
    bench_row torch-check 60 $py "$root/bench/gpu/torch_peers.py" check
    grep -q '"torch_check"' "$state/bench.jsonl" || fails+=("torch_peers.py check wrote no row")
    "$py" -m py_compile "$root/bench/gpu/torch_peers.py" "$root/bench/gpu/report.py" || fails+=("py_compile")
    # 4. the report: valid JSON, the steps recorded, Markdown written, files fit the $OUT rules.
    "$py" "$kpy" check --json "$j" || fails+=("report JSON")
    [[ -s $dest/$stem.md ]] || fails+=("no Markdown report")
    local nfiles
    nfiles=$(find "$dest" -maxdepth 1 -type f -name "$stem*" | wc -l)
    ((nfiles <= 8)) || fails+=("$nfiles result files (more than 8)")
    find "$dest" -maxdepth 1 -type f -name "$stem*" -printf '%f\n' | grep -qv '^[A-Za-z0-9._-]*$' && fails+=("result file names")
    if ((${#fails[@]})); then
        note_step selftest-checks fail "$(printf '%s; ' "${fails[@]}")"
        return 1
    fi
    note_step selftest-checks ok "unforced detection, gtest fallback, bench_gpu_ops exit 4, torch peer row, report"
}

# The GPU modes themselves, driven here through stand-ins for nvidia-smi and compute-sanitizer
# (bench/gpu/stub): same build folder and prefix (nothing is rebuilt), the CUDA tests skip, the
# benchmarks exit 4. Memcheck is made to report an error and racecheck to hang: the kit must
# record the first, cut the second at its timeout and still run synccheck. Then a `test` call is
# killed (its whole process group, as the run tool does) mid-run: its JSON must still be whole.
selftest_dryrun() {
    local stub=$root/bench/gpu/stub o=$tmp/out-dry t
    # The device-sized caps (ctest 170 s) are not what is tested here: a loaded 2-core machine
    # runs the whole suite slower than a 16-core GPU machine.
    local envs=(env PATH="$stub:$PATH" OUT="$o" BUILD_DIR="$build" NS_GPU_BUDGET_S=1800 NS_CTEST_TIMEOUT=1200
        NS_CTEST_JOBS="$(nproc)")
    say "== dry run of 'test' through the stubs (memcheck reports an error, racecheck hangs: expected)"
    t=$(date +%s)
    "${envs[@]}" NS_RUN_ID=dry NS_SANITIZE_TIMEOUT_RACECHECK=15 NS_STUB_SANITIZER_SLEEP=racecheck \
        NS_STUB_SANITIZER_ERRORS=memcheck timeout 400 bash "$root/bench/gpu_run.sh" test >"$state/dry-test.txt" 2>&1
    say "   dry test: exit $? after $(($(date +%s) - t))s"
    say "== dry run of 'bench' through the stubs"
    t=$(date +%s)
    "${envs[@]}" NS_RUN_ID=dry timeout 300 bash "$root/bench/gpu_run.sh" bench >"$state/dry-bench.txt" 2>&1
    say "   dry bench: exit $? after $(($(date +%s) - t))s"
    say "== a 'test' call killed mid-run (process group, SIGKILL, once ctest has started)"
    setsid "${envs[@]}" NS_RUN_ID=killed bash "$root/bench/gpu_run.sh" test >"$state/dry-killed.txt" 2>&1 &
    local pg=$! i
    for i in $(seq 1 120); do
        grep -q '"step": "ctest"' "$o/stub-gpu-killed-test.json" 2>/dev/null && break
        grep -q "== ctest" "$state/dry-killed.txt" 2>/dev/null && { sleep 2; break; }
        sleep 1
    done
    # Its process group, then what `timeout` put in groups of their own (same session).
    kill -KILL -- "-$pg" 2>/dev/null
    local p
    for p in $(ps -o pid= -s "$pg" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    wait "$pg" 2>/dev/null
    ls -l "$o" | sed 's/^/   /'
    # tests/consumer (a separate CMake project, configured by ctest) must have found the kit's BLAS.
    local cc=$build/tests/consumer/work/cmake/CMakeCache.txt cbl
    if [[ -f $cc ]]; then
        cbl=$(sed -n 's/^BLAS_[A-Za-z_]*LIBRARY[A-Za-z_]*:[A-Z]*=//p; s/^BLAS_LIBRARIES:[A-Z]*=//p' "$cc" | grep -m1 openblas)
        echo "   tests/consumer found BLAS: ${cbl:-none}"
        [[ $cbl == "$KIT_PREFIX"/* ]] || { note_step selftest-consumer fail "tests/consumer's BLAS is ${cbl:-none}, not the kit's"; }
    fi
    if "$py" - "$o" <<'PY'; then note_step selftest-dryrun ok "test, bench and a killed test call through the stubs: see $o"; else note_step selftest-dryrun fail "see the lines above and $o"; return 1; fi
import json, os, re, sys
o = sys.argv[1]
bad = []
def load(stem):
    p = os.path.join(o, stem + ".json")
    if not os.path.exists(p):
        bad.append(f"{stem}.json missing")
        return None
    return json.load(open(p))
def st(doc):
    out = {}
    for s in doc["steps"]:
        out.setdefault(s["step"], s)
    return out
t = load("stub-gpu-dry-test")
if t:
    s = st(t)
    for name, want in (("configure", "ok"), ("build", "ok"), ("verify-prefix", "ok"), ("ctest", "ok"),
                       ("memcheck", "sanitizer-errors"), ("racecheck", "timeout"), ("synccheck", "ok")):
        got = s.get(name, {}).get("status")
        if got != want:
            bad.append(f"test: step {name} is {got}, expected {want}")
    c = t.get("ctest") or {}
    if not c.get("finished") or c["counts"]["passed"] < 50 or c["counts"]["failed"]:
        bad.append(f"test: ctest parse {c.get('counts')} finished={c.get('finished')}")
    if (s.get("memcheck", {}).get("sanitizer") or {}).get("errors") != 1:
        bad.append("test: memcheck's error count not parsed")
    z = s.get("synccheck", {}).get("sanitizer") or {}
    if len(z.get("ok_tests", [])) + len(z.get("skipped_tests", [])) < 5:
        bad.append("test: synccheck's test verdicts not parsed")
    if not t.get("finished"):
        bad.append("test: not marked finished")
b = load("stub-gpu-dry-bench")
if b:
    rows = b.get("bench", [])
    names = [r.get("bench") for r in rows]
    for want in ("torch_check", "copy", "gemm", "mine", "torch_mine_topk", "loss", "torch_infonce_fwd_bwd",
                 "sample", "mine-host-corpus"):
        if want not in names:
            bad.append(f"bench: no row {want} (rows {names})")
    if not all("skipped" in r or "failed" in r for r in rows):
        bad.append("bench: a row without a GPU was not marked skipped or failed")
    if not any("no CUDA device" in r.get("failed", "") for r in rows):
        bad.append("bench: the failed rows do not carry the program's reason")
k = load("stub-gpu-killed-test")
if k:
    if k.get("finished"):
        bad.append("killed: marked finished")
    if not any(s["step"] == "build" for s in k["steps"]):
        bad.append("killed: the steps before the kill are missing")
files = os.listdir(o)
if [f for f in files if f.endswith(".tmp")]:
    bad.append("a .tmp file was left behind")
for f in files:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", f):
        bad.append(f"file name {f}")
for stem in ("stub-gpu-dry-test", "stub-gpu-dry-bench", "stub-gpu-killed-test"):
    n = len([f for f in files if f.startswith(stem)])
    if n > 8:
        bad.append(f"{stem}: {n} files")
for x in bad:
    print("   dry run:", x)
print(f"   dry run: {len(bad)} problems")
sys.exit(1 if bad else 0)
PY
}

# ------------------------------------------------------------------ the modes
setup
case $mode in
test)
    configure
    build_targets
    verify_prefix
    [[ $built == 1 ]] && run_step negsamp-info 30 -- "$build/tools/negsamp" info
    run_ctest
    run_sanitizers
    ;;
bench)
    configure
    build_targets bench_gpu_ops
    verify_prefix
    run_benchmarks
    ;;
sanitize)
    configure
    build_targets test_cuda_parity
    verify_prefix
    run_sanitizers
    ;;
all)
    configure
    build_targets
    verify_prefix
    [[ $built == 1 ]] && run_step negsamp-info 30 -- "$build/tools/negsamp" info
    run_ctest
    run_sanitizers
    run_benchmarks
    ;;
selftest)
    configure
    build_targets
    verify_prefix
    [[ $built == 1 ]] && run_step negsamp-info 30 -- "$build/tools/negsamp" info
    if [[ $built == 1 ]]; then
        run_step cpu-tests 300 --to "$state/ctest.log" -- ctest --test-dir "$build" --output-on-failure -j"$(nproc)" \
            --timeout 120 --no-tests=error -R '^B/(Similarity|Filter)\..*/CPU$|NsMath|cli_help|cli_mine_digits|python_tests'
        grep -E "tests passed|Failed|Total Test time" "$state/ctest.log"
    fi
    for s in ctest-on-gpu memcheck racecheck synccheck benchmarks torch-peers; do
        note_step "$s" skipped "GPU-only: no GPU here (self-test)"
    done
    selftest_checks
    [[ $built == 1 && ${NS_GPU_KIT_SELFTEST_DRYRUN:-1} == 1 ]] && selftest_dryrun
    ;;
esac
finish
# Exit status: 0 when every recorded step is ok or skipped for a reason.
fail_steps=$("$py" - "$state/steps.jsonl" <<'PY'
import json, sys
bad = [json.loads(l)["step"] for l in open(sys.argv[1]) if l.strip()
       and json.loads(l)["status"] not in ("ok", "skipped")]
print(" ".join(bad))
PY
)
if [[ -n $fail_steps ]]; then
    say "gpu_run.sh $mode: NOT ok: $fail_steps"
    rc=1
else
    say "gpu_run.sh $mode: all steps ok (or skipped with their reason)"
    rc=0
fi
if [[ $mode == selftest ]]; then
    if [[ ${NS_GPU_KIT_KEEP:-0} == 1 ]]; then
        say "self-test files kept in $tmp"
    else
        rm -rf "$tmp/build" "$tmp/prefix-gtestsrc" "$tmp/pynccl"
        say "self-test report kept in $dest (build and prefix removed; NS_GPU_KIT_KEEP=1 keeps them)"
    fi
fi
# Let tee write its last lines before this process ends (the run tool ends what is left).
exec 1>&3 2>&4 3>&- 4>&-
for _ in $(seq 1 50); do kill -0 "$tee_pid" 2>/dev/null || break; sleep 0.1; done
exit $rc
