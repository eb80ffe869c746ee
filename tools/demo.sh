#!/usr/bin/env bash
# The demo: installs missing packages, builds, trains a small digits embedding with negsamp's
# InfoNCE loss, then mines negatives for every image on the raw pixels and on the trained
# embedding, with and without the false-negative filter and SimANS sampling (see README.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/install_deps.sh"
"$root/tools/build.sh"
exec "${NS_BUILD_DIR:-$root/build}/tools/negsamp" demo "$@"
