#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): small valid files
of every form the readers accept, and the hostile cases the CLI tests try. Rerun after changing
a reader; libFuzzer grows the corpora from these in tests/fuzz/run.sh (its finds stay in the
build folder; only crashes are kept, in crashes/<target>/)."""
import io
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def npy(a, version=(1, 0)):
    b = io.BytesIO()
    np.lib.format.write_array(b, np.ascontiguousarray(a), version=version)
    return b.getvalue()


def npy_header(descr, shape, data=b"", fortran=False, major=1):
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape)
    pre = 10 if major == 1 else 12
    d += " " * ((64 - (pre + len(d) + 1) % 64) % 64) + "\n"
    size = len(d).to_bytes(2 if major == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([major, 0]) + size + d.encode() + data


def main():
    rng = np.random.default_rng(0)
    put("npy", "f4_2d_v1", npy(rng.standard_normal((3, 4)).astype("<f4")))
    put("npy", "f2_2d_v2", npy(rng.standard_normal((2, 5)).astype("<f2"), (2, 0)))
    put("npy", "f4_1d_v3", npy(rng.standard_normal(7).astype("<f4"), (3, 0)))
    put("npy", "i8_2d", npy(rng.integers(-1, 9, (4, 3)).astype("<i8")))
    put("npy", "i4_1d", npy(rng.integers(0, 9, 5).astype("<i4")))
    put("npy", "empty_rows", npy(np.zeros((0, 4), "<f4")))
    put("npy", "double_quotes", npy_header("<f4", "( 2 ,3 )").replace(b"'", b'"') + bytes(24))
    put("npy", "rows_2e62", npy_header("<f4", "(4611686018427387904, 1)", b"x"))
    put("npy", "cols_2e62", npy_header("<f4", "(2, 4611686018427387904)", b"x"))
    put("npy", "zero_cols_huge_rows", npy_header("<f4", "(4611686018427387904, 0)"))
    put("npy", "fortran", npy_header("<f4", "(2, 2)", bytes(16), fortran=True))
    put("npy", "f8", npy_header("<f8", "(2, 2)", bytes(32)))
    put("npy", "3d", npy_header("<f4", "(1, 2, 2)", bytes(16)))
    put("fvecs", "two_rows", b"".join(struct.pack("<i3f", 3, *rng.standard_normal(3)) for _ in range(2)))
    put("fvecs", "one_dim", struct.pack("<if", 1, 0.5))
    put("fvecs", "ragged", struct.pack("<i2f", 2, 1, 2) + struct.pack("<i1f", 1, 3))
    put("fvecs", "huge_dim", struct.pack("<i", 1 << 30) + bytes(8))
    # qrels: first byte = mode (bit 0 query id file, 1 corpus id file, 2 skip unknown, 3 positives).
    put("qrels", "beir_ids", b"\x03query-id\tcorpus-id\tscore\nq0\td1\t1\nq1\td2\t2\nq3\td4\t0\n")
    put("qrels", "rows", b"\x00" + b"0\t1\t1\n2\t3\t1\n7\t15\t1\n")
    put("qrels", "trec", b"\x00" + b"0 0 5 1\n1 0 6 2\n")
    put("qrels", "crlf_bom_spaces", b"\x03\xef\xbb\xbfq0 \td1 \t1\r\nq2\td3\t1\r\n")
    put("qrels", "unknown_skip", b"\x07q0\td1\t1\nqX\td2\t1\nq1\tdY\t1\n")
    put("qrels", "positives", b"\x08" + b"1 2\n3,4\n\n5\n6 7 8\n9\n10\n11\n")
    put("qrels", "positives_ids", b"\x0ad1 d2\nd3\n")
    # ids: first byte = rows expected (0 mod 9: count them).
    put("ids", "plain", b"\x00" + b"\n".join(b"doc-%d" % i for i in range(5)) + b"\n")
    put("ids", "bom_crlf", b"\x03\xef\xbb\xbfa \r\nb\t\r\nc\r\n")
    put("ids", "json_escapes", b"\x00" + 'd"1\\x\n\t\x01ctl\n\xe9t\xe9\n'.encode() + b"\xff\xfe\n")
    put("ids", "duplicate", b"\x00a\nb\na\n")
    put("ids", "blank_inside", b"\x00a\n\nb\n")
    jsonl_corpus()


def jsonl_corpus():
    """BEIR / HF JSONL lines: valid ones of every form, and the malformed ones the CLI tests."""
    put("jsonl", "beir_corpus", b'{"_id": "d0", "title": "T", "text": "a b"}\n'
        b'{"_id": "d1", "title": "", "text": "caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ \\/ \\b\\f\\n\\r\\t", '
        b'"metadata": {"url": [1, 2.5e-3, -0, true, false, null, {"x": []}]}}\n')
    put("jsonl", "queries_crlf_bom", b'\xef\xbb\xbf{"_id":"q1","text":"what?"}\r\n\r\n'
        b'{"id": 7, "text": "\xc3\xa9\xf0\x9f\x98\x80"}\n')
    put("jsonl", "lone_surrogate", b'{"_id": "a", "text": "\\ud800"}\n')
    put("jsonl", "low_surrogate", b'{"_id": "a", "text": "\\udc00x"}\n')
    put("jsonl", "nul_escape", b'{"_id": "a", "text": "\\u0000"}\n')
    put("jsonl", "bad_utf8", b'{"_id": "a", "text": "\xc0\xaf \xed\xa0\x80"}\n')
    put("jsonl", "control", b'{"_id": "a", "text": "x\ty"}\n')
    put("jsonl", "duplicate_key", b'{"_id": "a", "_id": "b", "text": ""}\n')
    put("jsonl", "duplicate_id", b'{"_id": "a", "text": ""}\n{"_id": "a", "text": ""}\n')
    put("jsonl", "trailing", b'{"_id": "a", "text": ""} x\n')
    put("jsonl", "unclosed", b'{"_id": "a", "text": "abc\n')
    put("jsonl", "deep", b'{"_id": "a", "text": "", "m": ' + b"[" * 80 + b"]" * 80 + b"}\n")
    put("jsonl", "numbers", b'{"_id": -1.5e+3, "text": "", "n": [0, -0.0, 1E9, 01]}\n')
    put("jsonl", "text_not_string", b'{"_id": "a", "text": 5, "title": null}\n')
    put("jsonl", "empty_id", b'{"_id": "", "text": "x"}\n')
    put("jsonl", "array_line", b'["_id", "text"]\n')


if __name__ == "__main__":
    main()
