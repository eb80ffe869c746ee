"""kmeans: deterministic k-means for cluster-aware batches (ns_kmeans)."""
from collections import namedtuple
from ctypes import byref

import numpy as np

from . import _checks as chk
from . import _ffi
from ._core import NpyFile, _c, _ctx, _float_rows, _matrix, progress_callback
from ._errors import InvalidArgument

KMeans = namedtuple("KMeans", "labels centroids inertia iterations")

_INITS = {"k-means++": _ffi.NS_KMEANS_PLUSPLUS, "random": _ffi.NS_KMEANS_RANDOM}


def _rows(x, dtype, fn):
    """(keep-alive, ns_matrix) of x: an NpyFile (mapped, never read whole), a numpy array
    (np.memmap works) or a torch tensor (its host copy; bf16 as bit patterns)."""
    if isinstance(x, NpyFile):
        return x._open_mapping(fn)
    if type(x).__module__.startswith("torch"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import torch
            x, dtype = t.view(torch.int16).numpy(), "bfloat16"
        else:
            x = t.numpy()
    a = _float_rows(x, "x", dtype, fn)
    return a, _matrix(a)


def _balance(balanced, fn):
    if balanced is None or balanced is False:
        return -1.0
    if balanced is True:
        return 0.0
    b = chk.real(balanced, fn, "balanced")
    if not np.isfinite(b) or b < 0:
        raise InvalidArgument(f"{fn}: balanced ({b}) must be True, False or a slack >= 0 "
                              f"(clusters hold at most ceil(n/k * (1 + slack)) rows)")
    return b


def kmeans(x, k: int, *, spherical: bool = False, balanced=None, seed: int = 0,
           iterations: int = 25, init="k-means++", tolerance: float = 1e-4, progress=None,
           dtype=None, ctx=None) -> KMeans:
    """Lloyd's k-means of the rows of x, the same bits for a seed at any thread count and on
    either backend (see ns_kmeans in negsamp.h).

    x: a 2-D float array (np.memmap works), an open NpyFile (streamed block by block, so a
    corpus larger than RAM clusters), or a torch tensor. spherical: cosine k-means (unit
    centroids, a row costs 1 - cos). balanced: None/False, True (every cluster at most
    ceil(n/k) rows) or a slack s >= 0 (at most ceil(n/k * (1 + s))). init: 'k-means++',
    'random' or a k x d array of starting centroids. iterations: at most this many Lloyd
    updates; tolerance: stop once the inertia falls by at most this fraction.
    progress(done, total) may return True to cancel (InvalidArgument).

    Returns KMeans(labels int64 n (in [0, k), the cluster of each row under the returned
    centroids), centroids float32 k x d, inertia float64 (after the init and after each update
    run), iterations int (updates run))."""
    fn = "kmeans"
    ctx = _ctx(ctx)
    keep, m = _rows(x, dtype, fn)
    k = chk.integer(k, fn, "k")
    if k < 1:
        raise InvalidArgument(f"{fn}: k ({k}) must be at least 1")
    if k > m.rows:
        raise InvalidArgument(f"{fn}: k ({k}) is larger than the number of rows ({m.rows})")
    o = _ffi.kmeans_options_init()
    o.spherical = 1 if chk.flag(spherical, fn, "spherical") else 0
    o.balance = _balance(balanced, fn)
    o.seed = chk.uint64(seed, fn, "seed")
    o.max_iterations = chk.integer(iterations, fn, "iterations", 0, 1000000)
    tol = chk.real(tolerance, fn, "tolerance")
    if not np.isfinite(tol) or tol < 0:
        raise InvalidArgument(f"{fn}: tolerance ({tol}) must be finite and >= 0")
    o.tolerance = tol
    start = None
    if isinstance(init, str):
        if init not in _INITS:
            raise InvalidArgument(f"{fn}: init ({init!r}) is not one of {list(_INITS)} or a "
                                  f"k x d array of centroids")
        o.init = _INITS[init]
    else:
        start = np.ascontiguousarray(chk.asarray(init, fn, "init"), dtype=np.float32)
        if start.shape != (k, m.cols):
            raise InvalidArgument(f"{fn}: init has shape {start.shape}; expected (k, d) = "
                                  f"({k}, {m.cols})")
        o.init_centroids = start.ctypes.data
    cb, raised = progress_callback(progress, fn)
    if cb is not None:
        o.progress = cb
    labels = np.empty(m.rows, dtype=np.int64)
    centroids = np.empty((k, m.cols), dtype=np.float32)
    inertia = np.empty(o.max_iterations + 1, dtype=np.float64)
    its = np.zeros(1, dtype=np.int64)
    st = _c("ns_kmeans")(ctx.handle, m, k, byref(o), labels.ctypes.data, centroids.ctypes.data,
                         inertia.ctypes.data, its.ctypes.data)
    if raised:
        raise raised[0]
    ctx.check(st)
    del keep, start
    n = int(its[0])
    return KMeans(labels, centroids, inertia[:n + 1].copy(), n)
