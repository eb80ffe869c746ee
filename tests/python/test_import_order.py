"""libnegsamp loaded before `import torch`: the process must end with one NCCL that both use.
The library links the toolkit's libnccl.so.2; torch needs its wheel's newer one. Loaded in the
wrong order, `import torch` failed with "undefined symbol: ncclCommResume" (negsamp._ffi now
loads the wheel's NCCL first). Runs in a fresh interpreter: this one has torch imported."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import negsamp

ROOT = Path(__file__).resolve().parents[2]


def _links_nccl(path):
    try:
        out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "libnccl" in out


def test_torch_imports_after_the_library_is_loaded():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    lib = negsamp.library_path()
    if not _links_nccl(lib):
        pytest.skip(f"{lib} does not link NCCL (built without it): nothing to share")
    code = ("import negsamp, negsamp._ffi as f; f.library(); import torch; "
            "print(torch.ones(2).sum().item())")
    env = dict(os.environ, NEGSAMP_LIBRARY=lib,
               PYTHONPATH=os.pathsep.join([str(ROOT / "python"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "2.0", (
        f"import torch after libnegsamp failed (rc {r.returncode}):\n{r.stderr[-2000:]}")
