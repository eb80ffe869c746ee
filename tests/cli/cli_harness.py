"""What every CLI test script shares: the negsamp program under test, checks that raise, running
negsamp with an expected exit status, JSONL reading (plain or gzip), and the group runner with
one temporary folder per group. The scripts (test_cli.py, test_beir.py) import it from their own
folder and hold only their groups and references."""
import gzip
import json
import os
import subprocess
import tempfile
import time
import traceback

NEGSAMP = None  # the program under test, set by run_groups from --negsamp


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def run(*args, expect=0, timeout=180, env=None):
    """Runs negsamp; checks the exit status; returns (stdout, stderr)."""
    p = subprocess.run([NEGSAMP, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if p.returncode != expect:
        raise Failure(f"negsamp {' '.join(map(str, args))}\n  exit {p.returncode}, expected "
                      f"{expect}\n  stdout: {p.stdout[-2000:]}\n  stderr: {p.stderr[-2000:]}")
    return p.stdout, p.stderr


def read_jsonl(path):
    """The JSON objects of a JSONL file (gzip when its name ends in .gz), blank lines skipped."""
    op = gzip.open if str(path).endswith(".gz") else open
    with op(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_groups(negsamp, groups, names, prefix, skip=None):
    """Runs the named groups (all when names is empty), each in a fresh temporary folder,
    printing PASS/FAIL/SKIP. skip(name) -> a reason or None. Exit status: 1 if any failed, 77
    (ctest's SKIP_RETURN_CODE) if every group was skipped, else 0."""
    global NEGSAMP
    NEGSAMP = negsamp
    failed = ran = 0
    for g in names or list(groups):
        why = skip(g) if skip else None
        if why:
            print(f"SKIP {g}: {why}")
            continue
        ran += 1
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-{g}-") as tmp:
            t0 = time.time()
            try:
                groups[g](tmp)
                print(f"PASS {g} ({time.time() - t0:.1f}s)")
            except Exception:
                failed += 1
                print(f"FAIL {g}")
                traceback.print_exc()
    if not ran:
        return 77
    return 1 if failed else 0
