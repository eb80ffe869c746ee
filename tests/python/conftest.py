"""Makes the package importable from the source tree and gives the tests a shared RNG."""
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
# The source tree's package, unless an installed one (with its own library) is what runs:
# with NEGSAMP_LIBRARY set (ctest does) the source tree is always tested.
try:
    if os.environ.get("NEGSAMP_LIBRARY"):
        raise ImportError
    import negsamp as _installed  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))
    sys.modules.pop("negsamp", None)

import negsamp  # noqa: E402


def pytest_report_header(config):
    try:
        return f"negsamp library: {negsamp.library_path()} (version {negsamp.version()})"
    except Exception as e:  # reported by the tests themselves
        return f"negsamp library: not loaded ({e})"


@pytest.fixture
def rng(request):
    # A fresh, fixed stream per test: reproducible, independent of test order.
    seed = zlib.crc32(request.node.nodeid.encode())  # str hash() is salted per process
    return np.random.default_rng(seed)


def require(*names):
    """Skips the test when the loaded library does not export the C functions yet."""
    from negsamp import _ffi
    missing = [n for n in names if not _ffi.has(n)]
    if missing:
        pytest.skip(f"libnegsamp lacks {', '.join(missing)} (op not built yet)")
