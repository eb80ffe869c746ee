"""The numpy API: contexts, and one function (or class) per negsamp operation.

Arrays are passed to C by pointer without copies where their layout allows it (f32/f16, rows
with unit column stride; a row stride becomes ns_matrix.ld). What only Python can know (a
buffer's real length and dtype, whether an integer is one, whether a mapped file is still open)
is checked here (_checks.py) before any pointer reaches C; the values inside the buffers are
validated by the library itself, whose message becomes the exception's.
"""
from __future__ import annotations

import ctypes
import threading
from collections import namedtuple
from ctypes import POINTER, byref, c_float, c_int64, c_void_p

import numpy as np

from . import _checks as chk
from . import _ffi
from ._errors import NegsampError, NonFinite, Unsupported, InvalidArgument, error_for

# ------------------------------------------------------------------ calls and errors


def _c(name):
    try:
        return _ffi.fn(name)
    except AttributeError:
        raise Unsupported(f"{name} is not exported by the loaded library "
                          f"({_ffi.library_path()}); rebuild libnegsamp") from None


def _last_error(handle) -> str:
    msg = _c("ns_last_error")(handle)
    return msg.decode("utf-8", "replace") if msg else ""


def _check(status: int, handle=None):
    if status != _ffi.NS_OK:
        raise error_for(status, _last_error(handle))


def version() -> int:
    """NS_VERSION_CODE of the loaded library (major·10000 + minor·100 + patch)."""
    return int(_c("ns_version")())


def version_info() -> tuple:
    v = version()
    return (v // 10000, v // 100 % 100, v % 100)


def status_string(status: int) -> str:
    return _c("ns_status_string")(int(status)).decode()


def cuda_built() -> bool:
    """Whether the loaded library has the CUDA backend."""
    return bool(_c("ns_cuda_built")())


def cuda_device_count() -> int:
    """CUDA devices the library sees (0 without a GPU or without the CUDA backend)."""
    return int(_c("ns_cuda_device_count")())


def cuda_info() -> dict:
    return {"built": cuda_built(), "device_count": cuda_device_count()}


# ------------------------------------------------------------------ contexts

_BACKENDS = {"auto": _ffi.NS_BACKEND_AUTO, "cpu": _ffi.NS_BACKEND_CPU,
             "cuda": _ffi.NS_BACKEND_CUDA}
_BACKEND_NAMES = {v: k for k, v in _BACKENDS.items()}


class _Handle:
    """One library handle and the function that frees it. What the C object needs to outlive it
    (the context a queue lives in) is held in keep. Every Python object that uses the handle
    holds this object, and the handle is freed when the last of them lets go: closing a
    context never frees it under a queue made in it, closing an NpyFile never unmaps it under
    an array that views it."""

    __slots__ = ("value", "_free", "keep")

    def __init__(self, value, free, keep=()):
        self.value, self._free, self.keep = value, free, tuple(keep)

    def __del__(self):
        if self.value is not None:
            try:
                self._free(self.value)
            except Exception:
                pass
            self.value = None


class _Owned:
    """An object that uses a library handle (self._h, a _Handle). close() (also on exit of a
    with block) ends this object's use of it: later uses raise InvalidArgument; the handle is
    freed once nothing else (a queue of this context, an array of this file) holds it."""

    _h = None
    _what = "object"

    def close(self) -> None:
        self._h = None

    @property
    def closed(self) -> bool:
        return self._h is None

    def _live(self, fn: str | None = None) -> "_Handle":
        h = self._h
        if h is None:
            raise InvalidArgument(f"{fn or 'negsamp.' + type(self).__name__}: the {self._what} "
                                  f"is closed")
        return h

    @property
    def handle(self) -> int:
        return self._live().value

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Context(_Owned):
    """An ns_context: a backend, a device, a stream, a workspace. One thread at a time."""

    _what = "context"

    def __init__(self, backend: str = "cpu", device: int = 0, threads: int = 0, stream=None):
        if not isinstance(backend, str) or backend not in _BACKENDS:
            raise InvalidArgument(f"Context: backend ({backend!r}) is not one of "
                                  f"{sorted(_BACKENDS)}")
        opt = _ffi.context_options_init()
        opt.backend = _BACKENDS[backend]
        opt.device = chk.integer(device, "Context", "device", 0, 2**31 - 1)
        opt.threads = chk.integer(threads, "Context", "threads", 0, 2**31 - 1)
        opt.stream = None if stream is None else chk.integer(stream, "Context", "stream", 0)
        h = c_void_p()
        _check(_c("ns_context_create")(byref(h), byref(opt)), None)
        self._h = _Handle(h.value, _c("ns_context_destroy"))

    @property
    def backend(self) -> str:
        return _BACKEND_NAMES[_c("ns_context_backend")(self.handle)]

    def set_stream(self, stream) -> None:
        """Orders later work on stream (a cudaStream_t as an int; ignored on CPU)."""
        _check(_c("ns_context_set_stream")(self.handle, stream), self.handle)

    @property
    def last_error(self) -> str:
        return _last_error(self.handle)

    def check(self, status: int) -> None:
        _check(status, self.handle)



_local = threading.local()


def default_context() -> Context:
    """This thread's CPU context, used by the numpy API when no ctx is given."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = Context("cpu")
    return ctx


def _ctx(ctx):
    """The context for the numpy API: numpy arrays are host memory, so a CPU context."""
    if ctx is None:
        return default_context()
    if ctx.backend != "cpu":
        raise InvalidArgument("negsamp: numpy arrays live in host memory but ctx is a CUDA "
                              "context; use a CPU context, or the torch ops for device tensors")
    return ctx


# ------------------------------------------------------------------ arrays → C

# numpy dtype of the array handed to C → ns_dtype. bf16 has no numpy dtype: its bit patterns
# travel as uint16, which only _float_rows(..., dtype="bfloat16") produces.
_DTYPES = {np.dtype(np.float32): _ffi.NS_F32, np.dtype(np.float16): _ffi.NS_F16,
           np.dtype(np.uint16): _ffi.NS_BF16}
_EXPLICIT = ("float32", "float16", "bfloat16")


def _float_rows(a, name: str, dtype=None, fn: str = "negsamp") -> np.ndarray:
    """a as a 2-D f32/f16/bf16 array whose rows are unit-stride (a view when possible).

    Floating-point arrays are taken as they are (float32, float16, ml_dtypes bfloat16; float64
    rounded to float32). Any other array is refused rather than cast, since bf16 bits in a
    uint16 array or int8 codes read as integers would be mined silently wrong, unless dtype
    says how to read it: 'float32' / 'float16' convert integers, 'bfloat16' takes bf16 bit
    patterns from a uint16 (or int16) array as they are."""
    a = chk.asarray(a, fn, name)
    if a.ndim != 2:
        raise InvalidArgument(f"{fn}: {name} must be a 2-D array (rows × columns); got shape "
                              f"{a.shape}")
    if dtype is not None:
        if not isinstance(dtype, str):
            try:
                dtype = np.dtype(dtype).name
            except TypeError:
                dtype = repr(dtype)
        if dtype not in _EXPLICIT:
            raise InvalidArgument(f"{fn}: dtype ({dtype!r}) is not one of {list(_EXPLICIT)}")
    if a.dtype.name == "bfloat16":  # ml_dtypes
        a = a.view(np.uint16)
    elif a.dtype.kind == "f":
        if a.dtype not in _DTYPES:
            a = a.astype(np.float32)
    elif dtype is None:
        raise InvalidArgument(
            f"{fn}: {name} has dtype {a.dtype}; expected a floating-point array (float32, "
            f"float16, float64), or pass dtype= to say how to read it (dtype='float32' to "
            f"convert integers, dtype='bfloat16' for bf16 bit patterns in a uint16 array)")
    elif dtype == "bfloat16":
        if a.dtype not in (np.dtype(np.uint16), np.dtype(np.int16)):
            raise InvalidArgument(f"{fn}: {name} has dtype {a.dtype}; dtype='bfloat16' reads "
                                  f"bf16 bit patterns from a uint16 (or int16) array")
        a = a.view(np.uint16)
    elif a.dtype.kind in "iu":
        a = a.astype(np.dtype(dtype))
    else:
        raise InvalidArgument(f"{fn}: {name} has dtype {a.dtype}; expected a real array")
    item = a.itemsize
    rows, cols = a.shape
    if cols > 1 and a.strides[1] != item:
        a = np.ascontiguousarray(a)
    elif rows > 1 and (a.strides[0] % item or a.strides[0] < cols * item):
        a = np.ascontiguousarray(a)
    return a


def _matrix(a: np.ndarray) -> _ffi.ns_matrix:
    rows, cols = a.shape
    ld = a.strides[0] // a.itemsize if rows > 1 else cols
    return _ffi.ns_matrix(a.ctypes.data, _DTYPES[a.dtype], rows, cols, ld)


def _as_f64(a: np.ndarray) -> np.ndarray:
    """A matrix from _float_rows in float64 (bf16 bits widened)."""
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


_EMPTY = _ffi.ns_matrix(None, _ffi.NS_F32, 0, 0, 0)


def _ptr(a, ctype):
    return None if a is None else a.ctypes.data_as(POINTER(ctype))


class IdLists:
    """Lists of ids per query in CSR form (ns_id_lists): ids of query i are
    ids[offsets[i]:offsets[i+1]]. Build from a list of lists (one per query), or from a tuple
    (offsets, ids).

    The arrays are private read-only copies, checked once here (integer dtypes, offsets[0] = 0,
    non-decreasing, offsets[-1] <= len(ids)); so what C reads is always inside them."""

    def __init__(self, lists=None, *, offsets=None, ids=None, fn: str = "IdLists",
                 name: str = "lists"):
        if lists is not None:
            if isinstance(lists, IdLists):
                offsets, ids = lists.offsets, lists.ids
            elif isinstance(lists, tuple):
                if len(lists) != 2:
                    raise InvalidArgument(f"{fn}: {name} as a tuple is (offsets, ids) in CSR "
                                          f"form; give a list of lists for one list per query")
                offsets, ids = lists
            else:
                try:
                    parts = [chk.int_vector(x, fn, f"{name}[{i}]").ravel()
                             for i, x in enumerate(lists)]
                except TypeError:
                    raise InvalidArgument(f"{fn}: {name} must be a list of id lists, an "
                                          f"(offsets, ids) pair or an IdLists") from None
                offsets = np.zeros(len(parts) + 1, dtype=np.int64)
                np.cumsum([len(x) for x in parts], out=offsets[1:])
                ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if offsets is None:
            raise InvalidArgument(f"{fn}: give a list of lists or offsets and ids")
        off = chk.int_vector(offsets, fn, f"{name}.offsets", copy=True)
        idv = chk.int_vector(ids if ids is not None else np.zeros(0, np.int64), fn,
                             f"{name}.ids", copy=True).ravel()
        chk.csr_offsets(off, idv.size, fn, name)
        off.flags.writeable = False
        idv.flags.writeable = False
        self._offsets, self._ids = off, idv
        # Keep one element allocated so the pointer is never NULL for empty lists.
        self._ids_buf = idv if idv.size else np.zeros(1, dtype=np.int64)
        self._struct = _ffi.ns_id_lists(_ptr(off, c_int64), _ptr(self._ids_buf, c_int64),
                                        len(off) - 1)

    offsets = property(lambda self: self._offsets)
    ids = property(lambda self: self._ids)
    struct = property(lambda self: self._struct)

    @property
    def queries(self) -> int:
        return len(self._offsets) - 1

    def __len__(self):
        return self.queries

    def __getitem__(self, i):
        return self._ids[self._offsets[i]:self._offsets[i + 1]]


def _id_lists(x, fn: str, name: str, queries: int):
    """x as IdLists of exactly `queries` lists (None stays None)."""
    if x is None:
        return None
    x = x if isinstance(x, IdLists) else IdLists(x, fn=fn, name=name)
    chk.csr_offsets(x.offsets, x.ids.size, fn, name, queries)
    return x


# ------------------------------------------------------------------ similarity, mining


def similarity(q, p, scale: float = 1.0, normalize: bool = False, *, dtype=None,
               ctx: Context = None):
    """S = scale · q · pᵀ (B×N float32); cosine with normalize=True. dtype: how to read q and
    p when they are not floating-point arrays ('float32', 'float16', 'bfloat16' bit patterns
    in uint16)."""
    fn = "similarity"
    ctx = _ctx(ctx)
    q = _float_rows(q, "q", dtype, fn)
    p = _float_rows(p, "p", dtype, fn)
    scale = chk.real(scale, fn, "scale")
    flags = _ffi.NS_NORMALIZE if chk.flag(normalize, fn, "normalize") else 0
    s = np.empty((q.shape[0], p.shape[0]), dtype=np.float32)
    ctx.check(_c("ns_similarity")(ctx.handle, _matrix(q), _matrix(p), scale, flags,
                                  s.ctypes.data))
    return s


def progress_callback(progress, fn):
    """(C callback or None, list of exceptions) for a Python progress(done, total) -> bool:
    True cancels. An exception in it cancels the call and is kept in the list, to re-raise once
    the C call returns (it must never cross the C frame). Keep the callback alive for the call."""
    raised = []
    if progress is None:
        return None, raised
    if not callable(progress):
        raise InvalidArgument(f"{fn}: progress must be callable (done, total) -> bool")

    def _cb(done, total, user):
        try:
            return 1 if progress(int(done), int(total)) else 0
        except BaseException as e:
            raised.append(e)
            return 1
    return _ffi.ns_progress_fn(_cb), raised


def mine_topk(q, corpus, k: int, *, scale: float = 1.0, normalize: bool = False, exclude=None,
              progress=None, dtype=None, workspace_bytes: int = 0, ctx: Context = None):
    """Exact top-k corpus rows per query: (index int64 B×k, score float32 B×k), best first.

    corpus: a 2-D array (np.memmap works) or an open NpyFile. exclude: per-query corpus rows
    never returned, as a list of lists, an (offsets, ids) pair or an IdLists. dtype: how to
    read q and an array corpus when they are not floating-point ('float32', 'float16',
    'bfloat16' bit patterns in uint16). progress(done, total) may return True to cancel (the
    call then raises InvalidArgument). workspace_bytes: the CUDA backend's device workspace
    budget (0 = the library's default; the queries go in super-blocks when their buffers do not
    fit; the CPU ignores it)."""
    fn = "mine_topk"
    ctx = _ctx(ctx)
    q = _float_rows(q, "q", dtype, fn)
    if isinstance(corpus, NpyFile):
        keep_corpus, cm = corpus._open_mapping(fn)  # keeps the file mapped for the call
    else:
        keep_corpus = _float_rows(corpus, "corpus", dtype, fn)
        cm = _matrix(keep_corpus)
    # k is checked before B×k outputs are allocated (k = 10**12 is an argument error, not a
    # numpy MemoryError); the messages are the library's.
    k = chk.integer(k, fn, "k")
    if k < 1:
        raise InvalidArgument(f"{fn}: k ({k}) must be at least 1")
    if k > cm.rows:
        raise InvalidArgument(f"{fn}: k ({k}) is larger than the corpus ({cm.rows} rows)")
    if k > _ffi.NS_MAX_K:
        raise InvalidArgument(f"{fn}: k ({k}) is larger than NS_MAX_K ({_ffi.NS_MAX_K})")
    opt = _ffi.mine_options_init()
    opt.scale = chk.real(scale, fn, "scale")
    opt.flags = _ffi.NS_NORMALIZE if chk.flag(normalize, fn, "normalize") else 0
    opt.workspace_bytes = chk.integer(workspace_bytes, fn, "workspace_bytes", lo=0)
    ex = _id_lists(exclude, fn, "exclude", q.shape[0])
    if ex is not None:
        opt.exclude = ctypes.pointer(ex.struct)
    cb, raised = progress_callback(progress, fn)
    if cb is not None:
        opt.progress = cb
    shape = (q.shape[0], k)
    index = np.empty(shape, dtype=np.int64)
    score = np.empty(shape, dtype=np.float32)
    st = _c("ns_mine_topk")(ctx.handle, _matrix(q), cm, k, byref(opt), index.ctypes.data,
                             score.ctypes.data)
    if raised:
        raise raised[0]
    ctx.check(st)
    del keep_corpus, ex
    return index, score


class NpyFile(_Owned):
    """A .npy file mapped read-only (ns_npy_open). mine_topk accepts the NpyFile itself as its
    corpus; .array is a numpy view of the mapping.

    close() (also on exit of a with block) ends this object's use of the file: the NpyFile then
    refuses every use with InvalidArgument. Arrays taken from .array stay valid after close():
    each holds the mapping, and the file is unmapped when the last of them is freed."""

    _what = "file"

    def __init__(self, path):
        h = c_void_p()
        _check(_c("ns_npy_open")(str(path).encode(), byref(h)), None)
        self._h = _Handle(h.value, _c("ns_npy_close"))
        self.path = str(path)
        self._matrix = _c("ns_npy_matrix")(h.value)
        m = self._matrix
        self._shape = (int(m.rows), int(m.cols))
        self._dtype = np.dtype(np.float32 if m.dtype == _ffi.NS_F32 else np.float16)

    def _open_mapping(self, fn: str):
        """(the mapping's _Handle, which keeps it mapped while held; its ns_matrix)."""
        if self._h is None:
            raise InvalidArgument(f"{fn}: NpyFile {self.path} is closed")
        return self._h, self._matrix

    @property
    def matrix(self) -> _ffi.ns_matrix:
        return self._open_mapping("NpyFile.matrix")[1]

    @property
    def shape(self):
        return self._shape

    @property
    def dtype(self):
        return self._dtype

    @property
    def array(self) -> np.ndarray:
        """A read-only view of the mapped rows (no copy); it keeps the mapping alive."""
        mapping, m = self._open_mapping("NpyFile.array")
        ld = m.ld or m.cols
        item = self._dtype.itemsize
        if m.rows == 0 or m.cols == 0:
            return np.zeros((m.rows, m.cols), self._dtype)
        return np.asarray(_MappedView(mapping, {
            "shape": (int(m.rows), int(m.cols)), "typestr": self._dtype.str,
            "data": (m.data, True), "strides": (int(ld) * item, item), "version": 3}))


class _MappedView:
    """The base object of an NpyFile.array: numpy reads the buffer through
    __array_interface__, and the array holds this object, which holds the mapping."""

    __slots__ = ("mapping", "__array_interface__")

    def __init__(self, mapping, interface):
        self.mapping = mapping
        self.__array_interface__ = interface


def npy_open(path) -> NpyFile:
    return NpyFile(path)


# ------------------------------------------------------------------ filter, sample

_COUNT_NAMES = [f for f, _ in _ffi.ns_filter_counts._fields_]


def _counts_dict(c: _ffi.ns_filter_counts) -> dict:
    return {name: int(getattr(c, name)) for name in _COUNT_NAMES}


def _filter_options(same_id=True, max_score=None, min_score=None, margin=None, rel_margin=None,
                    rank=None, guide_margin=None, guide_relative=False, fn="filter"):
    o = _ffi.filter_options_init()
    rules = _ffi.NS_FILTER_SAME_ID if chk.flag(same_id, fn, "same_id") else 0
    if max_score is not None:
        rules |= _ffi.NS_FILTER_MAX_SCORE
        o.max_score = chk.real(max_score, fn, "max_score")
    if min_score is not None:
        rules |= _ffi.NS_FILTER_MIN_SCORE
        o.min_score = chk.real(min_score, fn, "min_score")
    if margin is not None:
        rules |= _ffi.NS_FILTER_MARGIN
        o.margin = chk.real(margin, fn, "margin")
    if rel_margin is not None:
        rules |= _ffi.NS_FILTER_REL_MARGIN
        o.rel_margin = chk.real(rel_margin, fn, "rel_margin")
    if rank is not None:
        try:
            lo, hi = rank
        except (TypeError, ValueError):
            raise InvalidArgument(f"{fn}: rank ({rank!r}) must be a pair (min, max)") from None
        rules |= _ffi.NS_FILTER_RANK
        o.rank_min = chk.int64(lo, fn, "rank[0]")
        o.rank_max = chk.int64(hi, fn, "rank[1]")
    if guide_margin is not None:
        rules |= (_ffi.NS_FILTER_GUIDE_REL if chk.flag(guide_relative, fn, "guide_relative")
                  else _ffi.NS_FILTER_GUIDE)
        o.guide_margin = chk.real(guide_margin, fn, "guide_margin")
    o.rules = rules
    return o


class _Candidates:
    """ns_candidates over numpy arrays (kept alive with the struct)."""

    def __init__(self, candidate_id, score, positive_score=None, positive_ids=None,
                 guide_score=None, guide_positive_score=None, query_offset=0, fn="filter"):
        score = chk.asarray(score, fn, "score")
        if score.ndim != 2:
            raise InvalidArgument(f"{fn}: score must be 2-D (queries × candidates); got shape "
                                  f"{score.shape}")
        B, C = score.shape
        self.shape = (B, C)
        self.score = chk.float_vector(score, fn, "score")
        self.id = chk.int_vector(candidate_id, fn, "candidate_id", shape=(B, C))
        self.positive_score = (None if positive_score is None else
                               chk.float_vector(positive_score, fn, "positive_score", size=B))
        self.positive_ids = _id_lists(positive_ids, fn, "positive_ids", B)
        self.guide_score = (None if guide_score is None else
                            chk.float_vector(guide_score, fn, "guide_score", shape=(B, C)))
        self.guide_positive_score = (None if guide_positive_score is None else
                                     chk.float_vector(guide_positive_score, fn,
                                                      "guide_positive_score", size=B))
        self.struct = _ffi.ns_candidates(
            B, C, _ptr(self.id, c_int64), _ptr(self.score, c_float),
            _ptr(self.positive_score, c_float),
            None if self.positive_ids is None else ctypes.pointer(self.positive_ids.struct),
            _ptr(self.guide_score, c_float), _ptr(self.guide_positive_score, c_float),
            chk.int64(query_offset, fn, "query_offset", 0))


def filter(candidate_id, score, positive_score=None, positive_ids=None, *, guide_score=None,
           guide_positive_score=None, same_id=None, max_score=None, min_score=None, margin=None,
           rel_margin=None, rank=None, guide_margin=None, guide_relative=False,
           ctx: Context = None):
    """Drops likely false negatives among candidates (B×C ids and scores, rank order).

    A rule is on when its argument is given: same_id (default: on when positive_ids is given),
    max_score, min_score, margin (s > s⁺ − margin), rel_margin (s > s⁺ − |s⁺|·rel), rank
    (min, max), guide_margin (with guide_score / guide_positive_score; guide_relative for the
    relative form). Returns (keep: bool B×C, counts: dict per rule)."""
    ctx = _ctx(ctx)
    cand = _Candidates(candidate_id, score, positive_score, positive_ids, guide_score,
                       guide_positive_score, fn="filter")
    if same_id is None:
        same_id = positive_ids is not None
    opt = _filter_options(same_id, max_score, min_score, margin, rel_margin, rank, guide_margin,
                          guide_relative)
    keep = np.empty(cand.shape, dtype=np.uint8)
    counts = _ffi.ns_filter_counts()
    ctx.check(_c("ns_filter")(ctx.handle, byref(cand.struct), byref(opt), keep.ctypes.data,
                              byref(counts)))
    return keep.view(np.bool_), _counts_dict(counts)


_STRATEGIES = {"top": _ffi.NS_SAMPLE_TOP, "uniform": _ffi.NS_SAMPLE_UNIFORM,
               "simans": _ffi.NS_SAMPLE_SIMANS, "softmax": _ffi.NS_SAMPLE_SOFTMAX}


def _sampler_options(strategy="simans", simans_a=0.5, simans_b=0.0, temperature=1.0, seed=0,
                     step=0, fn="sample"):
    o = _ffi.sampler_options_init()
    if isinstance(strategy, str):
        if strategy not in _STRATEGIES:
            raise InvalidArgument(f"{fn}: strategy ({strategy!r}) is not one of "
                                  f"{sorted(_STRATEGIES)}")
        strategy = _STRATEGIES[strategy]
    o.strategy = chk.integer(strategy, fn, "strategy", 0, max(_STRATEGIES.values()))
    o.simans_a = chk.real(simans_a, fn, "simans_a")
    o.simans_b = chk.real(simans_b, fn, "simans_b")
    o.temperature = chk.real(temperature, fn, "temperature")
    o.seed = chk.uint64(seed, fn, "seed")
    o.step = chk.uint64(step, fn, "step")
    return o


Sample = namedtuple("Sample", "index score count")


def sample(candidate_id, score, m: int, *, positive_score=None, keep=None,
           strategy="simans", simans_a=0.5, simans_b=0.0, temperature=1.0, seed=0, step=0,
           query_offset=0, ctx: Context = None) -> Sample:
    """Draws m kept candidates per query without replacement (Gumbel-top-m, Philox keyed by
    seed, step, the global query id query_offset + i and the candidate id).

    Returns Sample(index int64 B×m (ids, -1 padded), score float32 B×m (NaN padded),
    count int64 B)."""
    fn = "sample"
    ctx = _ctx(ctx)
    cand = _Candidates(candidate_id, score, positive_score, None, query_offset=query_offset,
                       fn=fn)
    keep_a = None if keep is None else chk.mask_vector(keep, fn, "keep", shape=cand.shape)
    opt = _sampler_options(strategy, simans_a, simans_b, temperature, seed, step)
    B, C = cand.shape
    m = chk.integer(m, fn, "m")
    if m < 1:
        raise InvalidArgument(f"{fn}: m ({m}) must be at least 1")
    if m > C:
        raise InvalidArgument(f"{fn}: m ({m}) is larger than the candidates per query ({C})")
    index = np.empty((B, m), dtype=np.int64)
    out_score = np.empty((B, m), dtype=np.float32)
    count = np.empty(B, dtype=np.int64)
    ctx.check(_c("ns_sample")(ctx.handle, byref(cand.struct),
                              None if keep_a is None else keep_a.ctypes.data, byref(opt), m,
                              index.ctypes.data, out_score.ctypes.data, count.ctypes.data))
    return Sample(index, out_score, count)


# ------------------------------------------------------------------ InfoNCE


def _loss_options(temperature=0.05, symmetric=False, mask_same_id=True, tau_plus=0.0, beta=0.0,
                  share_hard=False, fn="infonce"):
    o = _ffi.loss_options_init()
    o.temperature = chk.real(temperature, fn, "temperature")
    o.symmetric = int(chk.flag(symmetric, fn, "symmetric"))
    o.mask_same_id = int(chk.flag(mask_same_id, fn, "mask_same_id"))
    o.tau_plus = chk.real(tau_plus, fn, "tau_plus")
    o.beta = chk.real(beta, fn, "beta")
    o.share_hard = int(chk.flag(share_hard, fn, "share_hard"))
    return o


class _InfoNCEInputs:
    def __init__(self, query, passage, positive=None, hard=None, hard_keep=None, extra=None,
                 passage_id=None, hard_id=None, extra_id=None, fn="infonce_forward"):
        self.query = _float_rows(query, "query", None, fn)
        self.passage = _float_rows(passage, "passage", None, fn)
        B, N = self.query.shape[0], self.passage.shape[0]
        self.positive = None if positive is None else chk.int_vector(
            positive, fn, "positive", size=B, lo=0, hi=N)
        self.hard_shape = None
        h = 0
        if hard is not None:
            hard = chk.asarray(hard, fn, "hard")
            self.hard_shape = hard.shape
            if hard.ndim == 3:
                if hard.shape[0] != B:
                    raise InvalidArgument(f"{fn}: hard has {hard.shape[0]} queries (shape "
                                          f"{hard.shape}) but query has {B} rows")
                h = hard.shape[1]
                hard = hard.reshape(B * h, hard.shape[2])
            elif hard.ndim == 2:
                if (B == 0 and hard.shape[0]) or (B and hard.shape[0] % B):
                    raise InvalidArgument(f"{fn}: hard has {hard.shape[0]} rows, not a "
                                          f"multiple of the {B} queries (expected B·h rows)")
                h = hard.shape[0] // B if B else 0
            self.hard = _float_rows(hard, "hard", None, fn)
            hm = _matrix(self.hard) if self.hard.shape[0] else _EMPTY
        else:
            self.hard = None
            hm = _EMPTY
        self.hard_keep = (None if hard_keep is None else
                          chk.mask_vector(hard_keep, fn, "hard_keep", size=B * h))
        queue_view = None
        if isinstance(extra, Queue):
            # The queue's own memory, no copy: valid until its next push.
            self.queue = extra
            queue_view = extra._view_raw()
            extra = None
            if extra_id is not None:
                raise InvalidArgument(f"{fn}: extra_id must be None when extra is a Queue (its "
                                      f"ids are used)")
        self.extra = None if extra is None else _float_rows(extra, "extra", None, fn)
        self.passage_id = None if passage_id is None else chk.int_vector(
            passage_id, fn, "passage_id", size=N)
        self.hard_id = None if hard_id is None else chk.int_vector(hard_id, fn, "hard_id",
                                                                   size=B * h)
        self.extra_id = None if extra_id is None else chk.int_vector(
            extra_id, fn, "extra_id", size=self.extra.shape[0] if self.extra is not None
            else 0)
        self.struct = _ffi.ns_infonce_inputs(
            _matrix(self.query), _matrix(self.passage), _ptr(self.positive, c_int64), hm, h,
            _ptr(self.hard_keep, ctypes.c_uint8),
            _matrix(self.extra) if self.extra is not None and self.extra.shape[0] else _EMPTY,
            _ptr(self.passage_id, c_int64), _ptr(self.hard_id, c_int64),
            _ptr(self.extra_id, c_int64))
        if queue_view is not None and queue_view[0].rows > 0:
            self.struct.extra = queue_view[0]
            self.struct.extra_id = queue_view[1]


class _LossGroups:
    """ns_loss_groups over arrays (kept alive with the struct), or none: the same-group rule.
    query_group (B), passage_group (N), hard_group (B·h, or B×h), extra_group (E) are integer
    group ids, a negative id = in no group; group_weight 0 masks a query's same-group
    candidates, (0, 1] down-weights them (their logits get log w); never the query's positive.
    The candidate groups are optional; query_group is required once any is given."""

    def __init__(self, inp, query_group, passage_group, hard_group, extra_group, group_weight,
                 fn):
        self.struct = None
        given = [g is not None for g in (passage_group, hard_group, extra_group)]
        if query_group is None:
            if any(given):
                raise InvalidArgument(f"{fn}: passage_group, hard_group or extra_group given "
                                      f"without query_group (the query's group ids)")
            return
        B, N = inp.query.shape[0], inp.passage.shape[0]
        h = 0 if inp.hard is None or B == 0 else inp.hard.shape[0] // B
        E = (inp.struct.extra.rows if inp.extra is not None or getattr(inp, "queue", None)
             else 0)
        vec = lambda a, name, n: None if a is None else chk.int_vector(  # noqa: E731
            np.asarray(a).reshape(-1) if hasattr(a, "__len__") else a, fn, name, size=n)
        self.q = vec(query_group, "query_group", B)
        self.p = vec(passage_group, "passage_group", N)
        self.h = vec(hard_group, "hard_group", B * h)
        self.e = vec(extra_group, "extra_group", E)
        g = _ffi.loss_groups_init()
        g.query, g.passage, g.hard, g.extra = (_ptr(a, c_int64)
                                               for a in (self.q, self.p, self.h, self.e))
        g.weight = chk.real(group_weight, fn, "group_weight")
        self.struct = g

    def apply(self, opt):
        if self.struct is not None:
            opt.groups = ctypes.pointer(self.struct)
        return opt


InfoNCEForward = namedtuple("InfoNCEForward", "loss per_query saved")
InfoNCEGrads = namedtuple("InfoNCEGrads", "query passage hard temperature")

_SAVED = _ffi.NS_INFONCE_SAVED_PER_QUERY
_SAVED_LPOS = 7  # saved[i, 7] is l⁺_i, the positive logit q_i·p_pos(i)/τ (src/infonce_internal.h)


def saved_mismatch(saved_lpos, q, p, positive, temperature):
    """Rows whose saved positive logit is not q_i·p_pos(i)/τ of these inputs (float64
    reference; the tolerance is 1e-3 of Σ_k |q_ik p_jk| / τ, far above f32 GEMM rounding), as
    (row, saved value, expected value) or None. The forward's saved then belongs to another
    batch (or other options): its row statistics would give wrong (often -inf) gradients."""
    pos = np.arange(q.shape[0]) if positive is None else positive
    prod = q * p[pos]
    ref = prod.sum(1) / temperature
    bound = 1e-3 * np.abs(prod).sum(1) / abs(temperature) + 1e-5 * np.abs(ref) + 1e-6
    bad = ~(np.abs(saved_lpos.astype(np.float64) - ref) <= bound)
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return i, float(saved_lpos[i]), float(ref[i])


def _check_saved(saved, inp: _InfoNCEInputs, temperature: float, fn: str) -> np.ndarray:
    """saved as the forward's (B, NS_INFONCE_SAVED_PER_QUERY) float32 array for this batch."""
    B = inp.query.shape[0]
    saved = chk.asarray(saved, fn, "saved")
    if saved.dtype != np.float32:
        raise InvalidArgument(f"{fn}: saved has dtype {saved.dtype}; expected float32 (the "
                              f"saved output of infonce_forward)")
    if saved.shape != (B, _SAVED):
        raise InvalidArgument(f"{fn}: saved has shape {saved.shape}; expected ({B}, {_SAVED}) "
                              f"(the saved output of infonce_forward for these {B} queries)")
    saved = np.ascontiguousarray(saved)
    fin = np.isfinite(saved)
    if not fin.all():
        i, j = (int(x) for x in np.argwhere(~fin)[0])
        raise NonFinite(f"{fn}: saved[{i}, {j}] ({saved[i, j]}) is not finite (pass the saved "
                        f"buffer of the forward with the same inputs and options)")
    if B:
        bad = saved_mismatch(saved[:, _SAVED_LPOS], _as_f64(inp.query), _as_f64(inp.passage),
                             inp.positive, temperature)
        if bad is not None:
            i, got, want = bad
            raise InvalidArgument(
                f"{fn}: saved is not from the forward of these inputs: row {i} holds the "
                f"positive logit {got:.6g}, but query {i} and its positive give {want:.6g} "
                f"(pass the saved output of infonce_forward for this batch and temperature)")
    return saved


def infonce_forward(query, passage, *, positive=None, hard=None, hard_keep=None, extra=None,
                    passage_id=None, hard_id=None, extra_id=None, temperature=0.05,
                    symmetric=False, mask_same_id=True, tau_plus=0.0, beta=0.0,
                    share_hard=False, query_group=None, passage_group=None, hard_group=None,
                    extra_group=None, group_weight=0.0, ctx: Context = None) -> InfoNCEForward:
    """InfoNCE over in-batch passages, hard negatives (B×h×d or (B·h)×d) and extra rows
    (an array, or a Queue whose rows and ids are used in place).

    Same-group false negatives (ns_loss_groups): query_group (B ids), and optionally
    passage_group (N), hard_group (B·h) and extra_group (E); a candidate of the query's group
    (ids >= 0, equal) is masked (group_weight 0) or down-weighted (its logit + log
    group_weight, group_weight in (0, 1]); the query's positive never is.

    Returns (loss: float, per_query: float32 B, saved: float32 B×NS_INFONCE_SAVED_PER_QUERY
    for infonce_backward, which checks that it belongs to the inputs it is given)."""
    fn = "infonce_forward"
    ctx = _ctx(ctx)
    inp = _InfoNCEInputs(query, passage, positive, hard, hard_keep, extra, passage_id, hard_id,
                         extra_id, fn)
    opt = _loss_options(temperature, symmetric, mask_same_id, tau_plus, beta, share_hard, fn)
    groups = _LossGroups(inp, query_group, passage_group, hard_group, extra_group, group_weight,
                         fn)
    groups.apply(opt)
    B = inp.query.shape[0]
    loss = c_float()
    per_query = np.empty(B, dtype=np.float32)
    saved = np.empty((B, _SAVED), dtype=np.float32)
    ctx.check(_c("ns_infonce_forward")(ctx.handle, byref(inp.struct), byref(opt), byref(loss),
                                       per_query.ctypes.data, saved.ctypes.data))
    return InfoNCEForward(float(loss.value), per_query, saved)


_WANT = ("query", "passage", "hard", "temperature")


def infonce_backward(query, passage, saved, *, grad_loss=1.0, positive=None, hard=None,
                     hard_keep=None, extra=None, passage_id=None, hard_id=None, extra_id=None,
                     temperature=0.05, symmetric=False, mask_same_id=True, tau_plus=0.0,
                     beta=0.0, share_hard=False, query_group=None, passage_group=None,
                     hard_group=None, extra_group=None, group_weight=0.0, want=_WANT,
                     ctx: Context = None) -> InfoNCEGrads:
    """Gradients of grad_loss · loss (the same inputs and options as the forward, group ids
    too, and its saved: a float32 B×NS_INFONCE_SAVED_PER_QUERY array, refused when its shape,
    dtype or stored positive logits do not match these inputs). want names the gradients to
    compute; the others are None."""
    fn = "infonce_backward"
    ctx = _ctx(ctx)
    inp = _InfoNCEInputs(query, passage, positive, hard, hard_keep, extra, passage_id, hard_id,
                         extra_id, fn)
    opt = _loss_options(temperature, symmetric, mask_same_id, tau_plus, beta, share_hard, fn)
    groups = _LossGroups(inp, query_group, passage_group, hard_group, extra_group, group_weight,
                         fn)
    groups.apply(opt)
    want = (want,) if isinstance(want, str) else tuple(want)
    unknown = [w for w in want if w not in _WANT]
    if unknown:
        raise InvalidArgument(f"{fn}: want ({unknown}) names no gradient; known: {list(_WANT)}")
    saved = _check_saved(saved, inp, opt.temperature, fn)
    grad_loss = chk.real(grad_loss, fn, "grad_loss")
    gq = np.empty(inp.query.shape, np.float32) if "query" in want else None
    gp = np.empty(inp.passage.shape, np.float32) if "passage" in want else None
    gh = (np.empty(inp.hard.shape, np.float32)
          if "hard" in want and inp.hard is not None else None)
    gt = c_float() if "temperature" in want else None
    grads = _ffi.ns_infonce_grads(_ptr(gq, c_float), _ptr(gp, c_float), _ptr(gh, c_float),
                                  None if gt is None else ctypes.pointer(gt))
    ctx.check(_c("ns_infonce_backward")(ctx.handle, byref(inp.struct), byref(opt),
                                        saved.ctypes.data, grad_loss, byref(grads)))
    if gh is not None and inp.hard_shape is not None:
        gh = gh.reshape(inp.hard_shape)
    return InfoNCEGrads(gq, gp, gh, None if gt is None else float(gt.value))


# ------------------------------------------------------------------ queue


class Queue(_Owned):
    """A FIFO of past passage embeddings (f32) and ids, used as extra negatives."""

    _what = "queue"

    def __init__(self, capacity: int, dim: int, ctx: Context = None):
        self.ctx = _ctx(ctx)
        capacity = chk.int64(capacity, "Queue", "capacity", 0)
        dim = chk.int64(dim, "Queue", "dim", 0)
        h = c_void_p()
        self.ctx.check(_c("ns_queue_create")(self.ctx.handle, capacity, dim, byref(h)))
        # The queue's memory belongs to its context: the context lives as long as the queue.
        self._h = _Handle(h.value, _c("ns_queue_destroy"), keep=(self.ctx._live(),))
        self.capacity, self.dim = capacity, dim

    def push(self, rows, ids=None) -> None:
        fn = "Queue.push"
        rows = _float_rows(rows, "rows", None, fn)
        if rows.dtype != np.float32:
            rows = rows.astype(np.float32)
        ids_a = None if ids is None else chk.int_vector(ids, fn, "ids", size=rows.shape[0])
        self.ctx.check(_c("ns_queue_push")(self.ctx.handle, self.handle, _matrix(rows),
                                           None if ids_a is None else ids_a.ctypes.data))

    def __len__(self) -> int:
        return int(_c("ns_queue_size")(self.handle))

    def _view_raw(self):
        m = _ffi.ns_matrix()
        ids = POINTER(c_int64)()
        self.ctx.check(_c("ns_queue_view")(self.ctx.handle, self.handle, byref(m), byref(ids)))
        return m, ids

    def view(self):
        """(rows float32 n×dim, ids int64 n): copies of what the queue holds, storage order."""
        m, ids = self._view_raw()
        n, d = m.rows, m.cols
        if n == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64)
        ld = m.ld or d
        flat = np.ctypeslib.as_array(ctypes.cast(m.data, POINTER(c_float)),
                                     shape=((n - 1) * ld + d,))
        rows = np.lib.stride_tricks.as_strided(flat, shape=(n, d), strides=(ld * 4, 4)).copy()
        id_arr = np.ctypeslib.as_array(ids, shape=(n,)).copy() if ids else np.full(n, -1)
        return rows, id_arr

    @property
    def matrix(self) -> _ffi.ns_matrix:
        """The queue's rows as an ns_matrix (for the extra negatives of a loss)."""
        m = _ffi.ns_matrix()
        ids = POINTER(c_int64)()
        self.ctx.check(_c("ns_queue_view")(self.ctx.handle, self.handle, byref(m), byref(ids)))
        return m



# ------------------------------------------------------------------ communicators


class Comm(_Owned):
    """A communicator over ranks (ns_comm): MPI for CPU contexts, NCCL for CUDA contexts.
    Pass it to Step(comm=...). Build with Comm.mpi(...) or Comm.nccl(...)."""

    _what = "communicator"

    def __init__(self, handle, ctx: Context, keep=None):
        self.ctx = ctx
        self._keep = keep
        self._h = _Handle(handle, _c("ns_comm_destroy"), keep=(ctx._live(),))

    @staticmethod
    def _options(timeout_ms):
        o = _ffi.comm_options_init()
        if timeout_ms is not None:
            o.timeout_ms = chk.integer(timeout_ms, "Comm", "timeout_ms", 0, 2**31 - 1)
        return o

    @classmethod
    def mpi(cls, mpi_comm, ctx: Context = None, timeout_ms: int = None) -> "Comm":
        """mpi_comm: an mpi4py communicator, or the address (int) of an MPI_Comm handle.
        MPI must be initialised; negsamp duplicates the communicator."""
        ctx = _ctx(ctx)
        if hasattr(mpi_comm, "py2f"):  # mpi4py
            from mpi4py import MPI  # noqa: F401
            address = MPI._addressof(mpi_comm)
        else:
            address = int(mpi_comm)
        h = c_void_p()
        o = cls._options(timeout_ms)
        ctx.check(_c("ns_comm_create_mpi")(ctx.handle, address, byref(o), byref(h)))
        return cls(h.value, ctx, mpi_comm)

    @classmethod
    def nccl(cls, unique_id: bytes, nranks: int, rank: int, ctx: Context,
             timeout_ms: int = None) -> "Comm":
        """An owned NCCL communicator from a unique id (nccl_unique_id() on rank 0, broadcast
        by the caller). ctx must be a CUDA context."""
        if not isinstance(unique_id, (bytes, bytearray)):
            raise InvalidArgument(f"Comm.nccl: unique_id must be bytes (nccl_unique_id()), not "
                                  f"{type(unique_id).__name__}")
        if len(unique_id) != _ffi.NS_NCCL_UNIQUE_ID_BYTES:
            raise InvalidArgument(f"Comm.nccl: unique_id has {len(unique_id)} bytes; expected "
                                  f"{_ffi.NS_NCCL_UNIQUE_ID_BYTES}")
        buf = ctypes.create_string_buffer(bytes(unique_id), _ffi.NS_NCCL_UNIQUE_ID_BYTES)
        h = c_void_p()
        o = cls._options(timeout_ms)
        nranks = chk.integer(nranks, "Comm.nccl", "nranks", 1, 2**31 - 1)
        rank = chk.integer(rank, "Comm.nccl", "rank", 0, nranks - 1)
        ctx.check(_c("ns_comm_create_nccl_id")(ctx.handle, buf, nranks, rank, byref(o),
                                               byref(h)))
        return cls(h.value, ctx)

    @property
    def rank(self) -> int:
        return int(_c("ns_comm_rank")(self.handle))

    @property
    def size(self) -> int:
        return int(_c("ns_comm_size")(self.handle))



def nccl_unique_id() -> bytes:
    """A fresh ncclUniqueId (NS_NCCL_UNIQUE_ID_BYTES bytes) for Comm.nccl."""
    buf = ctypes.create_string_buffer(_ffi.NS_NCCL_UNIQUE_ID_BYTES)
    _check(_c("ns_nccl_unique_id")(None, buf), None)
    return buf.raw


# ------------------------------------------------------------------ the step

StepResult = namedtuple("StepResult",
                        "loss per_query negative_id negative_row negative_count filtered")
StepGrads = namedtuple("StepGrads", "query positive candidate temperature")


class Step:
    """The orchestrated step (ns_step_forward / ns_step_backward): filter → sample h of the C
    candidates per query → InfoNCE, then its backward.

    filter, sampler and loss are dicts of the keyword arguments of negsamp.filter (rules),
    negsamp.sample (strategy, simans_a, simans_b, temperature, seed, step) and
    infonce_forward (temperature, symmetric, mask_same_id, tau_plus, beta, share_hard).
    random_negatives: h_rand more per query drawn uniformly among the kept candidates not
    chosen as hard — the last random_pool candidate slots only, when random_pool > 0 (put
    negsamp.sample_corpus draws there; the hard sampler then never sees them); the results'
    negative columns are the h hard ones, then the h_rand random ones.
    The step owns its context (the step's state lives there) unless ctx is given.
    forward_only=True: no backward will follow (evaluation); otherwise a step without comm (CPU
    or CUDA) computes the gradients in its forward (one ns_infonce_forward_backward) and the
    backward scales them."""

    def __init__(self, hard_negatives: int, *, filter=None, sampler=None, loss=None,
                 queue: Queue = None, enqueue: bool = False, comm: "Comm" = None,
                 random_negatives: int = 0, random_pool: int = 0, ctx: Context = None,
                 forward_only: bool = False):
        if ctx is None:
            ctx = (comm.ctx if comm is not None else
                   queue.ctx if queue is not None else Context("cpu"))
        self.ctx = _ctx(ctx)
        o = _ffi.step_options_init()
        o.hard_negatives = chk.int64(hard_negatives, "Step", "hard_negatives", 0)
        o.random_negatives = chk.int64(random_negatives, "Step", "random_negatives", 0)
        o.random_pool = chk.int64(random_pool, "Step", "random_pool", 0)
        f = dict(filter or {})
        f.setdefault("same_id", True)
        # The step options point to these: they live as long as the step.
        self._filter = _filter_options(**f)
        self._sampler = _sampler_options(**(sampler or {}))
        self._loss = _loss_options(**(loss or {}))
        o.filter = ctypes.pointer(self._filter)
        o.sampler = ctypes.pointer(self._sampler)
        o.loss = ctypes.pointer(self._loss)
        o.queue = None if queue is None else queue.handle
        o.enqueue = int(chk.flag(enqueue, "Step", "enqueue"))
        o.forward_only = int(chk.flag(forward_only, "Step", "forward_only"))
        o.comm = None if comm is None else comm.handle
        self.comm = comm
        self.options = o
        self.queue = queue
        self._batch = None

    def forward(self, query, positive, candidate=None, *, candidate_id=None, positive_id=None,
                guide_score=None, guide_positive_score=None, query_offset=0,
                step=None) -> StepResult:
        """candidate: B×C×d (or (B·C)×d with candidate_id of B·C). step sets the sampler's
        step counter for this call. Returns copies of the library's results."""
        fn = "Step.forward"
        keep = {}
        q = keep["q"] = _float_rows(query, "query", None, fn)
        p = keep["p"] = _float_rows(positive, "positive", None, fn)
        B = q.shape[0]
        b = _ffi.ns_batch()
        b.query, b.positive = _matrix(q), _matrix(p)
        C = 0
        if candidate is not None:
            cand = chk.asarray(candidate, fn, "candidate")
            cand_shape = cand.shape
            if cand.ndim == 3:
                if cand.shape[0] != B:
                    raise InvalidArgument(f"{fn}: candidate has {cand.shape[0]} queries (shape "
                                          f"{cand.shape}) but query has {B} rows")
                C = cand.shape[1]
                cand = cand.reshape(-1, cand.shape[2])
            elif cand.ndim == 2:
                if (B == 0 and cand.shape[0]) or (B and cand.shape[0] % B):
                    raise InvalidArgument(f"{fn}: candidate has {cand.shape[0]} rows, not a "
                                          f"multiple of the {B} queries (expected B·C rows)")
                C = cand.shape[0] // B if B else 0
            c = keep["c"] = _float_rows(cand, "candidate", None, fn)
            b.candidate = _matrix(c) if c.shape[0] else _EMPTY
        else:
            cand_shape = None
            b.candidate = _EMPTY
        b.candidates_per_query = C
        if positive_id is not None:
            keep["pid"] = chk.int_vector(positive_id, fn, "positive_id", size=B)
            b.positive_id = _ptr(keep["pid"], c_int64)
        if candidate_id is not None:
            keep["cid"] = chk.int_vector(candidate_id, fn, "candidate_id", size=B * C)
            b.candidate_id = _ptr(keep["cid"], c_int64)
        if guide_score is not None:
            keep["gs"] = chk.float_vector(guide_score, fn, "guide_score", size=B * C)
            b.guide_score = _ptr(keep["gs"], c_float)
        if guide_positive_score is not None:
            keep["gps"] = chk.float_vector(guide_positive_score, fn, "guide_positive_score",
                                           size=B)
            b.guide_positive_score = _ptr(keep["gps"], c_float)
        b.query_offset = chk.int64(query_offset, fn, "query_offset", 0)
        if step is not None:
            self._sampler.step = chk.uint64(step, fn, "step")
        # A queue or communicator closed since the Step was made is refused, never handed to C
        # freed; their handles are held with the batch (the backward uses them too).
        hq = None if self.queue is None else self.queue._live(fn)
        hc = None if self.comm is None else self.comm._live(fn)
        self.options.queue = None if hq is None else hq.value
        self.options.comm = None if hc is None else hc.value
        keep["handles"] = (self.ctx._live(fn), hq, hc)
        r = _ffi.ns_step_result()
        self.ctx.check(_c("ns_step_forward")(self.ctx.handle, byref(b), byref(self.options),
                                             byref(r)))
        # The library reads the batch again in the backward: keep its buffers alive.
        self._batch, self._keep, self._cand_shape = b, keep, cand_shape
        self._shapes = (q.shape, p.shape, keep["c"].shape if "c" in keep else None)
        h = self.options.hard_negatives + self.options.random_negatives

        def arr(ptr, n, dtype):
            if not ptr or n == 0:
                return np.zeros(n, dtype=dtype)
            return np.ctypeslib.as_array(ptr, shape=(n,)).astype(dtype, copy=True)
        per_query = arr(r.per_query, B, np.float32)
        nid = arr(r.negative_id, B * h, np.int64).reshape(B, h)
        nrow = arr(r.negative_row, B * h, np.int64).reshape(B, h)
        ncount = arr(r.negative_count, B, np.int64)
        return StepResult(float(r.loss), per_query, nid, nrow, ncount, _counts_dict(r.filtered))

    def backward(self, grad_loss: float = 1.0,
                 want=("query", "positive", "candidate", "temperature")) -> StepGrads:
        if self._batch is None:
            raise InvalidArgument("Step.backward: no forward to take the backward of")
        qs, ps, cs = self._shapes
        gq = np.empty(qs, np.float32) if "query" in want else None
        gp = np.empty(ps, np.float32) if "positive" in want else None
        gc = np.empty(cs, np.float32) if "candidate" in want and cs is not None else None
        gt = c_float() if "temperature" in want else None
        g = _ffi.ns_step_grads(_ptr(gq, c_float), _ptr(gp, c_float), _ptr(gc, c_float),
                               None if gt is None else ctypes.pointer(gt))
        grad_loss = chk.real(grad_loss, "Step.backward", "grad_loss")
        self.ctx.check(_c("ns_step_backward")(self.ctx.handle, grad_loss, byref(g)))
        if gc is not None and self._cand_shape is not None:
            gc = gc.reshape(self._cand_shape)
        return StepGrads(gq, gp, gc, None if gt is None else float(gt.value))
