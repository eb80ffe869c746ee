#!/usr/bin/env bash
# Builds the CUDA backend on the host execution layer and runs every CUDA suite through it:
#   tests/cuda_host/run.sh [forward] [reverse] [asan]     (default: all three, as CI does)
# forward/reverse: build-cudahost (Release), fibers of each block in forward / reverse order;
# asan: build-cudahost-asan (RelWithDebInfo, ASan+UBSan). Extra ctest arguments in NS_CTEST_ARGS
# (e.g. NS_CTEST_ARGS="-R CudaParity"). See tests/cuda_host/README.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
passes=("$@")
[ ${#passes[@]} -eq 0 ] && passes=(forward reverse asan)
# The parity suite (CudaParity.*), the CUDA instances of the per-op suites (*/CUDA, Cuda*), the
# layer's own planted-fault tests (Layer.*) and the NCCL communicator on the layer's one-rank NCCL
# (CommNccl.*).
suites='CUDA|Cuda|^Layer\.|^CommNccl\.'
# The sampler's distribution tests draw hundreds of thousands of samples: they check statistics,
# not memory, and run in the forward and reverse passes; under ASan they would take 10+ minutes.
statistical='InDistribution|GivesEqualFrequencies'
t0=$(date +%s)
for pass in "${passes[@]}"; do
  s=$(date +%s)
  case $pass in
    forward|reverse)
      NS_BUILD_DIR="$root/build-cudahost" "$root/tools/build.sh" -DNS_CUDA_HOST=ON
      order=forward
      [ "$pass" = reverse ] && order=reverse
      (cd "$root/build-cudahost" &&
        NS_CUDA_HOST_QUIET=1 NS_CUDA_HOST_ORDER=$order \
        ctest --output-on-failure -j2 --timeout 900 -R "$suites" ${NS_CTEST_ARGS:-})
      ;;
    asan)
      NS_BUILD_DIR="$root/build-cudahost-asan" NS_BUILD_TYPE=RelWithDebInfo \
        "$root/tools/build.sh" -DNS_CUDA_HOST=ON -DNS_SANITIZE=ON
      (cd "$root/build-cudahost-asan" &&
        NS_CUDA_HOST_QUIET=1 \
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        LSAN_OPTIONS=suppressions=$root/tools/lsan.supp \
        ctest --output-on-failure -j2 --timeout 1800 -R "$suites" -E "$statistical" ${NS_CTEST_ARGS:-})
      ;;
    *) echo "unknown pass: $pass (forward, reverse, asan)" >&2; exit 2 ;;
  esac
  echo "== cuda_host $pass: $(( $(date +%s) - s )) s"
done
echo "== cuda_host done in $(( $(date +%s) - t0 )) s"
