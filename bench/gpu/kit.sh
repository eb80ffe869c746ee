# shellcheck shell=bash
# The GPU kit's setup functions, sourced by bench/gpu_run.sh (never run on its own):
#   kit_detect           what the machine has (BLAS, GoogleTest, zlib, Fortran runtime, OpenMP, NCCL)
#   kit_unpack           dpkg -x the .deb groups the machine lacks into a private prefix (never /)
#   kit_gtest_probe      does the packaged libgtest.a link with this machine's g++? else build it
#   kit_cmake_args       the -D arguments that point the CMake build at that prefix
#   kit_runtime_dir      symlinks to the runtime libraries the machine lacks (for LD_LIBRARY_PATH)
#   kit_export_env       CMAKE_PREFIX_PATH / CMAKE_LIBRARY_PATH / NCCL_ROOT for the tests' own CMake runs
# Inputs: KIT_ROOT (repository root), KIT_DIR (default $KIT_ROOT/.gpukit, made by
# bench/gpu/fetch.sh), KIT_PREFIX (where to unpack), NS_GPU_KIT_FORCE ("all" or a list of
# groups from bench/gpu/debs.txt to take from the kit even where the machine has them: the
# self-test uses it), NS_GPU_KIT_GTEST_FROM_SOURCE=1 (skip the packaged libgtest.a).
# Every function prints what it decided on one line starting with "kit:".

KIT_ARCH=${KIT_ARCH:-x86_64-linux-gnu}
KIT_GROUPS_NEEDED=""   # groups taken from the kit (filled by kit_detect)
KIT_GROUPS_SYSTEM=""   # groups the machine has
KIT_NCCL_ROOT=""       # a folder with include/nccl.h and lib/libnccl.so (NCCL from the Python wheels)
KIT_NCCL_WHERE="none"
KIT_GTEST_DIR=""       # GTest_DIR when GoogleTest comes from the kit
KIT_GTEST_HOW=""
KIT_OPENMP="unknown"

kit_say() { echo "kit: $*"; }

kit_libdirs() {
    local d
    for d in /usr/lib/$KIT_ARCH /lib/$KIT_ARCH /usr/lib64 /usr/lib /usr/local/lib /usr/local/lib64; do
        [[ -d $d ]] && echo "$d"
    done
}

kit_ldconfig_has() {  # kit_ldconfig_has libgfortran.so.5
    local lc
    lc=$(command -v ldconfig || echo /sbin/ldconfig)
    "$lc" -p 2>/dev/null | grep -q "[[:space:]]$1 (" && return 0
    local d
    for d in $(kit_libdirs); do [[ -e $d/$1 ]] && return 0; done
    return 1
}

kit_first() {  # kit_first FILE DIR... → the first DIR/FILE that exists
    local f=$1 d
    shift
    for d in "$@"; do
        if [[ -e $d/$f ]]; then
            echo "$d/$f"
            return 0
        fi
    done
    return 1
}

kit_forced() {  # kit_forced GROUP: NS_GPU_KIT_FORCE names it (or "all")
    local f=" ${NS_GPU_KIT_FORCE:-} "
    [[ $f == *" all "* || $f == *" $1 "* ]]
}

kit_need() {  # kit_need GROUP WHY
    KIT_GROUPS_NEEDED="$KIT_GROUPS_NEEDED $1"
    kit_say "$1: from the kit ($2)"
}
kit_have() {
    KIT_GROUPS_SYSTEM="$KIT_GROUPS_SYSTEM $1"
    kit_say "$1: the machine's ($2)"
}
kit_needs() { [[ " $KIT_GROUPS_NEEDED " == *" $1 "* ]]; }

kit_cuda_home() {
    local nvcc
    nvcc=$(command -v nvcc 2>/dev/null || true)
    if [[ -n $nvcc ]]; then
        (cd "$(dirname "$(readlink -f "$nvcc")")/.." && pwd)
    elif [[ -n ${CUDA_HOME:-} ]]; then
        echo "$CUDA_HOME"
    else
        echo /usr/local/cuda
    fi
}

# ------------------------------------------------------------------ detection
kit_detect() {
    local libdirs=() d lib inc
    mapfile -t libdirs < <(kit_libdirs)
    KIT_GROUPS_NEEDED=""
    KIT_GROUPS_SYSTEM=""

    # OpenBLAS: the link (libopenblas.so) and cblas.h, where CMake's FindBLAS / find_path look.
    local bdirs=()
    for d in "${libdirs[@]}"; do bdirs+=("$d" "$d/openblas-pthread" "$d/openblas-openmp" "$d/openblas-serial" "$d/openblas"); done
    lib=$(kit_first libopenblas.so "${bdirs[@]}" || true)
    inc=$(kit_first cblas.h /usr/include/$KIT_ARCH/openblas-pthread /usr/include/openblas /usr/include /usr/local/include || true)
    if kit_forced openblas; then kit_need openblas "forced: NS_GPU_KIT_FORCE"
    elif [[ -z $lib || -z $inc ]]; then kit_need openblas "libopenblas.so ${lib:-missing}, cblas.h ${inc:-missing}"
    else kit_have openblas "$lib, $inc"; fi

    # libgfortran / libquadmath: needed only by the kit's libopenblas.so.0.
    if kit_needs openblas; then
        if kit_forced fortran; then kit_need fortran "forced: NS_GPU_KIT_FORCE"
        elif ! kit_ldconfig_has libgfortran.so.5 || ! kit_ldconfig_has libquadmath.so.0; then
            kit_need fortran "libgfortran.so.5 or libquadmath.so.0 not in ldconfig"
        else kit_have fortran "libgfortran.so.5 and libquadmath.so.0 in ldconfig"; fi
    fi

    # GoogleTest: its CMake package, or the archives and headers that FindGTest looks for.
    local cfg="" gdirs=()
    for d in "${libdirs[@]}"; do gdirs+=("$d/cmake/GTest"); done
    cfg=$(kit_first GTestConfig.cmake "${gdirs[@]}" /usr/local/share/cmake/GTest /usr/share/cmake/GTest || true)
    if [[ -z $cfg ]]; then
        lib=$(kit_first libgtest.a "${libdirs[@]}" || kit_first libgtest.so "${libdirs[@]}" || true)
        inc=$(kit_first gtest/gtest.h /usr/include /usr/local/include || true)
        [[ -n $lib && -n $inc ]] && cfg="$lib + $inc"
    fi
    if kit_forced gtest; then kit_need gtest "forced: NS_GPU_KIT_FORCE"
    elif [[ -z $cfg ]]; then kit_need gtest "no GTestConfig.cmake, no libgtest + gtest/gtest.h"
    else kit_have gtest "$cfg"; fi

    # zlib: header and link for the CLI (find_package(ZLIB)).
    lib=$(kit_first libz.so "${libdirs[@]}" || true)
    inc=$(kit_first zlib.h /usr/include /usr/local/include || true)
    if kit_forced zlib; then kit_need zlib "forced: NS_GPU_KIT_FORCE"
    elif [[ -z $lib || -z $inc ]]; then kit_need zlib "libz.so ${lib:-missing}, zlib.h ${inc:-missing}"
    else kit_have zlib "$lib, $inc"; fi

    # OpenMP comes with the compiler: checked, never brought.
    local tmp
    tmp=$(mktemp -d)
    printf '#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n' >"$tmp/omp.c"
    if "${CC:-cc}" -fopenmp "$tmp/omp.c" -o "$tmp/omp" >/dev/null 2>&1 && "$tmp/omp"; then
        KIT_OPENMP="yes"
        kit_say "openmp: the compiler's (${CC:-cc} -fopenmp builds and runs)"
    else
        KIT_OPENMP="no"
        kit_say "openmp: MISSING: ${CC:-cc} -fopenmp fails; the build will stop at find_package(OpenMP) (not brought by the kit: it belongs to the compiler)"
    fi
    rm -rf "$tmp"

    # NCCL: the toolkit's or the system's, else the one in the Python wheels (nvidia-nccl-cu13).
    local ch
    ch=$(kit_cuda_home)
    inc=$(kit_first nccl.h "$ch/include" /usr/include /usr/local/include || true)
    lib=$(kit_first libnccl.so "$ch/lib" "$ch/lib64" "${libdirs[@]}" || true)
    KIT_NCCL_ROOT=""
    if [[ -n $inc && -n $lib && -z ${NS_GPU_KIT_PYNCCL_ROOT:-} ]]; then
        KIT_NCCL_WHERE="$lib"
        kit_say "nccl: the machine's ($lib, $inc)"
    else
        local roots=()
        if [[ -n ${NS_GPU_KIT_PYNCCL_ROOT:-} ]]; then
            roots=("$NS_GPU_KIT_PYNCCL_ROOT")
        else
            mapfile -t roots < <(python3 -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null || true)
        fi
        local so="" hdr=""
        for d in "${roots[@]}"; do
            [[ -d $d ]] || continue
            so=$(find "$d" -maxdepth 4 -name 'libnccl.so.2' 2>/dev/null | head -n1)
            hdr=$(find "$d" -maxdepth 4 -name 'nccl.h' 2>/dev/null | head -n1)
            [[ -n $so && -n $hdr ]] && break
        done
        if [[ -n $so && -n $hdr ]]; then
            KIT_NCCL_ROOT="$KIT_PREFIX/nccl"
            rm -rf "$KIT_NCCL_ROOT"
            mkdir -p "$KIT_NCCL_ROOT/lib"
            ln -sfn "$(dirname "$hdr")" "$KIT_NCCL_ROOT/include"
            ln -sf "$so" "$KIT_NCCL_ROOT/lib/libnccl.so.2"
            ln -sf libnccl.so.2 "$KIT_NCCL_ROOT/lib/libnccl.so"
            KIT_NCCL_WHERE="$so"
            kit_say "nccl: the Python wheel's ($so), linked through $KIT_NCCL_ROOT"
        else
            KIT_NCCL_WHERE="none"
            kit_say "nccl: none found (toolkit, system, Python wheels): the NCCL communicator and its tests are not built"
        fi
    fi
}

# ------------------------------------------------------------------ unpacking
kit_debs_of() {  # kit_debs_of GROUP → the package names of that group in debs.txt
    awk -v g="$1" '!/^#/ && NF >= 2 && $2 == g { print $1 }' "$KIT_ROOT/bench/gpu/debs.txt"
}

kit_deb_file() {  # kit_deb_file NAME → the one .deb of that package in $KIT_DIR/debs
    local f
    f=$(ls "$KIT_DIR/debs/${1}"_*.deb 2>/dev/null | head -n1)
    [[ -n $f ]] && echo "$f"
}

kit_extract() {  # kit_extract DEB DIR: dpkg -x, or ar + tar where dpkg is missing
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb -x "$1" "$2"
    else
        local t
        t=$(mktemp -d)
        (cd "$t" && ar x "$1") && tar -xf "$t"/data.tar.* -C "$2"
        local rc=$?
        rm -rf "$t"
        return $rc
    fi
}

kit_unpack() {  # kit_unpack GROUP...: every .deb of those groups into $KIT_PREFIX
    local g p f bad=0
    mkdir -p "$KIT_PREFIX"
    for g in "$@"; do
        for p in $(kit_debs_of "$g"); do
            f=$(kit_deb_file "$p") || true
            if [[ -z $f ]]; then
                kit_say "MISSING $p.deb in $KIT_DIR/debs: run bash bench/gpu/fetch.sh on a machine with apt-get and carry .gpukit"
                bad=1
                continue
            fi
            if ! kit_extract "$f" "$KIT_PREFIX"; then
                kit_say "cannot unpack $f"
                bad=1
                continue
            fi
            kit_say "unpacked $(basename "$f") into $KIT_PREFIX"
        done
    done
    kit_relocate_links
    return $bad
}

# Absolute symlinks in a .deb point into / (zlib1g-dev: libz.so -> /lib/x86_64-linux-gnu/libz.so.1.2.13):
# point them at the same file in the prefix, so nothing the build finds there resolves to the
# machine's files (or dangles where the machine lacks them).
kit_relocate_links() {
    local l t
    while IFS= read -r -d '' l; do
        t=$(readlink "$l")
        [[ $t == /* && $t != "$KIT_PREFIX"/* ]] || continue
        if [[ -e $KIT_PREFIX$t || -L $KIT_PREFIX$t ]]; then
            ln -sfn "$KIT_PREFIX$t" "$l"
            kit_say "relinked ${l#"$KIT_PREFIX"} -> (prefix)$t"
        else
            kit_say "WARNING: ${l#"$KIT_PREFIX"} -> $t points outside the prefix"
        fi
    done < <(find "$KIT_PREFIX" -path "$KIT_PREFIX/rt" -prune -o -path "$KIT_PREFIX/nccl" -prune -o -type l -print0)
}

kit_lib() {  # kit_lib NAME → NAME in the prefix's library folders (usrmerge: /lib or /usr/lib)
    kit_first "$1" "$KIT_PREFIX/usr/lib/$KIT_ARCH" "$KIT_PREFIX/lib/$KIT_ARCH" "$KIT_PREFIX/usr/lib/$KIT_ARCH/openblas-pthread"
}

# ------------------------------------------------------------------ GoogleTest: link probe, else source
kit_gtest_probe() {
    local P=$KIT_PREFIX A=$KIT_ARCH t
    KIT_GTEST_DIR="$P/usr/lib/$A/cmake/GTest"
    KIT_GTEST_HOW="packaged libgtest.a (Debian bookworm, g++ 12)"
    t=$(mktemp -d)
    printf '#include <gtest/gtest.h>\nTEST(Kit, Links) { EXPECT_EQ(1 + 1, 2); }\n' >"$t/t.cpp"
    if [[ ${NS_GPU_KIT_GTEST_FROM_SOURCE:-0} != 1 ]] &&
        "${CXX:-c++}" -std=c++17 -I"$P/usr/include" "$t/t.cpp" "$P/usr/lib/$A/libgtest_main.a" \
            "$P/usr/lib/$A/libgtest.a" -pthread -o "$t/t" >"$t/log" 2>&1 && "$t/t" >>"$t/log" 2>&1; then
        kit_say "gtest: the packaged libgtest.a links and runs with ${CXX:-c++}"
        rm -rf "$t"
        return 0
    fi
    [[ ${NS_GPU_KIT_GTEST_FROM_SOURCE:-0} == 1 ]] || { kit_say "gtest: the packaged libgtest.a does not link here:"; tail -n 5 "$t/log"; }
    rm -rf "$t"
    kit_unpack gtestsrc || return 1
    local src=$P/usr/src/googletest gen=()
    command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
    KIT_GTEST_HOW="built here from /usr/src/googletest (googletest .deb)"
    kit_say "gtest: building GoogleTest from source into $P/gtest"
    if cmake -S "$src" -B "$P/gtest-build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
        -DINSTALL_GTEST=ON -DCMAKE_INSTALL_PREFIX="$P/gtest" >"$P/gtest-build.log" 2>&1 &&
        cmake --build "$P/gtest-build" -j"$(nproc)" >>"$P/gtest-build.log" 2>&1 &&
        cmake --install "$P/gtest-build" >>"$P/gtest-build.log" 2>&1; then
        KIT_GTEST_DIR=$(dirname "$(find "$P/gtest" -name GTestConfig.cmake | head -n1)")
        kit_say "gtest: built, GTest_DIR=$KIT_GTEST_DIR"
        return 0
    fi
    kit_say "gtest: building from source failed:"
    tail -n 20 "$P/gtest-build.log"
    return 1
}

# ------------------------------------------------------------------ CMake and the loader
kit_cmake_args() {  # prints one -D argument per line
    local P=$KIT_PREFIX A=$KIT_ARCH prefix_path=() lib_path=()
    if kit_needs openblas; then
        echo "-DBLAS_LIBRARIES=$P/usr/lib/$A/openblas-pthread/libopenblas.so"
        echo "-DNS_CBLAS_INCLUDE=$P/usr/include/$A/openblas-pthread"
        lib_path+=("$P/usr/lib/$A/openblas-pthread")
        prefix_path+=("$P/usr")
    fi
    if kit_needs gtest; then
        echo "-DGTest_DIR=$KIT_GTEST_DIR"
        prefix_path+=("$P/usr")
    fi
    if kit_needs zlib; then
        echo "-DZLIB_INCLUDE_DIR=$P/usr/include"
        echo "-DZLIB_LIBRARY=$P/usr/lib/$A/libz.so"
    fi
    [[ -n $KIT_NCCL_ROOT ]] && echo "-DNCCL_ROOT=$KIT_NCCL_ROOT"
    if ((${#prefix_path[@]})); then
        local IFS=';'
        echo "-DCMAKE_PREFIX_PATH=${prefix_path[*]}"
    fi
    if ((${#lib_path[@]})); then
        local IFS=';'
        echo "-DCMAKE_LIBRARY_PATH=${lib_path[*]}"
    fi
    return 0
}

kit_export_env() {  # for CMake projects the tests configure themselves (tests/consumer): the same prefix
    local P=$KIT_PREFIX A=$KIT_ARCH
    if [[ -n $KIT_GROUPS_NEEDED ]]; then
        export CMAKE_PREFIX_PATH="$P/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
    fi
    if kit_needs openblas; then
        export CMAKE_LIBRARY_PATH="$P/usr/lib/$A/openblas-pthread${CMAKE_LIBRARY_PATH:+:$CMAKE_LIBRARY_PATH}"
        export CMAKE_INCLUDE_PATH="$P/usr/include/$A/openblas-pthread${CMAKE_INCLUDE_PATH:+:$CMAKE_INCLUDE_PATH}"
    fi
    if [[ -n $KIT_NCCL_ROOT ]]; then export NCCL_ROOT=$KIT_NCCL_ROOT; fi
    kit_say "environment: CMAKE_PREFIX_PATH=${CMAKE_PREFIX_PATH:-} CMAKE_LIBRARY_PATH=${CMAKE_LIBRARY_PATH:-} NCCL_ROOT=${NCCL_ROOT:-}"
}

kit_runtime_dir() {  # symlinks in $KIT_PREFIX/rt to the runtime libraries taken from the kit; prints the dir
    local P=$KIT_PREFIX A=$KIT_ARCH rt=$KIT_PREFIX/rt f
    rm -rf "$rt"
    mkdir -p "$rt"
    if kit_needs openblas; then ln -sf "$P/usr/lib/$A/openblas-pthread/libopenblas.so.0" "$rt/libopenblas.so.0"; fi
    if kit_needs fortran; then
        for f in libgfortran.so.5 libquadmath.so.0; do ln -sf "$(kit_lib $f)" "$rt/$f"; done
    fi
    # zlib's runtime only where the machine has none (else its own newer libz.so.1 stays first).
    if kit_needs zlib && ! kit_ldconfig_has libz.so.1; then ln -sf "$(kit_lib libz.so.1)" "$rt/libz.so.1"; fi
    [[ -n $KIT_NCCL_ROOT ]] && ln -sf "$KIT_NCCL_ROOT/lib/libnccl.so.2" "$rt/libnccl.so.2"
    echo "$rt"
}
