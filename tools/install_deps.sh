#!/usr/bin/env bash
# Installs what negsamp needs on a fresh Debian machine of this project's kind (idempotent:
# installs only what is missing). The CUDA toolkit is expected where present; without it the
# CPU backend builds alone.
set -euo pipefail
need=()
for pkg in cmake g++ pkg-config libopenblas-dev libgtest-dev openmpi-bin libopenmpi-dev zlib1g-dev python3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
for pkg in clang-14 libclang-rt-14-dev libomp-14-dev; do  # tests/fuzz/run.sh: libFuzzer
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "install_deps: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
missing_py=()
for mod in numpy pytest; do
  python3 -c "import $mod" >/dev/null 2>&1 || missing_py+=("$mod")
done
if [ ${#missing_py[@]} -gt 0 ]; then
  echo "install_deps: pip installing ${missing_py[*]}"
  python3 -m pip install -q "${missing_py[@]}"
fi
