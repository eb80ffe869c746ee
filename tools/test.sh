#!/usr/bin/env bash
# Every test: installs missing packages, builds, and runs the whole ctest suite (GoogleTest
# suites, MPI multi-rank tests, CLI end-to-end tests, Python binding tests). CUDA suites skip,
# saying why, where no GPU exists.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/install_deps.sh"
"$root/tools/build.sh" "$@"
cd "${NS_BUILD_DIR:-$root/build}"
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  ctest --output-on-failure -j"$(nproc)" --timeout 900
