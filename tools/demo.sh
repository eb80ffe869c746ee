#!/usr/bin/env bash
# The demo: installs missing packages, builds, and mines negatives for every digits image with
# and without the false-negative filter and SimANS sampling (see README.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/install_deps.sh"
"$root/tools/build.sh"
exec "${NS_BUILD_DIR:-$root/build}/tools/negsamp" demo "$@"
