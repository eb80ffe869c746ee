"""Parquet in and out of the ``negsamp`` program: ``python -m negsamp.parquet [--negsamp PROG]
mine ARGS...`` runs ``negsamp mine ARGS...`` with

- ``--queries`` / ``--corpus`` given as HF-style Parquet (columns ``_id`` or ``id``, ``text``,
  optional ``title``: what the BEIR datasets on the Hugging Face hub ship) converted to the
  JSONL the program reads, row i = line i (so ``--queries-emb`` / ``--corpus-emb`` row i is
  still row i), and ``--qrels`` as Parquet (``query-id``, ``corpus-id``, ``score``) converted
  to the qrels TSV;
- ``--out FILE.parquet``: the program writes JSONL in ``--format`` (st, tevatron, flag or ids),
  which becomes one Parquet table (a column per JSON key, nested lists and structs kept:
  ``datasets.load_dataset("parquet", ...)`` reads it as the JSONL would be read), written to a
  temporary name and renamed, so a failed run leaves no partial file; the provenance sidecar
  becomes ``FILE.parquet.provenance.json`` with the Parquet inputs' sizes and XXH64
  fingerprints (``negsamp fingerprint``, the program's own hash) added (the program hashed the
  JSONL it was given).

Why a wrapper and not the C program: Parquet needs Arrow, which pyarrow already is; a C reader
would mean a large dependency for one format. The mining itself is the program's (the same
library and the same outputs); everything else is passed through unchanged. pyarrow is needed
only here (it comes with ``datasets``). The program is ``--negsamp PROG``, else
``$NEGSAMP_PROGRAM``, else ``negsamp`` on the PATH.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

__all__ = ["texts_parquet_to_jsonl", "qrels_parquet_to_tsv", "jsonl_to_parquet", "main"]


class ParquetError(Exception):
    """A Parquet input or output that cannot be converted (the message names the file)."""


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
        return pyarrow
    except ImportError as e:
        raise ParquetError("Parquet needs pyarrow (pip install pyarrow; it comes with "
                           "datasets)") from e


def _read_table(path):
    pa = _pyarrow()
    try:
        return pa.parquet.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ParquetError(f"{path}: not a readable Parquet file: {e}") from e


def texts_parquet_to_jsonl(src, dst, what="corpus"):
    """HF-style texts (``_id``/``id``, ``text``, optional ``title``) to BEIR JSONL, row order
    kept. Returns the number of rows."""
    table = _read_table(src)
    cols = table.column_names
    id_col = "_id" if "_id" in cols else "id" if "id" in cols else None
    if id_col is None or "text" not in cols:
        raise ParquetError(f"{src}: {what} Parquet needs an \"_id\" (or \"id\") and a \"text\" "
                           f"column; it has {cols}")
    ids = table.column(id_col).to_pylist()
    texts = table.column("text").to_pylist()
    titles = table.column("title").to_pylist() if "title" in cols else [None] * len(ids)
    with open(dst, "w", encoding="utf-8") as f:
        for r, (i, t, ti) in enumerate(zip(ids, texts, titles)):
            if i is None or t is None:
                raise ParquetError(f"{src}: row {r}: {what} {'id' if i is None else 'text'} "
                                   f"is null")
            if not isinstance(t, str) or (ti is not None and not isinstance(ti, str)):
                raise ParquetError(f"{src}: row {r}: the text and title must be strings")
            row = {"_id": str(i), "title": ti or "", "text": t}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(ids)


def qrels_parquet_to_tsv(src, dst):
    """BEIR qrels (``query-id``, ``corpus-id``, ``score``) to the qrels TSV."""
    table = _read_table(src)
    need = ["query-id", "corpus-id", "score"]
    if any(c not in table.column_names for c in need):
        raise ParquetError(f"{src}: qrels Parquet needs columns {need}; it has "
                           f"{table.column_names}")
    cols = [table.column(c).to_pylist() for c in need]
    with open(dst, "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, c, s in zip(*cols):
            f.write(f"{q}\t{c}\t{s}\n")
    return len(cols[0])


def jsonl_to_parquet(src, dst):
    """A JSONL file (one object per line, the same keys on every line) to one Parquet table,
    written to a temporary name beside dst and renamed. Returns the number of rows."""
    pa = _pyarrow()
    with open(src, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    keys = list(rows[0]) if rows else []
    for r, row in enumerate(rows):
        if list(row) != keys:
            raise ParquetError(f"{src}: line {r + 1} has keys {list(row)}, the first {keys}: "
                               f"not one table")
    try:
        table = pa.Table.from_pylist(rows) if rows else pa.table({})
    except pa.ArrowException as e:
        raise ParquetError(f"{src}: rows that do not form one Arrow table: {e}") from e
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dst) + ".negsamp-tmp-",
                               dir=os.path.dirname(os.path.abspath(dst)))
    os.close(fd)
    try:
        pa.parquet.write_table(table, tmp)
        os.replace(tmp, dst)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(rows)


def _fingerprint(prog, path):
    """(size, XXH64 hex) of a file, by the program: the fingerprint its own sidecar records,
    at its speed (a Python loop over the bytes would take minutes on a large table)."""
    p = subprocess.run([prog, "fingerprint", path], capture_output=True, text=True)
    if p.returncode != 0:
        raise ParquetError(f"{path}: no fingerprint: {p.stderr.strip()}")
    return os.path.getsize(path), p.stdout.split()[0]


def _program(argv):
    if len(argv) >= 2 and argv[0] == "--negsamp":
        return argv[1], argv[2:]
    prog = os.environ.get("NEGSAMP_PROGRAM") or shutil.which("negsamp")
    if not prog:
        raise ParquetError("the negsamp program was not found: pass --negsamp PATH or set "
                           "NEGSAMP_PROGRAM")
    return prog, argv


def _flag_value(args, i):
    """(flag, value, the index after) for '--flag value' or '--flag=value' at args[i]."""
    a = args[i]
    if a.startswith("--") and "=" in a:
        flag, value = a.split("=", 1)
        return flag, value, i + 1
    if i + 1 < len(args):
        return a, args[i + 1], i + 2
    return a, None, i + 1


def _rewrite(args, tmp):
    """The program's arguments with Parquet paths replaced by converted files: (args, the
    Parquet inputs [(flag, path, converted)], the Parquet output or None, the JSONL it comes
    from)."""
    out, inputs, parquet_out, jsonl_out = [], [], None, None
    i = 0
    while i < len(args):
        flag, value, nxt = _flag_value(args, i)
        is_parquet = isinstance(value, str) and value.endswith(".parquet")
        if flag in ("--queries", "--corpus", "--qrels") and is_parquet:
            what = flag[2:]
            conv = os.path.join(tmp, f"{what}.tsv" if what == "qrels" else f"{what}.jsonl")
            if what == "qrels":
                qrels_parquet_to_tsv(value, conv)
            else:
                texts_parquet_to_jsonl(value, conv, "query" if what == "queries" else "corpus")
            inputs.append((flag, value, conv))
            out += [flag, conv]
            i = nxt
        elif flag == "--out" and is_parquet:
            parquet_out = value
            jsonl_out = os.path.join(tmp, "out.jsonl")
            out += [flag, jsonl_out]
            i = nxt
        else:
            out.append(args[i])
            i += 1
    return out, inputs, parquet_out, jsonl_out


def _provenance(prog, jsonl_out, parquet_out, inputs, argv):
    side = jsonl_out + ".provenance.json"
    if not os.path.exists(side):
        return
    with open(side, encoding="utf-8") as f:
        prov = json.load(f)
    prov["parquet"] = {"wrapper_argv": ["python", "-m", "negsamp.parquet", *argv],
                       "output": parquet_out, "inputs": []}
    for flag, path, conv in inputs:
        size, h = _fingerprint(prog, path)
        prov["parquet"]["inputs"].append({"flag": flag, "path": path, "bytes": size,
                                          "xxh64": h, "converted_to": os.path.basename(conv)})
    dst = parquet_out + ".provenance.json"
    tmp = dst + ".negsamp-tmp-prov"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(prov, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, dst)


def run(argv):
    """``[--negsamp PROG] mine ARGS...``: the exit status of the program (2: usage, 1: an
    input or output that could not be converted)."""
    prog, args = _program(list(argv))
    force = "--force" in args
    with tempfile.TemporaryDirectory(prefix="negsamp-parquet-") as tmp:
        args2, inputs, parquet_out, jsonl_out = _rewrite(args, tmp)
        if parquet_out:
            if os.path.exists(parquet_out) and not force:
                raise ParquetError(f"--out {parquet_out}: exists (pass --force to replace it)")
            for _, path, _ in inputs:
                if os.path.exists(parquet_out) and os.path.samefile(path, parquet_out):
                    raise ParquetError(f"--out {parquet_out}: is an input")
        code = subprocess.call([prog, *args2])
        if code == 0 and parquet_out:
            rows = jsonl_to_parquet(jsonl_out, parquet_out)
            _provenance(prog, jsonl_out, parquet_out, inputs, argv)
            if "--quiet" not in args:  # the program's last line named the temporary JSONL
                print(f"negsamp.parquet: wrote {rows} rows to {parquet_out}", file=sys.stderr)
        return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        return run(argv)
    except ParquetError as e:
        print(f"negsamp.parquet: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
