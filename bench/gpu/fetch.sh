#!/usr/bin/env bash
# Prepares the GPU kit HERE (a Debian bookworm amd64 machine with apt-get and PyPI), idempotent:
#   .gpukit/debs/      the .deb files of bench/gpu/debs.txt (apt-get download; kept when present)
#   .gpukit/whl/       the wheels of bench/gpu/wheels.txt (pip download, cp312 manylinux; none today)
#   .gpukit/data/      ../shared/data/digits (the CLI tests' data set: ../shared does not travel)
#   .gpukit/commit.json   the commit, dirty flag and source fingerprint of this tree
#   .gpukit/SHA256SUMS    checked by bench/gpu_run.sh before it unpacks anything
# then prints the kit's size and what the run tool would send (tracked + untracked-not-ignored
# files + .gpukit) against its 64 MiB limit, and fails above NS_GPU_KIT_MAX_MIB (default 56).
# Run it from anywhere in the checkout the GPU session sends, right before the `run` calls.
#   --refresh   download the .debs and wheels again (e.g. after a Debian point release)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
kit=$root/.gpukit
refresh=0
[[ ${1:-} == --refresh ]] && refresh=1
mkdir -p "$kit/debs" "$kit/whl" "$kit/data"
cd "$root"

# ------------------------------------------------------------------ .debs
arch=$(dpkg --print-architecture 2>/dev/null || echo unknown)
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-unknown}")
if [[ $arch != amd64 || $codename != bookworm ]]; then
    echo "fetch.sh: this machine is $codename/$arch; the kit is tested with Debian bookworm amd64 packages" >&2
    echo "          (set NS_GPU_KIT_ANY_RELEASE=1 to fetch this release's packages anyway)" >&2
    [[ ${NS_GPU_KIT_ANY_RELEASE:-0} == 1 ]] || exit 1
fi
mapfile -t pkgs < <(awk '!/^#/ && NF >= 2 { print $1 }' bench/gpu/debs.txt)
need=()
for p in "${pkgs[@]}"; do
    if ((refresh)); then rm -f "$kit/debs/${p}"_*.deb; fi
    compgen -G "$kit/debs/${p}_*.deb" >/dev/null || need+=("$p")
done
if ((${#need[@]})); then
    echo "fetch.sh: apt-get download ${need[*]}"
    # apt-get download writes into the current folder; as root it warns that _apt cannot write
    # there (harmless). An empty package list means `apt-get update` was never run: run it once.
    if ! (cd "$kit/debs" && apt-get download "${need[@]}" 2>&1 | { grep -v "^W: Download is performed unsandboxed" || true; }); then
        echo "fetch.sh: apt-get download failed; trying apt-get update first" >&2
        apt-get update -qq
        (cd "$kit/debs" && apt-get download "${need[@]}" 2>&1 | { grep -v "^W: Download is performed unsandboxed" || true; })
    fi
fi
for p in "${pkgs[@]}"; do
    n=$(compgen -G "$kit/debs/${p}_*.deb" | wc -l)
    if [[ $n != 1 ]]; then
        echo "fetch.sh: expected one .deb of $p in $kit/debs, found $n (run with --refresh)" >&2
        exit 1
    fi
done

# ------------------------------------------------------------------ wheels (none today)
mapfile -t wheels < <(awk '!/^#/ && NF { print $1 }' bench/gpu/wheels.txt)
((refresh)) && rm -f "$kit"/whl/*.whl
for w in "${wheels[@]}"; do
    name=${w%%==*}
    compgen -G "$kit/whl/$(echo "$name" | tr '-' '_')-*.whl" >/dev/null && continue
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$kit/whl" "$w"
done

# ------------------------------------------------------------------ data the tests read from ../shared
if [[ -f $root/../shared/data/digits/digits.csv.gz ]]; then
    mkdir -p "$kit/data/digits"
    cp -f "$root/../shared/data/digits/digits.csv.gz" "$root/../shared/data/digits/README.md" "$kit/data/digits/" 2>/dev/null ||
        cp -f "$root/../shared/data/digits/digits.csv.gz" "$kit/data/digits/"
    chmod -R u+w "$kit/data"
elif [[ -f $root/shared/data/digits/digits.csv.gz ]]; then
    echo "fetch.sh: shared/ is inside the checkout and travels by itself; no copy"
else
    echo "fetch.sh: no ../shared/data/digits here: the CLI tests that read it will skip on the GPU machine"
fi

# ------------------------------------------------------------------ commit and fingerprint
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=false
[[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]] && dirty=true
read -r fp nfiles < <(python3 bench/gpu/report.py fingerprint --root "$root" --verbose)
cat >"$kit/commit.json" <<EOF
{"commit": "$commit", "branch": "$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)",
 "dirty": $dirty, "source_fingerprint": "$fp", "source_files": $nfiles,
 "fetched": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
EOF

# ------------------------------------------------------------------ checksums, sizes
(cd "$kit" && find debs whl data -type f -print0 | sort -z | xargs -0 -r sha256sum >SHA256SUMS)
kit_bytes=$(du -sb "$kit" | cut -f1)
tree_bytes=$(git ls-files -z -co --exclude-standard 2>/dev/null | xargs -0 -r stat -c %s -- 2>/dev/null |
    awk '{ s += $1 } END { print s + 0 }')
total=$((kit_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "fetch.sh: kit $(mib "$kit_bytes") in $kit:"
(cd "$kit" && find debs whl -type f -printf '%s %p\n' | sort -k2 | awk '{ printf "    %8.1f KiB  %s\n", $1 / 1024, $2 }')
echo "fetch.sh: the run tool would send $(mib "$total") (working tree $(mib "$tree_bytes") + .gpukit $(mib "$kit_bytes")); its limit is 64 MiB"
echo "fetch.sh: commit $commit$([[ $dirty == true ]] && echo ' (uncommitted changes)'), source fingerprint ${fp:0:16}"
max=$((${NS_GPU_KIT_MAX_MIB:-56} * 1048576))
if ((total > max)); then
    echo "fetch.sh: over ${NS_GPU_KIT_MAX_MIB:-56} MiB: ignore or remove large untracked files before the run" >&2
    exit 1
fi
