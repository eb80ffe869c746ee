#!/usr/bin/env bash
# The consumer test: install negsamp from a build directory into a temporary prefix, move the
# prefix (the installed package must not remember where it was installed), then build and run
# tests/consumer/project/consumer.c against it twice: a separate CMake project that calls
# find_package(negsamp) (shared and static targets), and a Makefile that asks pkg-config.
#   tests/consumer/run.sh <negsamp build dir> [work dir]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:?usage: run.sh <negsamp build dir> [work dir]}" && pwd)
work=${2:-$(mktemp -d)}
rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)

echo "== install into $work/stage, then move it to $work/prefix"
cmake --install "$build" --prefix "$work/stage" >"$work/install.log"
mv "$work/stage" "$work/prefix"
prefix=$work/prefix

echo "== find_package(negsamp)"
cmake -S "$here/project" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release >"$work/cmake-configure.log" 2>&1 ||
  { cat "$work/cmake-configure.log"; exit 1; }
cmake --build "$work/cmake" >"$work/cmake-build.log" 2>&1 ||
  { cat "$work/cmake-build.log"; exit 1; }
"$work/cmake/consumer"
"$work/cmake/consumer_static"

echo "== pkg-config negsamp"
pcdir=$(dirname "$(find "$prefix" -name negsamp.pc -print -quit)")
export PKG_CONFIG_PATH=$pcdir
got=$(pkg-config --variable=prefix negsamp)
if [ "$(cd "$got" && pwd)" != "$prefix" ]; then
  echo "consumer: negsamp.pc gives prefix $got, but the package lies in $prefix" >&2
  exit 1
fi
mkdir -p "$work/make"
make -s -C "$here/project" OUT="$work/make"
echo "consumer test: 4 programs built and passed against $prefix"
