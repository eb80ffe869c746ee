"""The ctypes structs of negsamp._ffi against the header, compiled by the C compiler."""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import negsamp
from negsamp import _ffi

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = Path(os.environ.get("NEGSAMP_INCLUDE", ROOT / "include"))

CONSTANTS = [
    "NS_OK", "NS_ERR_INVALID_ARGUMENT", "NS_ERR_UNSUPPORTED", "NS_ERR_OUT_OF_MEMORY",
    "NS_ERR_NO_DEVICE", "NS_ERR_CUDA", "NS_ERR_COMM", "NS_ERR_NONFINITE", "NS_ERR_IO",
    "NS_ERR_INTERNAL", "NS_BACKEND_AUTO", "NS_BACKEND_CPU", "NS_BACKEND_CUDA", "NS_F32",
    "NS_F16", "NS_BF16", "NS_NORMALIZE", "NS_MAX_K", "NS_FILTER_SAME_ID", "NS_FILTER_MAX_SCORE",
    "NS_FILTER_MIN_SCORE", "NS_FILTER_MARGIN", "NS_FILTER_REL_MARGIN", "NS_FILTER_RANK",
    "NS_FILTER_GUIDE", "NS_FILTER_GUIDE_REL", "NS_SAMPLE_TOP", "NS_SAMPLE_UNIFORM",
    "NS_SAMPLE_SIMANS", "NS_SAMPLE_SOFTMAX", "NS_INFONCE_SAVED_PER_QUERY",
    "NS_NCCL_UNIQUE_ID_BYTES", "NS_KMEANS_PLUSPLUS", "NS_KMEANS_RANDOM",
]

# Initializer macros and the Python functions that mirror them.
INITS = [("ns_context_options", "NS_CONTEXT_OPTIONS_INIT", _ffi.context_options_init),
         ("ns_mine_options", "NS_MINE_OPTIONS_INIT", _ffi.mine_options_init),
         ("ns_filter_options", "NS_FILTER_OPTIONS_INIT", _ffi.filter_options_init),
         ("ns_sampler_options", "NS_SAMPLER_OPTIONS_INIT", _ffi.sampler_options_init),
         ("ns_loss_options", "NS_LOSS_OPTIONS_INIT", _ffi.loss_options_init),
         ("ns_loss_groups", "NS_LOSS_GROUPS_INIT", _ffi.loss_groups_init),
         ("ns_comm_options", "NS_COMM_OPTIONS_INIT", _ffi.comm_options_init),
         ("ns_step_options", "NS_STEP_OPTIONS_INIT", _ffi.step_options_init),
         ("ns_corpus_sampler_options", "NS_CORPUS_SAMPLER_OPTIONS_INIT",
          _ffi.corpus_sampler_options_init),
         ("ns_kmeans_options", "NS_KMEANS_OPTIONS_INIT", _ffi.kmeans_options_init),
         ("ns_plan_options", "NS_PLAN_OPTIONS_INIT", _ffi.plan_options_init)]


def _c_program():
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <string.h>",
             '#include "negsamp.h"', "int main(void) {"]
    for s in _ffi.STRUCTS:
        n = s.__name__
        lines.append(f'  printf("{n} %zu %zu\\n", sizeof({n}), _Alignof({n}));')
        for field, _ in s._fields_:
            lines.append(f'  printf("{n}.{field} %zu %zu\\n", offsetof({n}, {field}), '
                         f'sizeof((({n} *)0)->{field}));')
    for c in CONSTANTS:
        lines.append(f'  printf("{c} %lld\\n", (long long)({c}));')
    for n, macro, _ in INITS:
        # The initializer's bytes, so the Python defaults are checked too.
        lines.append(f"  {{ {n} v; static const {n} w = {macro}; "
                     f"memcpy(&v, &w, sizeof v);")
        lines.append(f'    printf("{n}=");')
        lines.append("    for (size_t i = 0; i < sizeof v; i++) "
                     "printf(\"%02x\", ((unsigned char *)&v)[i]);")
        lines.append('    printf("\\n"); }')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or \
        shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler to print the header's layout")
    if not (INCLUDE / "negsamp.h").exists():
        pytest.skip(f"negsamp.h not found in {INCLUDE} (set NEGSAMP_INCLUDE)")
    d = tmp_path_factory.mktemp("abi")
    src, exe = d / "layout.c", d / "layout"
    src.write_text(_c_program())
    subprocess.run([cc, "-std=c11", "-I", str(INCLUDE), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    sizes, inits = {}, {}
    for line in out.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            inits[k] = bytes.fromhex(v)
        else:
            k, *v = line.split()
            sizes[k] = tuple(int(x) for x in v)
    return sizes, inits


@pytest.mark.parametrize("struct", _ffi.STRUCTS, ids=lambda s: s.__name__)
def test_struct_layout_matches_header(c_layout, struct):
    sizes, _ = c_layout
    n = struct.__name__
    assert (ctypes.sizeof(struct), ctypes.alignment(struct)) == sizes[n], n
    c_fields = [k.split(".", 1)[1] for k in sizes if k.startswith(n + ".")]
    assert [f for f, _ in struct._fields_] == c_fields
    for field, ctype in struct._fields_:
        desc = getattr(struct, field)
        assert (desc.offset, desc.size) == sizes[f"{n}.{field}"], f"{n}.{field}"


def test_constants_match_header(c_layout):
    sizes, _ = c_layout
    for c in CONSTANTS:
        assert getattr(_ffi, c) == sizes[c][0], c


@pytest.mark.parametrize("name,macro,make", INITS, ids=[i[1] for i in INITS])
def test_initializers_match_header(c_layout, name, macro, make):
    _, inits = c_layout
    v = make()
    raw = ctypes.string_at(ctypes.addressof(v), ctypes.sizeof(v))
    # Padding bytes are zero on both sides (static storage in C, zeroed ctypes memory here).
    assert raw == inits[name], macro


def test_version_matches_header(c_layout):
    text = (INCLUDE / "negsamp.h").read_text()
    major = int(text.split("#define NS_VERSION_MAJOR")[1].split()[0])
    minor = int(text.split("#define NS_VERSION_MINOR")[1].split()[0])
    patch = int(text.split("#define NS_VERSION_PATCH")[1].split()[0])
    assert negsamp.version_info() == (major, minor, patch)
    assert negsamp.version() == major * 10000 + minor * 100 + patch
