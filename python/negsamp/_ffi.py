"""ctypes mirror of include/negsamp.h and the loader of libnegsamp.

Every struct here copies the header field for field, in the same order and with the same C
types; tests/python/test_abi.py compiles a small C program against the header and checks the
size and every field offset, so a drift in either file is caught.

Functions are looked up on first use, so a library that lacks a symbol (an older build) still
loads and only the calls it lacks raise negsamp.Unsupported.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (POINTER, Structure, c_char_p, c_double, c_float, c_int, c_int64, c_size_t,
                    c_uint, c_uint64, c_void_p)
from pathlib import Path

# ------------------------------------------------------------------ enums and constants

NS_OK = 0
NS_ERR_INVALID_ARGUMENT = 1
NS_ERR_UNSUPPORTED = 2
NS_ERR_OUT_OF_MEMORY = 3
NS_ERR_NO_DEVICE = 4
NS_ERR_CUDA = 5
NS_ERR_COMM = 6
NS_ERR_NONFINITE = 7
NS_ERR_IO = 8
NS_ERR_INTERNAL = 9

NS_BACKEND_AUTO = 0
NS_BACKEND_CPU = 1
NS_BACKEND_CUDA = 2

NS_F32 = 0
NS_F16 = 1
NS_BF16 = 2

NS_NORMALIZE = 1
NS_MAX_K = 16384

NS_FILTER_SAME_ID = 1 << 0
NS_FILTER_MAX_SCORE = 1 << 1
NS_FILTER_MIN_SCORE = 1 << 2
NS_FILTER_MARGIN = 1 << 3
NS_FILTER_REL_MARGIN = 1 << 4
NS_FILTER_RANK = 1 << 5
NS_FILTER_GUIDE = 1 << 6
NS_FILTER_GUIDE_REL = 1 << 7

NS_SAMPLE_TOP = 0
NS_SAMPLE_UNIFORM = 1
NS_SAMPLE_SIMANS = 2
NS_SAMPLE_SOFTMAX = 3

NS_INFONCE_SAVED_PER_QUERY = 8

NS_KMEANS_PLUSPLUS = 0
NS_KMEANS_RANDOM = 1

# C enums are int-sized on every ABI negsamp targets.
c_enum = c_int

# ------------------------------------------------------------------ structs


class ns_context_options(Structure):
    _fields_ = [("struct_size", c_size_t), ("backend", c_enum), ("device", c_int),
                ("stream", c_void_p), ("threads", c_int)]


class ns_matrix(Structure):
    _fields_ = [("data", c_void_p), ("dtype", c_enum), ("rows", c_int64), ("cols", c_int64),
                ("ld", c_int64)]


class ns_id_lists(Structure):
    _fields_ = [("offsets", POINTER(c_int64)), ("ids", POINTER(c_int64)), ("queries", c_int64)]


ns_progress_fn = ctypes.CFUNCTYPE(c_int, c_int64, c_int64, c_void_p)


class ns_mine_options(Structure):
    _fields_ = [("struct_size", c_size_t), ("scale", c_float), ("flags", c_uint),
                ("exclude", POINTER(ns_id_lists)), ("progress", ns_progress_fn),
                ("progress_user", c_void_p), ("comm", c_void_p), ("workspace_bytes", c_size_t)]


class ns_candidates(Structure):
    _fields_ = [("queries", c_int64), ("per_query", c_int64), ("id", POINTER(c_int64)),
                ("score", POINTER(c_float)), ("positive_score", POINTER(c_float)),
                ("positive_id", POINTER(ns_id_lists)), ("guide_score", POINTER(c_float)),
                ("guide_positive_score", POINTER(c_float)), ("query_offset", c_int64)]


class ns_filter_options(Structure):
    _fields_ = [("struct_size", c_size_t), ("rules", c_uint), ("max_score", c_float),
                ("min_score", c_float), ("margin", c_float), ("rel_margin", c_float),
                ("rank_min", c_int64), ("rank_max", c_int64), ("guide_margin", c_float)]


class ns_filter_counts(Structure):
    _fields_ = [(name, c_int64) for name in
                ("examined", "kept", "removed", "empty", "same_id", "max_score", "min_score",
                 "margin", "rel_margin", "rank", "guide")]


class ns_sampler_options(Structure):
    _fields_ = [("struct_size", c_size_t), ("strategy", c_enum), ("simans_a", c_float),
                ("simans_b", c_float), ("temperature", c_float), ("seed", c_uint64),
                ("step", c_uint64)]


class ns_corpus_weights(Structure):
    _fields_ = [("weight", POINTER(c_float)), ("rows", c_int64)]


class ns_corpus_sampler_options(Structure):
    _fields_ = [("struct_size", c_size_t), ("alpha", c_float), ("seed", c_uint64),
                ("step", c_uint64), ("query_offset", c_int64)]


class ns_plan_options(Structure):
    _fields_ = [("struct_size", c_size_t), ("drop_last", c_int),
                ("neighbors", POINTER(ns_id_lists)), ("groups_per_batch", c_int64),
                ("positives", POINTER(ns_id_lists)), ("max_duplicate_positives", c_int64),
                ("seed", c_uint64), ("epoch", c_uint64)]


class ns_infonce_inputs(Structure):
    _fields_ = [("query", ns_matrix), ("passage", ns_matrix), ("positive", POINTER(c_int64)),
                ("hard", ns_matrix), ("hard_per_query", c_int64),
                ("hard_keep", POINTER(ctypes.c_uint8)), ("extra", ns_matrix),
                ("passage_id", POINTER(c_int64)), ("hard_id", POINTER(c_int64)),
                ("extra_id", POINTER(c_int64))]


class ns_loss_groups(Structure):
    _fields_ = [("struct_size", c_size_t), ("query", POINTER(c_int64)),
                ("passage", POINTER(c_int64)), ("hard", POINTER(c_int64)),
                ("extra", POINTER(c_int64)), ("weight", c_float)]


class ns_loss_options(Structure):
    _fields_ = [("struct_size", c_size_t), ("temperature", c_float), ("symmetric", c_int),
                ("mask_same_id", c_int), ("tau_plus", c_float), ("beta", c_float),
                ("share_hard", c_int), ("groups", POINTER(ns_loss_groups))]


class ns_infonce_grads(Structure):
    _fields_ = [("query", POINTER(c_float)), ("passage", POINTER(c_float)),
                ("hard", POINTER(c_float)), ("temperature", POINTER(c_float))]


class ns_batch(Structure):
    _fields_ = [("query", ns_matrix), ("positive", ns_matrix), ("positive_id", POINTER(c_int64)),
                ("candidate", ns_matrix), ("candidates_per_query", c_int64),
                ("candidate_id", POINTER(c_int64)), ("guide_score", POINTER(c_float)),
                ("guide_positive_score", POINTER(c_float)), ("query_offset", c_int64)]


class ns_step_options(Structure):
    # filter, sampler and loss point to their options structs (NULL = the defaults).
    _fields_ = [("struct_size", c_size_t), ("hard_negatives", c_int64),
                ("filter", POINTER(ns_filter_options)), ("sampler", POINTER(ns_sampler_options)),
                ("loss", POINTER(ns_loss_options)), ("queue", c_void_p), ("enqueue", c_int),
                ("comm", c_void_p), ("sync_free", c_int), ("random_negatives", c_int64),
                ("random_pool", c_int64), ("groups", POINTER(ns_loss_groups)),
                ("forward_only", c_int)]


class ns_step_result(Structure):
    _fields_ = [("loss", c_float), ("per_query", POINTER(c_float)),
                ("negative_id", POINTER(c_int64)), ("negative_row", POINTER(c_int64)),
                ("negative_count", POINTER(c_int64)), ("filtered", ns_filter_counts)]


class ns_step_grads(Structure):
    _fields_ = [("query", POINTER(c_float)), ("positive", POINTER(c_float)),
                ("candidate", POINTER(c_float)), ("temperature", POINTER(c_float))]


class ns_comm_options(Structure):
    _fields_ = [("struct_size", c_size_t), ("timeout_ms", c_int)]


NS_NCCL_UNIQUE_ID_BYTES = 128

# Every struct of the header, for the ABI test.
class ns_kmeans_options(Structure):
    _fields_ = [("struct_size", c_size_t), ("spherical", c_int), ("init", c_enum),
                ("seed", c_uint64), ("max_iterations", c_int64), ("tolerance", c_double),
                ("balance", c_double), ("init_centroids", c_void_p),
                ("progress", ns_progress_fn), ("progress_user", c_void_p)]


STRUCTS = [ns_context_options, ns_matrix, ns_id_lists, ns_mine_options, ns_candidates,
           ns_filter_options, ns_filter_counts, ns_sampler_options, ns_infonce_inputs,
           ns_loss_groups, ns_loss_options, ns_infonce_grads, ns_comm_options, ns_batch,
           ns_step_options, ns_step_result, ns_step_grads, ns_corpus_weights,
           ns_corpus_sampler_options, ns_kmeans_options, ns_plan_options]


# The defaults of the NS_*_INIT macros.
def context_options_init() -> ns_context_options:
    return ns_context_options(ctypes.sizeof(ns_context_options), NS_BACKEND_AUTO, 0, None, 0)


def mine_options_init() -> ns_mine_options:
    return ns_mine_options(ctypes.sizeof(ns_mine_options), 1.0, 0, None, ns_progress_fn(), None,
                           None, 0)


def filter_options_init() -> ns_filter_options:
    return ns_filter_options(ctypes.sizeof(ns_filter_options), NS_FILTER_SAME_ID, 0.0, 0.0, 0.0,
                             0.0, 0, 0, 0.0)


def sampler_options_init() -> ns_sampler_options:
    return ns_sampler_options(ctypes.sizeof(ns_sampler_options), NS_SAMPLE_SIMANS, 0.5, 0.0, 1.0,
                              0, 0)


def corpus_sampler_options_init() -> ns_corpus_sampler_options:
    return ns_corpus_sampler_options(ctypes.sizeof(ns_corpus_sampler_options), 1.0, 0, 0, 0)


def loss_groups_init() -> ns_loss_groups:
    return ns_loss_groups(ctypes.sizeof(ns_loss_groups), None, None, None, None, 0.0)


def kmeans_options_init() -> ns_kmeans_options:
    return ns_kmeans_options(ctypes.sizeof(ns_kmeans_options), 0, NS_KMEANS_PLUSPLUS, 0, 25,
                             1e-4, -1.0, None, ns_progress_fn(), None)


def plan_options_init() -> ns_plan_options:
    return ns_plan_options(ctypes.sizeof(ns_plan_options), 0, None, 2, None, 1, 0, 0)


def loss_options_init() -> ns_loss_options:
    return ns_loss_options(ctypes.sizeof(ns_loss_options), 0.05, 0, 1, 0.0, 0.0, 0, None)


def comm_options_init() -> ns_comm_options:
    return ns_comm_options(ctypes.sizeof(ns_comm_options), 60000)


def step_options_init() -> ns_step_options:
    return ns_step_options(ctypes.sizeof(ns_step_options), 0, None, None, None, None, 0, None, 0,
                           0, 0, None, 0)


# ------------------------------------------------------------------ signatures

_P = c_void_p
_SIGNATURES = {
    "ns_version": (c_int, []),
    "ns_status_string": (c_char_p, [c_int]),
    "ns_context_create": (c_int, [POINTER(c_void_p), POINTER(ns_context_options)]),
    "ns_context_destroy": (c_int, [_P]),
    "ns_context_backend": (c_int, [_P]),
    "ns_context_set_stream": (c_int, [_P, _P]),
    "ns_last_error": (c_char_p, [_P]),
    "ns_cuda_built": (c_int, []),
    "ns_cuda_device_count": (c_int, []),
    "ns_similarity": (c_int, [_P, ns_matrix, ns_matrix, c_float, c_uint, _P]),
    "ns_mine_topk": (c_int, [_P, ns_matrix, ns_matrix, c_int64, POINTER(ns_mine_options), _P, _P]),
    "ns_npy_open": (c_int, [c_char_p, POINTER(c_void_p)]),
    "ns_npy_matrix": (ns_matrix, [_P]),
    "ns_npy_close": (c_int, [_P]),
    "ns_filter": (c_int, [_P, POINTER(ns_candidates), POINTER(ns_filter_options), _P,
                          POINTER(ns_filter_counts)]),
    "ns_sample": (c_int, [_P, POINTER(ns_candidates), _P, POINTER(ns_sampler_options), c_int64,
                          _P, _P, _P]),
    "ns_filter_sample": (c_int, [_P, POINTER(ns_candidates), POINTER(ns_filter_options),
                                 POINTER(ns_sampler_options), c_int64, _P,
                                 POINTER(ns_filter_counts), _P, _P, _P]),
    "ns_kmeans": (c_int, [_P, ns_matrix, c_int64, POINTER(ns_kmeans_options), _P, _P, _P, _P]),
    "ns_sample_corpus": (c_int, [_P, POINTER(ns_corpus_weights), POINTER(ns_id_lists),
                                 POINTER(ns_corpus_sampler_options), c_int64, c_int64, _P, _P]),
    "ns_plan_batches": (c_int, [_P, _P, c_int64, c_int64, POINTER(ns_plan_options), _P, _P,
                                POINTER(c_int64)]),
    "ns_infonce_forward": (c_int, [_P, POINTER(ns_infonce_inputs), POINTER(ns_loss_options),
                                   POINTER(c_float), _P, _P]),
    "ns_infonce_backward": (c_int, [_P, POINTER(ns_infonce_inputs), POINTER(ns_loss_options), _P,
                                    c_float, POINTER(ns_infonce_grads)]),
    "ns_infonce_forward_backward": (c_int, [_P, POINTER(ns_infonce_inputs),
                                            POINTER(ns_loss_options), c_float, POINTER(c_float),
                                            _P, _P, POINTER(ns_infonce_grads)]),
    "ns_queue_create": (c_int, [_P, c_int64, c_int64, POINTER(c_void_p)]),
    "ns_queue_destroy": (c_int, [_P]),
    "ns_queue_push": (c_int, [_P, _P, ns_matrix, _P]),
    "ns_queue_view": (c_int, [_P, _P, POINTER(ns_matrix), POINTER(POINTER(c_int64))]),
    "ns_queue_size": (c_int64, [_P]),
    "ns_comm_create_mpi": (c_int, [_P, _P, POINTER(ns_comm_options), POINTER(c_void_p)]),
    "ns_comm_create_nccl": (c_int, [_P, _P, POINTER(ns_comm_options), POINTER(c_void_p)]),
    "ns_comm_create_nccl_id": (c_int, [_P, _P, c_int, c_int, POINTER(ns_comm_options),
                                       POINTER(c_void_p)]),
    "ns_nccl_unique_id": (c_int, [_P, _P]),
    "ns_comm_destroy": (c_int, [_P]),
    "ns_comm_rank": (c_int, [_P]),
    "ns_comm_size": (c_int, [_P]),
    "ns_step_forward": (c_int, [_P, POINTER(ns_batch), POINTER(ns_step_options),
                                POINTER(ns_step_result)]),
    "ns_step_backward": (c_int, [_P, c_float, POINTER(ns_step_grads)]),
    "ns_step_device_loss": (c_void_p, [_P]),
}

# ------------------------------------------------------------------ loading

_PACKAGE_LIB_DIR = Path(__file__).resolve().parent / "_lib"
_lock = threading.Lock()
_lib = None
_lib_path = None
_bound: dict = {}


class LibraryNotFound(OSError):
    """libnegsamp could not be found or loaded."""


def _candidates():
    env = os.environ.get("NEGSAMP_LIBRARY")
    if env:
        return [("NEGSAMP_LIBRARY", env)]
    found = []
    for name in ("libnegsamp.so", "libnegsamp.dylib", "negsamp.dll"):
        p = _PACKAGE_LIB_DIR / name
        if p.exists():
            found.append(("package", str(p)))
    if not found:
        for p in sorted(_PACKAGE_LIB_DIR.glob("libnegsamp.so.*")):
            found.append(("package", str(p)))
    lib = ctypes.util.find_library("negsamp")
    if lib:
        found.append(("system", lib))
    return found


def _share_torch_nccl():
    """Loads the NCCL of PyTorch's wheel (the nvidia-nccl-cu* package), when it is installed,
    before libnegsamp. A process holds one libnccl.so.2: libnegsamp links the toolkit's NCCL,
    and if that one is loaded first, a later `import torch` fails on NCCL symbols only torch's
    newer NCCL has (`undefined symbol: ncclCommResume`). NCCL keeps its ABI within major
    version 2, so libnegsamp runs on the newer one. NEGSAMP_NO_TORCH_NCCL=1 skips this."""
    if os.environ.get("NEGSAMP_NO_TORCH_NCCL") == "1":
        return
    try:
        import importlib.util
        spec = importlib.util.find_spec("nvidia.nccl")
    except (ImportError, ValueError):
        return
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "lib", "libnccl.so.2")
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass  # then the toolkit's NCCL is used, as without torch
            return


def library():
    """The loaded CDLL (loaded on first use)."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = []
        _share_torch_nccl()
        for origin, path in _candidates():
            try:
                _lib = ctypes.CDLL(path)
                _lib_path = path
                return _lib
            except OSError as e:
                tried.append(f"{path} ({origin}): {e}")
        raise LibraryNotFound(
            "negsamp: cannot load libnegsamp. Set NEGSAMP_LIBRARY to the path of libnegsamp.so "
            "(e.g. build/libnegsamp.so), or install the package with `pip install ./python`, "
            "which builds it into negsamp/_lib. Tried: " + ("; ".join(tried) or (
                f"NEGSAMP_LIBRARY (not set), {_PACKAGE_LIB_DIR} (no libnegsamp there), the "
                "system loader path (ctypes.util.find_library('negsamp') found none)")))


def library_path() -> str:
    library()
    return _lib_path


def has(name: str) -> bool:
    """Whether the loaded library exports the function name."""
    try:
        fn(name)
        return True
    except AttributeError:
        return False


def fn(name: str):
    """The C function name with its signature set, looked up on first use.

    Raises AttributeError when the loaded library does not export it."""
    f = _bound.get(name)
    if f is not None:
        return f
    lib = library()
    f = getattr(lib, name)  # AttributeError when missing
    restype, argtypes = _SIGNATURES[name]
    f.restype = restype
    f.argtypes = argtypes
    _bound[name] = f
    return f
