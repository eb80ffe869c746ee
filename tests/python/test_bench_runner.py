"""bench/run.py's own logic that needs no timing: how it treats a build directory, and the
README blocks it regenerates from results files."""
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "run.py"
_spec = importlib.util.spec_from_file_location("bench_run", _PATH)
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


class _Done:
    returncode, stdout, stderr = 0, "", ""


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake(cmd, *a, **k):
        seen.append(list(cmd))
        return _Done()
    monkeypatch.setattr(subprocess, "run", fake)
    return seen


def test_ensure_build_never_reconfigures_a_configured_dir(tmp_path, calls):
    """A configured directory (someone's test build: NS_TESTS=ON, the library not built yet)
    is only built, never configured again: a configure with NS_TESTS=OFF used to switch its
    tests off."""
    (tmp_path / "CMakeCache.txt").write_text("NS_TESTS:BOOL=ON\nCMAKE_BUILD_TYPE:STRING=Release\n")
    run.ensure_build(str(tmp_path))
    assert calls, "nothing built"
    for c in calls:
        assert "-S" not in c and not any("NS_TESTS" in x for x in c), c
        assert c[:3] == ["cmake", "--build", str(tmp_path)], c


def test_ensure_build_configures_a_new_dir(tmp_path, calls):
    d = tmp_path / "fresh"
    run.ensure_build(str(d))
    assert calls[0][:5] == ["cmake", "-S", run.ROOT, "-B", str(d)]
    assert "-DNS_TESTS=OFF" in calls[0]
    assert all(c[:2] == ["cmake", "--build"] for c in calls[1:])
