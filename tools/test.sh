#!/usr/bin/env bash
# Every test: installs missing packages, builds, and runs the whole ctest suite (GoogleTest
# suites, MPI multi-rank tests, CLI end-to-end tests, Python binding tests with torch in the
# virtual environment install_deps.sh makes, the installed-package consumer test). CUDA suites
# skip, saying why, where no GPU exists.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/install_deps.sh"
py=${NS_PYTHON:-${NS_VENV:-$root/.venv}/bin/python}  # the interpreter install_deps.sh set up
echo "test.sh: python tests with $py ($("$py" -c 'import torch; print("torch", torch.__version__)' \
  2>/dev/null || echo "no torch: its tests skip"))"
# The python ctest runs with that interpreter (not a system python3 without torch).
"$root/tools/build.sh" -DNS_PYTHON="$py" "$@"
cd "${NS_BUILD_DIR:-$root/build}"
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  ctest --output-on-failure -j"$(nproc)" --timeout 900
