"""Loading, contexts, versions, errors and threads."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import negsamp
from negsamp import _ffi
from conftest import require

ROOT = Path(__file__).resolve().parents[2]


def test_version_and_cuda_info():
    assert negsamp.version() >= 100
    info = negsamp.cuda_info()
    assert info["built"] in (True, False)
    assert info["device_count"] >= 0
    if not info["built"]:
        assert info["device_count"] == 0
    assert negsamp.status_string(1).startswith("NS_ERR_INVALID_ARGUMENT")


def test_cpu_context_and_closed_context():
    ctx = negsamp.Context("cpu", threads=1)
    assert ctx.backend == "cpu" and ctx.last_error == ""
    ctx.set_stream(None)  # ignored on CPU
    ctx.close()
    ctx.close()
    with pytest.raises(negsamp.InvalidArgument, match="closed"):
        ctx.backend
    with negsamp.Context("auto") as c:
        assert c.backend == ("cuda" if negsamp.cuda_device_count() else "cpu")


def test_cuda_context_without_device_fails_clearly():
    if negsamp.cuda_device_count() > 0:
        pytest.skip("a GPU is present; this checks the no-GPU path")
    expected = negsamp.NoDevice if negsamp.cuda_built() else negsamp.Unsupported
    with pytest.raises(expected) as e:
        negsamp.Context("cuda")
    assert "ns_context_create" in str(e.value)
    assert e.value.status == expected.status


def test_bad_context_arguments():
    with pytest.raises(negsamp.InvalidArgument, match=r"threads \(-2\)"):
        negsamp.Context("cpu", threads=-2)
    with pytest.raises(negsamp.InvalidArgument, match="backend"):
        negsamp.Context("tpu")


def test_errors_are_classes_per_status():
    from negsamp._errors import error_for
    for status, cls in [(1, negsamp.InvalidArgument), (2, negsamp.Unsupported),
                        (3, negsamp.OutOfMemory), (4, negsamp.NoDevice), (5, negsamp.CudaError),
                        (6, negsamp.CommError), (7, negsamp.NonFinite), (8, negsamp.IOError),
                        (9, negsamp.InternalError)]:
        e = error_for(status, "ns_x: y (3) is bad")
        assert type(e) is cls and e.status == status and str(e) == "ns_x: y (3) is bad"
        assert isinstance(e, negsamp.NegsampError)
    assert negsamp.IOError is negsamp.NegsampIOError


def test_each_thread_has_its_own_default_context(rng):
    require("ns_similarity")
    q = rng.standard_normal((16, 8)).astype(np.float32)
    p = rng.standard_normal((32, 8)).astype(np.float32)
    want = negsamp.similarity(q, p)
    out, ctxs = [None] * 4, [None] * 4

    def work(t):
        ctxs[t] = negsamp.default_context()
        for _ in range(20):
            out[t] = negsamp.similarity(q, p)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in ctxs}) == 4
    for o in out:
        np.testing.assert_array_equal(o, want)


def _python(code, **env):
    e = dict(os.environ)
    e.update(env)
    e["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True)


def test_library_not_found_message(tmp_path):
    r = _python("import negsamp\ntry:\n    negsamp.version()\nexcept negsamp.LibraryNotFound as e:"
                "\n    print('MSG', e)", NEGSAMP_LIBRARY=str(tmp_path / "nope.so"))
    assert r.returncode == 0, r.stderr
    assert "MSG" in r.stdout and "NEGSAMP_LIBRARY" in r.stdout and "nope.so" in r.stdout


def test_library_not_found_says_where_it_looked():
    # Nothing set and nothing installed: the message lists the places it looked (it said
    # "Tried: nothing found").
    import ctypes.util
    if (_ffi._PACKAGE_LIB_DIR.exists() or ctypes.util.find_library("negsamp")
            or str(ROOT / "python") not in str(_ffi._PACKAGE_LIB_DIR)):
        pytest.skip("a libnegsamp is installed where the binding looks")
    env = {k: v for k, v in os.environ.items() if k != "NEGSAMP_LIBRARY"}
    env["PYTHONPATH"] = str(ROOT / "python")
    code = ("import negsamp\ntry:\n    negsamp.version()\nexcept negsamp.LibraryNotFound as e:"
            "\n    print('MSG', e)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "NEGSAMP_LIBRARY (not set)" in r.stdout, r.stdout
    assert str(_ffi._PACKAGE_LIB_DIR) in r.stdout and "find_library" in r.stdout, r.stdout


def test_missing_symbol_is_unsupported(monkeypatch):
    monkeypatch.setitem(_ffi._SIGNATURES, "ns_not_there", (None, []))
    from negsamp._core import _c
    with pytest.raises(negsamp.Unsupported, match="ns_not_there"):
        _c("ns_not_there")
