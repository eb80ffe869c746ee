"""sample_corpus: corpus-wide weighted random negatives (ns_sample_corpus)."""
from collections import namedtuple
from ctypes import POINTER, byref, c_float

import numpy as np

from . import _checks as chk
from . import _ffi
from ._core import _c, _ctx, _id_lists
from ._errors import InvalidArgument

CorpusSample = namedtuple("CorpusSample", "index count")


def _weights(weight, rows, fn):
    """weight as a C-contiguous float32 vector (None: uniform over `rows`), and N."""
    if weight is None:
        if rows is None:
            raise InvalidArgument(f"{fn}: give weight (one per corpus row) or rows (uniform)")
        return None, chk.integer(rows, fn, "rows", 1)
    w = chk.asarray(weight, fn, "weight")
    if w.ndim != 1:
        raise InvalidArgument(f"{fn}: weight must be a 1-D array (one per corpus row); got "
                              f"shape {w.shape}")
    if w.dtype.kind not in "fiu":
        raise InvalidArgument(f"{fn}: weight has dtype {w.dtype}; expected a real array "
                              f"(frequencies, counts or degrees)")
    if rows is not None and chk.integer(rows, fn, "rows") != w.size:
        raise InvalidArgument(f"{fn}: rows ({rows}) differs from len(weight) ({w.size})")
    if w.size == 0:
        raise InvalidArgument(f"{fn}: weight is empty; the corpus needs at least one row")
    w = np.ascontiguousarray(w, dtype=np.float32)
    bad = ~(np.isfinite(w) & (w >= 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidArgument(f"{fn}: weight[{i}] ({w[i]}) must be finite and >= 0")
    if not (w > 0).any():
        raise InvalidArgument(f"{fn}: weight has no positive entry (all {w.size} rows are 0)")
    return w, w.size


def sample_corpus(weight, queries: int, m: int, *, rows=None, alpha=1.0, exclude=None, seed=0,
                  step=0, query_offset=0, ctx=None) -> CorpusSample:
    """Draws m distinct corpus rows per query without replacement, by weight**alpha over the
    whole corpus (weight None: uniform over `rows` rows), never a row of exclude[i] (a list of
    lists, (offsets, ids) or IdLists: each query's positives). Exact successive sampling,
    Philox-keyed by seed, step and the global query id query_offset + i, so the draw does not
    depend on threads, batch split or backend.

    Returns CorpusSample(index int64 queries×m (rows in draw order, -1 padded when fewer rows
    are eligible), count int64 queries)."""
    fn = "sample_corpus"
    ctx = _ctx(ctx)
    w, N = _weights(weight, rows, fn)
    queries = chk.integer(queries, fn, "queries", 0)
    m = chk.integer(m, fn, "m", 1)
    if m > N:
        raise InvalidArgument(f"{fn}: m ({m}) is larger than the corpus ({N} rows)")
    a = chk.real(alpha, fn, "alpha")
    if not np.isfinite(a) or abs(a) > 64:
        raise InvalidArgument(f"{fn}: alpha ({a}) must be finite with |alpha| <= 64")
    ex = _id_lists(exclude, fn, "exclude", queries)
    if ex is not None and ex.ids.size and (ex.ids.min() < 0 or ex.ids.max() >= N):
        bad = (ex.ids < 0) | (ex.ids >= N)
        j = int(np.argmax(bad))
        raise InvalidArgument(f"{fn}: exclude ids[{j}] ({int(ex.ids[j])}) is not a corpus row "
                              f"in [0, {N})")
    o = _ffi.corpus_sampler_options_init()
    o.alpha = a
    o.seed = chk.uint64(seed, fn, "seed")
    o.step = chk.uint64(step, fn, "step")
    o.query_offset = chk.int64(query_offset, fn, "query_offset", 0)
    index = np.empty((queries, m), dtype=np.int64)
    count = np.empty(queries, dtype=np.int64)
    if queries == 0:
        return CorpusSample(index, count)
    cw = _ffi.ns_corpus_weights(None if w is None else w.ctypes.data_as(POINTER(c_float)), N)
    ctx.check(_c("ns_sample_corpus")(ctx.handle, byref(cw),
                                     None if ex is None else byref(ex.struct), byref(o),
                                     queries, m, index.ctypes.data, count.ctypes.data))
    return CorpusSample(index, count)
