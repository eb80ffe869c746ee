"""Checks of the Python values and numpy buffers the binding hands to C.

The library checks what it can see (shapes it is told, values it reads), but not what only
Python knows: how long a buffer really is, what its dtype means, whether an integer was an
integer. Everything here raises negsamp.InvalidArgument in the library's message style,
``"<function>: <argument> (<value>) <what is wrong>"``, before any pointer reaches C and before
any output is allocated.
"""
from __future__ import annotations

import numbers
import operator

import numpy as np

from ._errors import InvalidArgument

INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


def _show(value) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def integer(value, fn: str, name: str, lo: int | None = None, hi: int | None = None,
            hi_what: str | None = None) -> int:
    """value as a Python int: a real integer (int, numpy integer, 0-d integer array), never a
    bool, a float (5.7 is not truncated, 5.0 is not accepted) or a string, within [lo, hi]."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes, float,
                                                                 np.floating)):
        raise InvalidArgument(f"{fn}: {name} ({_show(value)}) must be an integer, not "
                              f"{type(value).__name__}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidArgument(f"{fn}: {name} ({_show(value)}) must be an integer, not "
                              f"{type(value).__name__}") from None
    if lo is not None and v < lo:
        raise InvalidArgument(f"{fn}: {name} ({v}) must be at least {lo}")
    if hi is not None and v > hi:
        raise InvalidArgument(f"{fn}: {name} ({v}) is larger than {hi_what or hi}")
    return v


def int64(value, fn: str, name: str, lo: int | None = -2**63) -> int:
    return integer(value, fn, name, lo, INT64_MAX, "the int64 maximum (2^63 - 1)")


def uint64(value, fn: str, name: str) -> int:
    """A seed or a step counter: 0 .. 2^64 - 1 (no wrap of -1 or 2^64)."""
    return integer(value, fn, name, 0, UINT64_MAX, "the uint64 maximum (2^64 - 1)")


def real(value, fn: str, name: str) -> float:
    """value as a float: a real number (not a string, not None)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (numbers.Real, np.generic,
                                                                 np.ndarray)):
        raise InvalidArgument(f"{fn}: {name} ({_show(value)}) must be a real number, not "
                              f"{type(value).__name__}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{fn}: {name} ({_show(value)}) must be a real number") from None


def flag(value, fn: str, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)) or value in (0, 1):
        return bool(value)
    raise InvalidArgument(f"{fn}: {name} ({_show(value)}) must be True or False")


def asarray(a, fn: str, name: str) -> np.ndarray:
    try:
        return np.asarray(a)
    except OverflowError:
        raise InvalidArgument(f"{fn}: {name} holds an integer outside int64") from None
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{fn}: {name} is not a numeric array ({e})") from None


def _shape_check(a: np.ndarray, fn: str, name: str, size, shape) -> np.ndarray:
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if a.shape != shape:
            # A flat array of the right length stands for the matrix (row-major), and a
            # matrix of the right shape for the flat vector.
            if a.size == int(np.prod(shape)) and (a.ndim == 1 or len(shape) == 1):
                a = a.reshape(shape)
            else:
                raise InvalidArgument(f"{fn}: {name} has shape {a.shape}; expected {shape}")
    if size is not None and a.size != size:
        raise InvalidArgument(f"{fn}: {name} has {a.size} elements; expected {size}")
    return a


def int_vector(a, fn: str, name: str, size: int | None = None, shape=None,
               lo: int | None = None, hi: int | None = None, copy: bool = False) -> np.ndarray:
    """a as a C-contiguous int64 array: integer dtypes only (float ids are not truncated,
    uint64 above 2^63 - 1 does not wrap), every value in [lo, hi) when given."""
    a = asarray(a, fn, name)
    if a.size == 0 and a.dtype.kind in "fO":
        a = a.astype(np.int64)  # an empty list
    if a.dtype.kind == "O" and all(isinstance(x, int) and not isinstance(x, bool)
                                   for x in a.flat):
        # Python ints that numpy could not fit in int64 (2**64 in a list).
        raise InvalidArgument(f"{fn}: {name} holds an integer outside int64")
    if a.dtype.kind not in "iu":
        raise InvalidArgument(f"{fn}: {name} has dtype {a.dtype}; expected an integer array")
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and a.max() > INT64_MAX:
        i = int(np.argmax(a > INT64_MAX))
        raise InvalidArgument(f"{fn}: {name}[{i}] ({int(a.ravel()[i])}) is larger than the "
                              f"int64 maximum")
    a = _shape_check(a, fn, name, size, shape)
    a = np.array(a, dtype=np.int64, order="C", copy=True) if copy else \
        np.ascontiguousarray(a, dtype=np.int64)
    if a.size and (lo is not None or hi is not None):
        flat = a.ravel()
        bad = np.zeros(flat.shape, bool)
        if lo is not None:
            bad |= flat < lo
        if hi is not None:
            bad |= flat >= hi
        if bad.any():
            i = int(np.argmax(bad))
            rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'})"
            raise InvalidArgument(f"{fn}: {name}[{i}] ({int(flat[i])}) is outside {rng}")
    return a


def float_vector(a, fn: str, name: str, size: int | None = None, shape=None) -> np.ndarray:
    """a as a C-contiguous float32 array: floating-point input only (an integer or bool array is
    refused, not reinterpreted)."""
    a = asarray(a, fn, name)
    if a.size == 0 and a.dtype.kind == "O":
        a = a.astype(np.float32)
    if a.dtype.kind != "f":
        raise InvalidArgument(f"{fn}: {name} has dtype {a.dtype}; expected a floating-point "
                              f"array (float32)")
    a = _shape_check(a, fn, name, size, shape)
    return np.ascontiguousarray(a, dtype=np.float32)


def mask_vector(a, fn: str, name: str, size: int | None = None, shape=None) -> np.ndarray:
    """a as a C-contiguous uint8 0/1 array: bool or integer input (nonzero = 1)."""
    a = asarray(a, fn, name)
    if a.dtype.kind not in "biu":
        raise InvalidArgument(f"{fn}: {name} has dtype {a.dtype}; expected a bool (or integer) "
                              f"mask")
    a = _shape_check(a, fn, name, size, shape)
    return np.ascontiguousarray(a != 0, dtype=np.uint8)


def csr_offsets(offsets: np.ndarray, ids_len: int, fn: str, name: str,
                queries: int | None = None) -> None:
    """CSR offsets: queries + 1 entries, offsets[0] == 0, non-decreasing, last <= len(ids)."""
    if offsets.ndim != 1 or offsets.size < 1:
        raise InvalidArgument(f"{fn}: {name}.offsets has shape {offsets.shape}; expected one "
                              f"entry per query plus one")
    if queries is not None and offsets.size != queries + 1:
        raise InvalidArgument(f"{fn}: {name} has {offsets.size - 1} lists ({offsets.size} "
                              f"offsets) but there are {queries} queries (expected "
                              f"{queries + 1} offsets)")
    if offsets[0] != 0:
        raise InvalidArgument(f"{fn}: {name}.offsets[0] ({int(offsets[0])}) must be 0")
    if offsets.size > 1:
        dec = np.diff(offsets) < 0
        if dec.any():
            i = int(np.argmax(dec))
            raise InvalidArgument(f"{fn}: {name}.offsets[{i + 1}] ({int(offsets[i + 1])}) is "
                                  f"smaller than offsets[{i}] ({int(offsets[i])}); offsets must "
                                  f"not decrease")
    if offsets[-1] > ids_len:
        raise InvalidArgument(f"{fn}: {name}.offsets[{offsets.size - 1}] ({int(offsets[-1])}) "
                              f"is larger than the number of ids ({ids_len})")
