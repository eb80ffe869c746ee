#!/usr/bin/env bash
# Installs what negsamp needs on a fresh Debian machine of this project's kind (idempotent:
# installs only what is missing, quiet when nothing is). The CUDA toolkit is expected where
# present; without it the CPU backend builds alone.
#
# Python: a virtual environment, ${NS_VENV:-<repo>/.venv} (git-ignored), made from python3
# with numpy, pytest and torch, so the system's ("externally managed") Python is never
# modified. tools/test.sh and the python ctest use its interpreter.
#   NS_VENV=dir         the environment's folder (default <repo>/.venv)
#   NS_BASE_PYTHON=py   the interpreter it is made from (default python3)
#   NS_NO_TORCH=1       leave torch out (its tests then skip, saying so)
#   NS_REQUIRE_TORCH=1  fail when torch cannot be installed (default: warn and go on)
# torch comes from PyPI: the default Linux x86_64 wheel with its CUDA libraries (PyPI has no
# CPU-only one for this platform); measured on this project's machine: 71-81 s, 5.4 GB venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${NS_VENV:-$root/.venv}

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=0
apt_install() {
  if [ $apt_updated -eq 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  echo "install_deps: apt-get install $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

need=()
for pkg in cmake g++ make pkg-config libopenblas-dev libgtest-dev openmpi-bin libopenmpi-dev \
           zlib1g-dev python3 python3-venv; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
for pkg in libopenblas-openmp-dev libdnnl-dev; do  # CPU GEMM, one OpenMP pool (CMakeLists.txt "GEMM")
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
for pkg in clang-14 libclang-rt-14-dev libomp-14-dev; do  # tests/fuzz/run.sh: libFuzzer
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ "${NS_WITH_WORDNET:-0}" = 1 ] && ! dpkg -s wordnet-base >/dev/null 2>&1 && need+=(wordnet-base)  # bench/wordnet_study.py
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi

# ---------------------------------------------------------------- the virtual environment
# The interpreter the environment is made from: NS_BASE_PYTHON (not NS_PYTHON, which names the
# interpreter the tests run: tools/test.sh).
py=${NS_BASE_PYTHON:-python3}
if ! "$venv/bin/python" -c "import sys" >/dev/null 2>&1; then
  echo "install_deps: creating the virtual environment $venv ($("$py" --version 2>&1))"
  rm -rf "$venv"
  if ! "$py" -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 needs python3.X-venv for ensurepip.
    ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python$ver-venv" || true
    rm -rf "$venv"
    "$py" -m venv "$venv"
  fi
fi
vpy=$venv/bin/python
pip_install() {
  "$vpy" -m pip install -q --disable-pip-version-check --progress-bar off "$@"
}
missing=()
for mod in numpy pytest; do
  "$vpy" -c "import $mod" >/dev/null 2>&1 || missing+=("$mod")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: pip install ${missing[*]} into $venv"
  pip_install "${missing[@]}"
fi
if [ "${NS_NO_TORCH:-0}" != 1 ] && ! "$vpy" -c "import torch" >/dev/null 2>&1; then
  echo "install_deps: pip install torch into $venv (from PyPI, about 2.5 GB of wheels)"
  start=$(date +%s)
  if pip_install torch; then
    echo "install_deps: torch $("$vpy" -c 'import torch; print(torch.__version__)') installed" \
         "in $(( $(date +%s) - start )) s"
  elif [ "${NS_REQUIRE_TORCH:-0}" = 1 ]; then
    echo "install_deps: torch could not be installed (NS_REQUIRE_TORCH=1)" >&2
    exit 1
  else
    echo "install_deps: WARNING: torch could not be installed; the torch tests will skip" >&2
  fi
fi
# negsamp.sentence_transformers (issue 14): sentence-transformers and datasets from PyPI, after
# torch (they pull transformers, tokenizers, huggingface-hub, pyarrow; [train]: accelerate, for
# SentenceTransformerTrainer); their tests skip without.
#   NS_NO_ST=1  leave them out
if [ "${NS_NO_ST:-0}" != 1 ] && "$vpy" -c "import torch" >/dev/null 2>&1 &&
   ! "$vpy" -c "import sentence_transformers, datasets, accelerate, pyarrow" >/dev/null 2>&1; then
  echo "install_deps: pip install sentence-transformers datasets pyarrow into $venv"
  start=$(date +%s)
  # pyarrow (datasets pulls it too): python -m negsamp.parquet and the cli_beir_parquet test
  if pip_install "sentence-transformers[train]" datasets pyarrow; then
    echo "install_deps: sentence-transformers and datasets installed in $(( $(date +%s) - start )) s"
  else
    echo "install_deps: WARNING: sentence-transformers/datasets not installed; their tests skip" >&2
  fi
fi
