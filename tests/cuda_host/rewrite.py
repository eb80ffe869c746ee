#!/usr/bin/env python3
"""Rewrites one CUDA source (.cu) into C++ for the negsamp host execution layer.

  kernel<<<grid, block[, shm[, stream]]>>>(args)
      -> ::cuda_host::launch(kernel, "kernel", LB, grid, block, shm, stream, __FILE__, __LINE__, args)
         (LB: the kernel's __launch_bounds__ when it is defined in the same file, else 0)
  __shared__ T a[n], b;           (inside a function)
      -> static T a[n]; ::cuda_host::shared_static(&a, sizeof a, "a"); static T b; ...
         (function statics are per process, blocks run one after another, so a static is the
         block's shared memory; shared_static poisons it once per block, at the first thread
         that reaches the declaration)
  extern __shared__ T s[];
      -> T *const s = (T *)::cuda_host::dynamic_shared();

Line numbers are kept (a #line directive names the original file), so compiler messages and
__FILE__/__LINE__ point into the .cu file. Comments and string literals are left alone.

Usage: rewrite.py input.cu output.cpp
"""
import re
import os
import sys


def code_mask(src):
    """True for every character that is code (not inside a comment, string or char literal)."""
    mask = [True] * len(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                mask[k] = False
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                mask[k] = False
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            for k in range(i, min(j + 1, n)):
                mask[k] = False
            i = j + 1
        else:
            i += 1
    return mask


def match_close(src, i, open_c, close_c):
    """Index of the bracket closing the one at src[i]."""
    depth = 0
    for j in range(i, len(src)):
        if src[j] == open_c:
            depth += 1
        elif src[j] == close_c:
            depth -= 1
            if depth == 0:
                return j
    raise SystemExit("rewrite.py: unbalanced %s at offset %d" % (open_c, i))


def split_top(s):
    """Splits on commas outside (), [], {} and <> of templates (approximately: <> only after a name)."""
    parts, depth, cur = [], 0, []
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def launch_bounds(src):
    bounds = {}
    for m in re.finditer(r"__global__\s+void\s+__launch_bounds__\s*\(", src):
        close = match_close(src, m.end() - 1, "(", ")")
        args = split_top(src[m.end():close])
        name = re.match(r"\s*(\w+)", src[close + 1:])
        if name:
            bounds[name.group(1)] = args[0].strip()
    return bounds


def rewrite_launches(src, bounds):
    mask = code_mask(src)
    out, pos = [], 0
    for m in re.finditer(r"([A-Za-z_][\w:]*(?:\s*<[^<>;]*>)?)\s*<<<", src):
        if not mask[m.start()] or m.start() < pos:
            continue
        cfg_start = m.end()
        cfg_end = src.find(">>>", cfg_start)
        cfg = split_top(src[cfg_start:cfg_end])
        j = cfg_end + 3
        while src[j].isspace():
            j += 1
        if src[j] != "(":
            raise SystemExit("rewrite.py: launch of %s without arguments" % m.group(1))
        close = match_close(src, j, "(", ")")
        args = src[j + 1:close]
        kernel = m.group(1)
        base = re.sub(r"\s*<.*", "", kernel).split("::")[-1]
        cfg = [c for c in cfg]
        while len(cfg) < 4:
            cfg.append(" 0" if len(cfg) == 2 else " (cudaStream_t)0")
        lb = bounds.get(base, "0")
        # Keep every newline of the original text so that line numbers stay right.
        call = "::cuda_host::launch(%s, \"%s\", (int)(%s), %s, %s, (size_t)(%s), %s, __FILE__, __LINE__%s%s)" % (
            kernel, base, lb, cfg[0].strip(), cfg[1].strip(), cfg[2].strip(), cfg[3].strip(),
            ", " if args.strip() else "", args)
        lost = src[m.start():close + 1].count("\n") - call.count("\n")
        out.append(src[pos:m.start()])
        out.append(call + "\n" * max(0, lost))
        pos = close + 1
    out.append(src[pos:])
    return "".join(out)


def rewrite_shared(src):
    mask = code_mask(src)
    out, pos = [], 0
    for m in re.finditer(r"(extern\s+)?__shared__\b", src):
        if not mask[m.start()] or m.start() < pos:
            continue
        end = src.find(";", m.end())
        decl = src[m.end():end]
        nl = decl.count("\n")
        if m.group(1):
            dm = re.match(r"\s*(.*?)\s*(\w+)\s*\[\s*\]\s*$", decl, re.S)
            if not dm:
                raise SystemExit("rewrite.py: cannot read extern __shared__ declaration: %r" % decl)
            ty = dm.group(1).replace("__align__", "alignas")
            ty = re.sub(r"alignas\s*\([^)]*\)", "", ty).strip()
            text = "%s *const %s = (%s *)::cuda_host::dynamic_shared();" % (ty, dm.group(2), ty)
        else:
            parts = split_top(decl)
            first = re.match(r"\s*(.*?)\s*(\w+\s*(?:\[[^\]]*\]\s*)*)$", parts[0], re.S)
            if not first:
                raise SystemExit("rewrite.py: cannot read __shared__ declaration: %r" % decl)
            ty = first.group(1)
            declarators = [first.group(2)] + [p.strip() for p in parts[1:]]
            stmts = []
            for d in declarators:
                name = re.match(r"(\w+)", d.strip()).group(1)
                stmts.append("static %s %s; ::cuda_host::shared_static((void *)&%s, sizeof %s, \"%s\");" % (
                    ty, " ".join(d.split()), name, name, name))
            text = " ".join(stmts)
        out.append(src[pos:m.start()])
        out.append(text + "\n" * nl)
        pos = end + 1
    out.append(src[pos:])
    return "".join(out)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    path, dst = sys.argv[1], sys.argv[2]
    src = open(path, encoding="utf-8").read()
    text = rewrite_launches(src, launch_bounds(src))
    text = rewrite_shared(text)
    header = "// Generated by tests/cuda_host/rewrite.py from %s: do not edit.\n#line 1 \"%s\"\n" % (path, path)
    # The generated folder may not exist yet in a fresh build tree (parallel make).
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    open(dst, "w", encoding="utf-8").write(header + text)


if __name__ == "__main__":
    main()
