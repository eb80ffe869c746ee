"""negsamp's exceptions: one class per ns_status, each carrying the library's message."""
from __future__ import annotations

from . import _ffi


class NegsampError(Exception):
    """A negsamp call failed. .status is the ns_status value, .message ns_last_error's text."""

    status = _ffi.NS_ERR_INTERNAL

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class InvalidArgument(NegsampError, ValueError):
    status = _ffi.NS_ERR_INVALID_ARGUMENT


class Unsupported(NegsampError, NotImplementedError):
    status = _ffi.NS_ERR_UNSUPPORTED


class OutOfMemory(NegsampError, MemoryError):
    status = _ffi.NS_ERR_OUT_OF_MEMORY


class NoDevice(NegsampError, RuntimeError):
    status = _ffi.NS_ERR_NO_DEVICE


class CudaError(NegsampError, RuntimeError):
    status = _ffi.NS_ERR_CUDA


class CommError(NegsampError, RuntimeError):
    status = _ffi.NS_ERR_COMM


class NonFinite(NegsampError, ValueError):
    status = _ffi.NS_ERR_NONFINITE


class NegsampIOError(NegsampError, OSError):
    status = _ffi.NS_ERR_IO

    def __init__(self, message: str, status: int | None = None):
        NegsampError.__init__(self, message, status)
        self.args = (message,)


class InternalError(NegsampError, RuntimeError):
    status = _ffi.NS_ERR_INTERNAL


_BY_STATUS = {c.status: c for c in (InvalidArgument, Unsupported, OutOfMemory, NoDevice,
                                     CudaError, CommError, NonFinite, NegsampIOError,
                                     InternalError)}


def error_for(status: int, message: str) -> NegsampError:
    cls = _BY_STATUS.get(status, NegsampError)
    if not message:
        message = f"negsamp call failed with status {status}"
    return cls(message, status)
