#!/usr/bin/env python3
"""The GPU kit's bookkeeping (standard library only; called by bench/gpu_run.sh).

    report.py env         --state S --root R --mode M     machine, toolkit, commit → S/env.json
    report.py step        --state S --name N --status X ...   one step's record → S/steps.jsonl
    report.py render      --state S --out DIR --stem STEM  S → DIR/STEM.json and DIR/STEM.md
    report.py fingerprint --root R                         sha256 over the sources that travel
    report.py check       --json FILE                      exit 1 unless FILE is a kit result

`render` runs after every step and replaces both files atomically, so a call killed at its time
limit still returns everything it finished. It parses the ctest log (S/ctest.log), each
sanitizer run's log and the benchmark rows (S/bench.jsonl, one JSON object a line).
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys

# What `fingerprint` hashes: the sources that build and test negsamp (the same set here and on
# the GPU machine, where there may be no .git). Results, build trees and the kit are left out.
FP_ITEMS = ["CMakeLists.txt", "cmake", "include", "src", "kernels", "tests", "tools", "bench",
            "python"]
FP_SKIP_DIRS = {"results", "__pycache__", "_lib", ".pytest_cache"}
FP_SKIP_SUFFIX = (".pyc", ".so", ".o", ".md")  # documentation edits do not change a result


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sh(cmd, timeout=20):
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def fingerprint(root):
    h = hashlib.sha256()
    files = []
    for item in FP_ITEMS:
        p = os.path.join(root, item)
        if os.path.isfile(p):
            files.append(item)
            continue
        for d, dirs, names in os.walk(p):
            dirs[:] = sorted(x for x in dirs if x not in FP_SKIP_DIRS and not x.startswith(".")
                             and not x.startswith("build") and not x.endswith(".egg-info"))
            for n in names:
                if n.endswith(FP_SKIP_SUFFIX):
                    continue
                files.append(os.path.relpath(os.path.join(d, n), root))
    for f in sorted(files):
        with open(os.path.join(root, f), "rb") as fh:
            h.update(f.encode() + b"\0" + hashlib.sha256(fh.read()).hexdigest().encode() + b"\n")
    return h.hexdigest(), len(files)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def os_name():
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def first_line(s, pat=None):
    if not s:
        return None
    for line in s.splitlines():
        if pat is None or re.search(pat, line):
            return line.strip()
    return None


def cmd_env(a):
    env = {"started": now(), "mode": a.mode}
    dev = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = sh([smi, "--query-gpu=name,driver_version,memory.total,compute_cap,pci.bus_id",
                "--format=csv,noheader"])
        if q is None:  # older drivers lack compute_cap
            q = sh([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
        if q:
            parts = [x.strip() for x in q.splitlines()[0].split(",")]
            keys = ["name", "driver", "memory_total", "compute_capability", "pci_bus_id"]
            dev.update(dict(zip(keys, parts)))
            dev["count"] = len(q.splitlines())
        head = sh([smi])
        m = re.search(r"CUDA Version:\s*([0-9.]+)", head or "")
        if m:
            dev["driver_cuda_version"] = m.group(1)
    else:
        dev["none"] = "nvidia-smi not found"
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc:
        dev["nvcc"] = first_line(sh([nvcc, "--version"]), r"release")
    san = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None)
    dev["compute_sanitizer"] = first_line(sh([san, "--version"]), r"[Vv]ersion") if san else None
    env["device"] = dev
    tools = {"cmake": first_line(sh(["cmake", "--version"])),
             "ninja": sh(["ninja", "--version"]),
             "cc": first_line(sh([os.environ.get("CC", "cc"), "--version"])),
             "python": platform.python_version()}
    try:
        import importlib.metadata as md
        for pkg in ("torch", "numpy", "pytest"):
            try:
                tools[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                tools[pkg] = None
    except ImportError:
        pass
    env["tools"] = tools
    try:
        mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    except OSError:
        mem = 0
    env["host"] = {"cpu": cpu_model(), "cores": os.cpu_count(), "mem_gib": round(mem / 2**20, 1),
                   "os": os_name(), "kernel": platform.release(),
                   "glibc": "-".join(platform.libc_ver())}
    # The commit: git where .git came along, else what bench/gpu/fetch.sh wrote before the call.
    fp, nfiles = fingerprint(a.root)
    commit = {"source_fingerprint": fp, "source_files": nfiles}
    head = sh(["git", "-C", a.root, "rev-parse", "HEAD"])
    if head:
        commit["commit"] = head
        commit["from"] = "git"
        dirty = sh(["git", "-C", a.root, "status", "--porcelain", "--untracked-files=no"])
        commit["dirty"] = bool(dirty)
    kit_commit = os.path.join(a.root, ".gpukit", "commit.json")
    if os.path.exists(kit_commit):
        try:
            k = json.load(open(kit_commit))
            commit["fetch_sh"] = k
            if "commit" not in commit:
                commit["commit"] = k.get("commit")
                commit["from"] = ".gpukit/commit.json (written by bench/gpu/fetch.sh)"
                commit["dirty"] = k.get("dirty")
            commit["matches_fetch_sh_tree"] = k.get("source_fingerprint") == fp
        except ValueError:
            pass
    env["commit"] = commit
    os.makedirs(a.state, exist_ok=True)
    json.dump(env, open(os.path.join(a.state, "env.json"), "w"), indent=1)


def cmd_step(a):
    rec = {"step": a.name, "status": a.status, "time": now()}
    for k in ("rc", "seconds", "limit", "detail", "log", "tool", "binary", "filter", "group"):
        v = getattr(a, k)
        if v is not None:
            rec[k] = v
    with open(os.path.join(a.state, "steps.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()


# ------------------------------------------------------------------ parsing


# "  12/152 Test  #59: B/Name/CUDA  # GetParam() = 2 .....***Skipped   0.09 sec"
CTEST_LINE = re.compile(r"Test\s+#(\d+):\s+(\S+)(.*?)\s\.+\s*(?:\*\*\*)?(.+?)\s+([0-9.]+) sec")


def parse_ctest(path):
    if not os.path.exists(path):
        return None
    res = {"passed": [], "failed": [], "skipped": [], "timeout": [], "other": []}
    seconds = {}
    for line in open(path, errors="replace"):
        m = CTEST_LINE.search(line)
        if not m:
            continue
        name, what, sec = m.group(2), m.group(4).strip(), float(m.group(5))
        seconds[name] = sec
        if what == "Passed":
            res["passed"].append(name)
        elif what == "Skipped":
            res["skipped"].append(name)
        elif what == "Timeout":
            res["timeout"].append(name)
        elif what == "Failed":
            res["failed"].append(name)
        else:
            res["other"].append(f"{name}: {what}")
    total = None
    for line in open(path, errors="replace"):
        # ctest 3: "100% tests passed, 0 tests failed out of 152"; ctest 4: "100% tests passed out of 152"
        m = re.search(r"tests passed(?:, \d+ tests? failed)? out of (\d+)", line)
        if m:
            total = int(m.group(1))
    out = {k: v for k, v in res.items()}
    out["counts"] = {k: len(v) for k, v in res.items()}
    out["finished"] = total is not None
    out["total"] = total
    out["slowest"] = sorted(seconds.items(), key=lambda kv: -kv[1])[:8]
    return out


def parse_sanitizer(path):
    """One compute-sanitizer run's log: error count, tests that passed before it ended."""
    r = {"errors": None, "ok_tests": [], "failed_tests": [], "skipped_tests": [], "unsupported": False,
         "first_errors": []}
    if not path or not os.path.exists(path):
        return r
    hazards = 0
    for line in open(path, errors="replace"):
        m = re.search(r"ERROR SUMMARY: (\d+) error", line)
        if m:
            r["errors"] = int(m.group(1))
        m = re.search(r"RACECHECK SUMMARY: (\d+) hazard", line)
        if m:
            hazards += int(m.group(1))
        # gtest's verdict lines name Suite.Test; its summary lines ("[  SKIPPED ] 10 tests, ...") do not
        for key, word in (("ok_tests", r"OK "), ("skipped_tests", r"SKIPPED "), ("failed_tests", r"FAILED\s*")):
            m = re.match(r"\[\s+" + word + r"\]\s+([\w/]+\.[\w/]+)", line)
            if m and m.group(1) not in r[key]:
                r[key].append(m.group(1))
        if "Device not supported" in line or "not supported on this platform" in line:
            r["unsupported"] = True
        if line.startswith("========= ") and len(r["first_errors"]) < 6 and re.search(
                r"Invalid|Race|hazard|Barrier|error|leak|Leaked|Uninitialized", line) and "ERROR SUMMARY" not in line:
            r["first_errors"].append(line.strip()[:240])
    if hazards:
        r["racecheck_hazards"] = hazards
    return r


def load_jsonl(path):
    rows = []
    if os.path.exists(path):
        for line in open(path, errors="replace"):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


def derive(rows):
    by = {}
    for r in rows:
        by.setdefault(r.get("bench"), r)  # the first row of a kind: the default shapes
    d = {}
    try:
        if "mine_topk" in by and "cublas_gemm_bf16" in by:
            d["mine_fraction_of_cublas_rate"] = by["mine_topk"]["effective_tflops"] / by["cublas_gemm_bf16"]["tflops"]
        if "mine_topk" in by and "torch_mine_topk" in by:
            d["mine_speedup_vs_torch"] = by["torch_mine_topk"]["ms"] / by["mine_topk"]["ms"]
        if "infonce_fwd_bwd" in by and "torch_infonce_fwd_bwd" in by:
            a, t = by["infonce_fwd_bwd"], by["torch_infonce_fwd_bwd"]
            d["loss_speedup_vs_torch"] = t["forward_backward_ms"] / a["forward_backward_ms"]
            d["loss_extra_memory_ratio_torch_over_negsamp"] = t["extra_bytes"] / max(1, a["extra_bytes"])
        if "infonce_fused" in by:  # the fused forward + backward (plain, default shapes)
            f = by["infonce_fused"]
            d["loss_fused_fraction_of_cublas_3gemm"] = f["fused_fraction_of_cublas"]
            d["loss_fused_speedup_vs_two_calls"] = f["two_calls_over_fused"]
            if "torch_infonce_fwd_bwd" in by:
                d["loss_fused_speedup_vs_torch"] = by["torch_infonce_fwd_bwd"]["forward_backward_ms"] / f["fused_ms"]
        if "sample_simans" in by and "copy_d2d" in by:
            bw = by["copy_d2d"]["read_plus_write_GBps"] / 2 * 1e9  # bytes per second, one direction
            s = by["sample_simans"]
            d["sample_floor_read_scores_ms"] = s["score_bytes"] / bw * 1e3
            d["sample_floor_read_inputs_ms"] = s["input_bytes"] / bw * 1e3
            d["sample_time_over_score_floor"] = s["ms"] / d["sample_floor_read_scores_ms"]
    except (KeyError, TypeError, ZeroDivisionError) as e:
        d["error"] = f"{type(e).__name__}: {e}"
    return d


# ------------------------------------------------------------------ rendering


def collect(state):
    env = {}
    if os.path.exists(os.path.join(state, "env.json")):
        env = json.load(open(os.path.join(state, "env.json")))
    steps = load_jsonl(os.path.join(state, "steps.jsonl"))
    for s in steps:
        if s.get("tool"):
            s["sanitizer"] = parse_sanitizer(s.get("log"))
    kit = []
    kp = os.path.join(state, "kit.txt")
    if os.path.exists(kp):
        kit = [l.rstrip("\n") for l in open(kp, errors="replace") if l.startswith("kit:")]
    doc = {"kit": "negsamp GPU kit (bench/gpu_run.sh)", "updated": now(), **env,
           "setup": kit, "steps": steps, "ctest": parse_ctest(os.path.join(state, "ctest.log")),
           "bench": load_jsonl(os.path.join(state, "bench.jsonl"))}
    doc["derived"] = derive(doc["bench"])
    doc["finished"] = any(s["step"] == "end" for s in steps)
    return doc


def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(doc):
    dev, host, com = doc.get("device", {}), doc.get("host", {}), doc.get("commit", {})
    L = [f"# negsamp GPU kit: `{doc.get('mode', '?')}` on {dev.get('name', 'no GPU')}", ""]
    L.append(f"- device: {dev.get('name', dev.get('none', '?'))}, driver {dev.get('driver', '?')}, "
             f"CUDA (driver) {dev.get('driver_cuda_version', '?')}, {dev.get('memory_total', '?')}, "
             f"compute capability {dev.get('compute_capability', '?')}; toolkit: {dev.get('nvcc', '?')}")
    L.append(f"- host: {host.get('cpu', '?')}, {host.get('cores', '?')} cores, {host.get('mem_gib', '?')} GiB, "
             f"{host.get('os', '?')}, kernel {host.get('kernel', '?')}, {host.get('glibc', '')}")
    dirty = " (uncommitted changes)" if com.get("dirty") else ""
    match = com.get("matches_fetch_sh_tree")
    L.append(f"- commit: `{com.get('commit', '?')}`{dirty} from {com.get('from', '?')}; source fingerprint "
             f"`{str(com.get('source_fingerprint', '?'))[:16]}`" +
             ("" if match is None else (", same tree as fetch.sh saw" if match else
                                        ", **differs from the tree fetch.sh saw**")))
    L.append(f"- started {doc.get('started', '?')}, updated {doc.get('updated')}, "
             + ("finished" if doc.get("finished") else "**not finished** (still running, or killed at its limit)"))
    t = doc.get("tools", {})
    L.append("- tools: " + ", ".join(f"{k} {v}" for k, v in t.items() if v))
    L.append("")
    if doc.get("setup"):
        L += ["## Setup (what came from the kit)", ""] + [f"- {l[4:].strip()}" for l in doc["setup"]] + [""]
    L += ["## Steps", "", "| step | status | seconds | limit | detail |", "| --- | --- | --- | --- | --- |"]
    for s in doc["steps"]:
        if s["step"] == "end":
            continue
        det = s.get("detail", "")
        if s.get("tool"):
            z = s["sanitizer"]
            det = (f"{s.get('binary')} --gtest_filter={s.get('filter')}: errors {z['errors']}, "
                   f"{len(z['ok_tests'])} tests ok" + (f", failed {z['failed_tests']}" if z["failed_tests"] else "")
                   + (f", {len(z['skipped_tests'])} skipped" if z["skipped_tests"] else "")
                   + (", device not supported" if z["unsupported"] else "")
                   + (f", hazards {z['racecheck_hazards']}" if z.get("racecheck_hazards") else ""))
        L.append(f"| {s['step']} | {s['status']} | {fmt(s.get('seconds', ''))} | {fmt(s.get('limit', ''))} | "
                 f"{str(det).replace('|', '/')[:300]} |")
    L.append("")
    c = doc.get("ctest")
    if c:
        n = c["counts"]
        L += ["## ctest", "",
              f"passed {n['passed']}, failed {n['failed']}, skipped {n['skipped']}, timeout {n['timeout']}, "
              f"other {n['other']}" + ("" if c["finished"] else " (ctest did not finish)"), ""]
        for k in ("failed", "timeout", "other"):
            if c[k]:
                L.append(f"- {k}: " + ", ".join(f"`{x}`" for x in c[k]))
        if c["skipped"]:
            L.append(f"- skipped: {len(c['skipped'])} (first: " + ", ".join(f"`{x}`" for x in c["skipped"][:6]) + ")")
        if c["slowest"]:
            L.append("- slowest: " + ", ".join(f"{k} {v:.1f} s" for k, v in c["slowest"]))
        L.append("")
    for s in doc["steps"]:
        if s.get("tool") and s["sanitizer"]["first_errors"]:
            L += [f"### {s['step']}: first reports", "", "```"] + s["sanitizer"]["first_errors"] + ["```", ""]
    if doc["bench"]:
        L += ["## Benchmarks", "", "| benchmark | shape | time (ms) | rate / memory |", "| --- | --- | --- | --- |"]
        for r in doc["bench"]:
            if "skipped" in r or "failed" in r:
                why = f"skipped: {r['skipped']}" if "skipped" in r else f"**failed**: {r['failed']}"
                L.append(f"| {r.get('bench')} | | | {why.replace('|', '/')} |")
                continue
            shape = " ".join(f"{k}={r[k]}" for k in ("Q", "B", "N", "C", "M", "K", "d", "k", "m", "bytes",
                                                      "corpus", "dtype", "chunk", "scores", "symmetric") if k in r)
            ms = r.get("forward_backward_ms", r.get("fused_ms", r.get("ms", "")))
            extra = [f"{k} {fmt(r[k])}" for k in ("tflops", "effective_tflops", "read_plus_write_GBps",
                                                   "forward_ms", "extra_bytes", "largest_BN_estimate",
                                                   "two_calls_ms", "cublas_3gemm_ms", "fused_fraction_of_cublas",
                                                   "fused_extra_bytes")
                     if k in r]
            L.append(f"| {r.get('bench')} | {shape} | {fmt(ms)} | {', '.join(extra)} |")
        L.append("")
    if doc["derived"]:
        L += ["| derived | value |", "| --- | --- |"] + [f"| {k} | {fmt(v)} |" for k, v in doc["derived"].items()] + [""]
    return "\n".join(L)


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cmd_render(a):
    doc = collect(a.state)
    os.makedirs(a.out, exist_ok=True)
    write_atomic(os.path.join(a.out, a.stem + ".json"), json.dumps(doc, indent=1) + "\n")
    write_atomic(os.path.join(a.out, a.stem + ".md"), markdown(doc) + "\n")
    if a.print:
        print(markdown(doc))


def cmd_fingerprint(a):
    fp, n = fingerprint(a.root)
    print(fp if not a.verbose else f"{fp} {n}")


def cmd_check(a):
    doc = json.load(open(a.json))
    need = ("device", "host", "commit", "steps", "updated")
    missing = [k for k in need if k not in doc]
    if missing:
        sys.exit(f"{a.json}: missing {missing}")
    print(f"{a.json}: {len(doc['steps'])} steps, {len(doc.get('bench', []))} benchmark rows, "
          f"finished={doc.get('finished')}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env")
    p.add_argument("--state", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--mode", required=True)
    p = sub.add_parser("step")
    p.add_argument("--state", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--rc", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--limit", type=float)
    for k in ("detail", "log", "tool", "binary", "filter", "group"):
        p.add_argument("--" + k)
    p = sub.add_parser("render")
    p.add_argument("--state", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--stem", required=True)
    p.add_argument("--print", action="store_true")
    p = sub.add_parser("fingerprint")
    p.add_argument("--root", required=True)
    p.add_argument("--verbose", action="store_true")
    p = sub.add_parser("check")
    p.add_argument("--json", required=True)
    a = ap.parse_args()
    {"env": cmd_env, "step": cmd_step, "render": cmd_render, "fingerprint": cmd_fingerprint,
     "check": cmd_check}[a.cmd](a)


if __name__ == "__main__":
    main()
