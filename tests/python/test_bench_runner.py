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


def test_loss_row_takes_ratios_per_round():
    """torch ÷ impl is taken within each round (the same load) and then the median; a round
    where either failed is left out; losses are compared with the fused call's."""
    runs = {"fused": [{"seconds": 1.0, "extra_mib": 10, "loss": 2.0},
                      {"seconds": 2.0, "extra_mib": 12, "loss": 2.0},
                      {"error": "x"}],
            "torch": [{"seconds": 3.0, "extra_mib": 50, "loss": 2.0002},
                      {"seconds": 2.0, "extra_mib": 52, "loss": 2.0},
                      {"seconds": 9.0, "extra_mib": 51, "loss": 2.0}]}
    row = run.loss_row(4096, 384, runs, ["fused", "torch"])
    assert row["fused"]["median_s"] == 1.5 and row["fused"]["ok"] == 2
    assert row["fused"]["torch_over"] == 2.0          # rounds: 3/1 and 2/2
    assert row["torch"]["median_s"] == 3.0 and row["torch"]["extra_mib"] == 51
    assert abs(row["max_rel_loss_diff"] - 1e-4) < 1e-9
    md = run.loss_report({"machine": {"cpu": "X", "cores": 2, "threads": 2, "gemm": "G",
                                      "torch": "t", "numpy": "n"},
                          "impls": {"fused": "f", "torch": "t"}, "tau": 0.05, "target": 1.2,
                          "rounds": 3, "load_start": "1", "load_end": "2", "command": "c",
                          "git": "g", "date": "d", "rows": [row]})
    assert "**2.00×**" in md and "| 4,096 | 384 | 1.50 | 3.00 |" in md


def test_readme_regenerate_loss_and_kmeans_blocks(tmp_path):
    """--readme fills each marked block from its suite's newest results file (never a quick
    run, never another suite's file)."""
    res = tmp_path / "results"
    res.mkdir()
    for name, date, text in (("m-2026-01-01-loss", "2026-01-01", "old loss"),
                             ("m-2026-01-02-loss", "2026-01-02", "new loss"),
                             ("m-2026-01-03-loss-quick", "2026-01-03", "quick loss"),
                             ("m-2026-01-03-loss-sampling", "2026-01-03", "other suite"),
                             ("m-2026-01-01-kmeans-faiss", "2026-01-01", "kmeans table")):
        (res / (name + ".json")).write_text(json.dumps({"date": date}))
        (res / (name + ".md")).write_text(f"# title\n\n{text}\n")
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- loss-results:begin -->\nstale\n<!-- loss-results:end -->\nb\n"
                      "<!-- kmeans-results:begin -->\n<!-- kmeans-results:end -->\n")
    did = run.readme_regenerate(str(readme), str(res))
    text = readme.read_text()
    assert "new loss" in text and "kmeans table" in text, text
    for absent in ("stale", "old loss", "quick loss", "other suite"):
        assert absent not in text
    assert len(did) == 2
