#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted input, for a bounded time each:
#   tests/fuzz/run.sh [SECONDS_PER_TARGET]      (default 30; NS_FUZZ_SECONDS also sets it)
# Builds build-fuzz/ with clang-14 (-DNS_FUZZ=ON: libFuzzer + ASan + UBSan), then runs each
# target over a working copy of its seed corpus (tests/fuzz/corpus/<target>/) plus the kept
# crashes (tests/fuzz/crashes/<target>/), with its dictionary (tests/fuzz/<target>.dict). A new crash is copied into crashes/<target>/ (commit
# it: every build's ctest replays it from then on, fuzz_replay_<target>) and the script fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-${NS_FUZZ_SECONDS:-30}}
targets=(npy fvecs qrels ids jsonl)
build="$root/build-fuzz"
cc=${NS_FUZZ_CC:-clang-14}
cxx=${NS_FUZZ_CXX:-clang++-14}
command -v "$cc" >/dev/null || { echo "fuzz: $cc not found (tools/install_deps.sh installs it)" >&2; exit 1; }

cmake -S "$root" -B "$build" -DNS_FUZZ=ON -DNS_CUDA=OFF -DNS_MPI=OFF -DNS_NCCL=OFF -DNS_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}" >/dev/null

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_NUM_THREADS=1
failed=()
for t in "${targets[@]}"; do
  work="$build/fuzz-work/$t" art="$build/fuzz-artifacts/$t/"
  mkdir -p "$work" "$art"
  cp -n "$root/tests/fuzz/corpus/$t/"* "$work/" 2>/dev/null || true
  dict=()
  [ -f "$root/tests/fuzz/$t.dict" ] && dict=(-dict="$root/tests/fuzz/$t.dict")
  echo "== fuzz_$t: ${secs}s"
  if ! "$build/tests/fuzz/fuzz_$t" "$work" "$root/tests/fuzz/crashes/$t" "${dict[@]}" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
      -artifact_prefix="$art" -print_final_stats=1 >"$build/fuzz-$t.log" 2>&1; then
    failed+=("$t")
    tail -40 "$build/fuzz-$t.log" >&2
    for f in "$art"crash-* "$art"leak-* "$art"timeout-* "$art"oom-*; do
      [ -e "$f" ] && cp "$f" "$root/tests/fuzz/crashes/$t/" && echo "fuzz: kept $f in tests/fuzz/crashes/$t/" >&2
    done
  fi
  grep -E "stat::number_of_executed_units|stat::new_units_added" "$build/fuzz-$t.log" | tr '\n' ' '
  echo
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]} (inputs kept in tests/fuzz/crashes/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crash"
