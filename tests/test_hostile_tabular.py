"""Hostile CSV/TSV input to ``vldata.ingest.tabular`` and the scin and wit builders: rows too long to
hold (a 200 MB field, a gzip holding one 256 MB line), rows that are not UTF-8 or hold a lone CR, a
gzip truncated or corrupted part-way, a huge header, SCIN case ids that cannot be keys and image paths
that point outside ``images/``. Each test builds its own input; a bad row fails alone with an exact
reason, a damaged file keeps the rows before the damage and is noted by name, an unreadable header is
exit 2 with one line, and memory stays under 1 GB. No network: WIT rows are SVGs, filtered before any
download."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from PIL import Image as PILImage

import vldata
from builders.scin.columns import CASE_COLUMNS, LABEL_COLUMNS
from builders.wit.columns import COLUMNS as WIT_COLUMNS
from vldata.ingest.tabular import Rows, read_header

RSS_LIMIT_KB = 1 << 20  # 1 GB
RUNNER = r"""
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "err": proc.stderr[-4000:],
                  "rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""
MB = 1 << 20


def build_in_child(builder: str, raw: Path, out: Path) -> dict:
    """``vldata build`` in a child whose peak RSS a wrapper reads (as tests/fuzz_raw.py does)."""
    cmd = [sys.executable, "-c", RUNNER, sys.executable, "-m", "vldata.cli", "build", builder, "--raw", str(raw),
           "--out", str(out), "--workers", "1", "--format", "parquet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stats(out: Path, split: str = "train") -> dict:
    return json.loads((out / "build" / "stats.json").read_text())["splits"][split]


def failures(out: Path) -> dict[str, dict]:
    return {f["key"]: f for f in pq.read_table(out / "build" / "failures.parquet").to_pylist()}


def balanced(s: dict) -> bool:
    return s["input_rows"] == s["written"] + s["failed"] + s["filtered"] + s["duplicates"]


def read(data: bytes, delimiter: str = ",", limit: int = 64, **kw) -> tuple[list, object]:
    rows = Rows(io.BufferedReader(io.BytesIO(data)), delimiter, limit=limit, **kw)
    return [(r.offset, r.line, r.values, r.problem and r.problem.reason) for r in rows], rows.damage


# --------------------------------------------------------------------------------------------
# The reader


def test_a_long_line_is_skipped_to_the_next_line():
    data = b"a,b\n" + b"x" * 200 + b",1\nc,d\n" + b"y" * 65 + b"\ne,f"
    rows, damage = read(data, limit=64)
    assert damage is None
    assert rows == [(0, 1, ["a", "b"], None), (4, 2, None, "row_too_large"), (207, 3, ["c", "d"], None),
                    (211, 4, None, "row_too_large"), (277, 5, ["e", "f"], None)]


def test_a_long_quoted_row_over_several_lines_is_too_large():
    data = b"a,b\n\"" + b"y\n" * 40 + b"\",2\n"
    rows, damage = read(data, limit=64)
    assert damage is None
    assert rows[1][:2] == (4, 2) and rows[1][3] == "row_too_large"  # > 64 bytes after 32 lines
    # reading goes on at the next line: the rest of the row comes out as rows of its own (a builder's
    # malformed rows), none longer than the limit
    assert rows[2] == (4 + 1 + 2 * 32, 34, ["y"], None) and len(rows) == 11


def test_bad_bytes_and_a_lone_cr_fail_their_row_only():
    data = b"h1,h2\nok,1\nbad\xff\xfe,2\nlone\rcr,3\nok,4\n"
    rows, damage = read(data, limit=1024)
    assert damage is None
    assert [(r[1], r[2], r[3]) for r in rows] == [(1, ["h1", "h2"], None), (2, ["ok", "1"], None),
                                                  (3, None, "row_not_utf8"), (4, None, "malformed_row"), (5, ["ok", "4"], None)]


def test_a_row_longer_than_the_limit_never_holds_more_than_about_the_limit():
    class Counting(io.RawIOBase):  # 64 MB of one line, then a row; records the largest buffer read into
        def __init__(self):
            self.left, self.tail = 64 * MB, b"\nz,1\n"

        def readable(self):
            return True

        def readinto(self, b):
            if self.left:
                n = min(len(b), self.left)
                b[:n] = b"q" * n
                self.left -= n
                return n
            n = min(len(b), len(self.tail))
            b[:n], self.tail = self.tail[:n], self.tail[n:]
            return n

    import tracemalloc

    tracemalloc.start()
    rows = list(Rows(io.BufferedReader(Counting()), limit=4 * MB))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [(r.line, r.problem and r.problem.reason, r.values) for r in rows] == [(1, "row_too_large", None),
                                                                                  (2, None, ["z", "1"])]
    assert peak < 16 * MB


def flushed_gzip(lines: list[bytes]) -> tuple[bytes, list[int]]:
    """A gzip of ``lines`` with a full flush after each, and the compressed size after each line."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    out, ends = bytearray(), []
    for line in lines:
        out += c.compress(line) + c.flush(zlib.Z_FULL_FLUSH)
        ends.append(len(out))
    out += c.flush()
    return bytes(out), ends


def gz_rows(path: Path, **kw) -> tuple[list, object]:
    with gzip.open(path, "rb") as f:
        rows = Rows(f, "\t", **kw)
        return [(r.offset, r.values) for r in rows], rows.damage


def test_a_truncated_gzip_keeps_every_whole_row_before_the_cut(tmp_path):
    lines = [f"r{i}\tvalue {i}\n".encode() for i in range(50)]
    data, ends = flushed_gzip(lines)
    path = tmp_path / "t.tsv.gz"
    path.write_bytes(data[:ends[29] + 3])  # 30 whole lines and a few bytes of the next
    rows, damage = gz_rows(path)
    assert [v for _, v in rows] == [[f"r{i}", f"value {i}"] for i in range(30)]
    assert damage.reason == "truncated_file"
    for offset, _ in rows[::7]:  # read from any row's offset: the same rows, the same damage
        again, damage2 = gz_rows(path, offset=offset)
        assert again == [r for r in rows if r[0] >= offset] and damage2 == damage


def test_a_corrupt_gzip_ends_at_the_damage_the_same_from_every_offset(tmp_path):
    rng = random.Random(0)
    lines = [f"r{i}\t{rng.randbytes(600).hex()}\n".encode() for i in range(600)]
    data = bytearray(gzip.compress(b"".join(lines), mtime=0))
    data[len(data) * 2 // 3:len(data) * 2 // 3 + 64] = b"\xff" * 64
    path = tmp_path / "c.tsv.gz"
    path.write_bytes(bytes(data))
    rows, damage = gz_rows(path)
    assert damage.reason == "corrupt_file" and 100 < len(rows) < 600
    # the rows well before the damage are intact (deflate may decode a little garbage before it fails)
    assert all(v == lines[i].decode().rstrip("\n").split("\t") for i, (_, v) in enumerate(rows[:100]))
    for offset, _ in rows[::97]:
        again, damage2 = gz_rows(path, offset=offset)
        assert again == [r for r in rows if r[0] >= offset] and damage2 == damage


@pytest.mark.parametrize("head,needle", [(b"a," + b"x" * 5000 + b"\n", "row_too_large"),
                                         (b"a,\xff\n", "row_not_utf8"), (b"a,b\rc\n", "malformed_row")])
def test_an_unreadable_header_is_one_structural_line(tmp_path, head, needle):
    path = tmp_path / "h.csv"
    path.write_bytes(head + b"1,2\n")
    with pytest.raises(vldata.StructuralError) as e:
        read_header(path, ("a",), limit=1024)
    assert str(e.value).startswith(f"{path}: unreadable CSV header ({needle}: ") and "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------
# SCIN


def png_bytes() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (12, 10), (200, 150, 120)).save(buf, "PNG")
    return buf.getvalue()


def scin_case(case_id: str, *paths: str) -> dict:
    row = dict.fromkeys(CASE_COLUMNS, "")
    row.update(case_id=case_id, source="SCIN", release="1.0.0", year="2023", related_category="RASH")
    for i, p in enumerate(paths, 1):
        row[f"image_{i}_path"], row[f"image_{i}_shot_type"] = p, "CLOSE_UP"
    return row


def csv_bytes(header, rows: list[dict]) -> bytes:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return text.getvalue().encode()


def write_scin(raw: Path, cases: list[dict], images: tuple[str, ...] = ("1.png", "2.png")) -> Path:
    root = raw / "dataset"
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in images:
        (root / "images" / name).write_bytes(png_bytes())
    labels = [{**dict.fromkeys(LABEL_COLUMNS, ""), "case_id": c["case_id"], "weighted_skin_condition_label": "{}"}
              for c in cases]
    (root / "scin_cases.csv").write_bytes(csv_bytes(CASE_COLUMNS, cases))
    (root / "scin_labels.csv").write_bytes(csv_bytes(LABEL_COLUMNS, labels))
    return root


def test_scin_case_ids_that_cannot_be_keys_fail_their_case(tmp_path):
    write_scin(tmp_path / "raw", [scin_case("-1", "dataset/images/1.png"), scin_case("a.b/../c", "dataset/images/1.png"),
                                  scin_case("", "dataset/images/2.png"), scin_case("2", "dataset/images/2.png")])
    report = vldata.build("scin", tmp_path / "raw", tmp_path / "out", formats="parquet")
    s = report.splits["train"]
    assert (s.input_rows, s.written, s.failed) == (4, 2, 2) and s.reasons["failed"] == {"invalid_case_id": 2}
    f = failures(tmp_path / "out")
    assert f["a_b____c"]["message"] == "case_id 'a.b/../c' is not [A-Za-z0-9_-]+"
    assert f["a_b____c"]["ref"] == "scin_cases.csv:3"
    report = vldata.build("scin", tmp_path / "raw", tmp_path / "out2", formats="parquet", view="image")
    assert report.splits["train"].reasons["failed"] == {"invalid_case_id": 2}


def test_scin_image_paths_outside_images_are_never_read(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    raw = tmp_path / "raw"
    root = write_scin(raw, [
        scin_case("1", str(outside)),  # absolute
        scin_case("2", "dataset/images/../../../secret.png"),
        scin_case("3", "dataset/images/"),  # a directory
        scin_case("4", "dataset/images/sub.png"),  # a directory named like an image
        scin_case("5", "dataset/images/fifo.png"),  # a FIFO: reading it would hang
        scin_case("6", "dataset/images/1.png", "dataset/images/.."),  # a bad secondary image
        scin_case("7", "dataset/images/missing.png"),
    ])
    (root / "images" / "sub.png").mkdir()
    os.mkfifo(root / "images" / "fifo.png")
    report = vldata.build("scin", raw, tmp_path / "out", formats="parquet")
    s = report.splits["train"]
    assert (s.input_rows, s.written, s.failed) == (7, 1, 6)
    assert s.reasons["failed"] == {"image_path_invalid": 5, "image_missing": 1}
    assert s.notes == {"secondary_image_path_invalid": 1}
    f = failures(tmp_path / "out")
    assert f["1"]["message"] == f"{outside}: not a relative path to an image file"
    assert f["5"]["message"].endswith("fifo.png is not a regular file")
    row = pq.read_table(tmp_path / "out" / "parquet" / "data").to_pylist()[0]
    assert row["key"] == "6" and row["images"][1]["problem"] == "image_path_invalid" and row["image_2"] is None


def test_scin_rows_that_are_not_utf8_or_hold_a_lone_cr_fail_alone(tmp_path):
    cases = [scin_case(str(i), "dataset/images/1.png") for i in range(5)]
    root = write_scin(tmp_path / "raw", cases)
    data = (root / "scin_cases.csv").read_bytes().split(b"\n")
    data[2] = data[2].replace(b"RASH", b"RA\xffSH")  # case 1
    data[4] = data[4].replace(b"RASH", b"RA\rSH")  # case 3: a lone CR
    (root / "scin_cases.csv").write_bytes(b"\n".join(data))
    report = vldata.build("scin", tmp_path / "raw", tmp_path / "out", formats="parquet")
    s = report.splits["train"]
    assert (s.input_rows, s.written, s.failed) == (5, 3, 2)
    assert s.reasons["failed"] == {"row_not_utf8": 1, "malformed_row": 1}
    f = failures(tmp_path / "out")
    assert f["scin_cases_line000000003"]["reason"] == "row_not_utf8" and f["scin_cases_line000000003"]["ref"] == "scin_cases.csv:3"
    assert f["scin_cases_line000000005"]["reason"] == "malformed_row"
    assert "new-line character seen in unquoted field" in f["scin_cases_line000000005"]["message"]


def test_scin_a_200_mb_field_is_row_too_large_in_bounded_memory(tmp_path):
    cases = [scin_case(str(i), "dataset/images/1.png") for i in range(3)]
    root = write_scin(tmp_path / "raw", cases)
    header, case0, rest = (root / "scin_cases.csv").read_bytes().split(b"\n", 2)
    with open(root / "scin_cases.csv", "wb") as f:  # case 0's related_category holds 200 MB
        f.write(header + b"\n" + case0.replace(b"RASH", b"R"))
        f.writelines(b"A" * MB for _ in range(200))
        f.write(b"\n" + rest)
    result = build_in_child("scin", tmp_path / "raw", tmp_path / "out")
    assert result["rc"] == 0, result["err"]
    assert result["rss_kb"] < RSS_LIMIT_KB, f"peak RSS {result['rss_kb'] // 1024} MB"
    s = stats(tmp_path / "out")
    assert (s["input_rows"], s["written"], s["failed"]) == (3, 2, 1) and s["reasons"]["failed"] == {"row_too_large": 1}
    assert failures(tmp_path / "out")["scin_cases_line000000002"]["message"] == \
        f"row longer than {16 * MB} bytes (line 2)"


# --------------------------------------------------------------------------------------------
# WIT


def wit_line(i: int, **over: str) -> bytes:
    row = dict.fromkeys(WIT_COLUMNS, "")
    row.update(language="en", page_url=f"https://en.wikipedia.org/wiki/P{i}", image_url=f"http://127.0.0.1:9/{i}.svg",
               page_title=f"P{i}", mime_type="image/svg+xml", is_main_image="true",
               attribution_passes_lang_id="false", page_changed_recently="false", **over)
    text = io.StringIO(newline="")
    csv.writer(text, delimiter="\t", lineterminator="\n").writerow([row[c] for c in WIT_COLUMNS])
    return text.getvalue().encode()


WIT_HEADER = ("\t".join(WIT_COLUMNS) + "\n").encode()
WIT_FILE = "wit_v1.train.all-00000-of-00001.tsv.gz"


def test_wit_a_bad_row_fails_alone(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    body = [wit_line(0), wit_line(1).replace(b"P1", b"P\xff1"), wit_line(2).replace(b"P2\t", b"P\r2\t"), wit_line(3)]
    (raw / WIT_FILE).write_bytes(gzip.compress(WIT_HEADER + b"".join(body), mtime=0))
    report = vldata.build("wit", raw, tmp_path / "out", formats="parquet")
    s = report.splits["train"]
    assert (s.input_rows, s.failed, s.filtered) == (4, 2, 2)
    assert s.reasons["failed"] == {"row_not_utf8": 1, "malformed_row": 1}
    f = failures(tmp_path / "out")
    assert f["train_00000_000000001"]["reason"] == "row_not_utf8"
    assert f["train_00000_000000001"]["ref"] == f"{WIT_FILE}:1"
    assert f["train_00000_000000002"]["reason"] == "malformed_row"


def test_wit_a_256_mb_line_is_row_too_large_in_bounded_memory(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(raw / WIT_FILE, "wb") as f:
        f.write(c.compress(WIT_HEADER + wit_line(0)))
        block = b"a" * MB
        f.writelines(c.compress(block) for _ in range(256))  # one line of 256 MB (about 261 KB compressed)
        f.write(c.compress(b"\n" + wit_line(2)))
        f.write(c.flush())
    assert (raw / WIT_FILE).stat().st_size < 1 * MB
    result = build_in_child("wit", raw, tmp_path / "out")
    assert result["rc"] == 0, result["err"]
    assert result["rss_kb"] < RSS_LIMIT_KB, f"peak RSS {result['rss_kb'] // 1024} MB"
    s = stats(tmp_path / "out")
    assert (s["input_rows"], s["failed"], s["filtered"]) == (3, 1, 2) and s["reasons"]["failed"] == {"row_too_large": 1}
    assert failures(tmp_path / "out")["train_00000_000000001"]["reason"] == "row_too_large"


def test_wit_a_256_mb_header_is_one_structural_line_in_bounded_memory(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(raw / WIT_FILE, "wb") as f:
        f.writelines(c.compress(b"a" * MB) for _ in range(256))
        f.write(c.flush())
    result = build_in_child("wit", raw, tmp_path / "out")
    lines = result["err"].strip().splitlines()
    assert result["rc"] == 2 and len(lines) == 1, result["err"]
    assert lines[0].startswith("vldata: error: ") and f"{WIT_FILE}: unreadable TSV header (row_too_large: " in lines[0]
    assert result["rss_kb"] < RSS_LIMIT_KB, f"peak RSS {result['rss_kb'] // 1024} MB"


def test_wit_a_truncated_gzip_keeps_its_rows_and_is_noted(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    data, ends = flushed_gzip([WIT_HEADER] + [wit_line(i) for i in range(20)])
    (raw / WIT_FILE).write_bytes(data[:ends[12] + 5])  # the header and 12 whole rows
    report = vldata.build("wit", raw, tmp_path / "out", formats="parquet", rows_per_partition=5)
    s = report.splits["train"]
    assert (s.input_rows, s.filtered, s.failed) == (12, 12, 0)
    assert s.notes == {f"truncated_file:{WIT_FILE}": 1}


def test_wit_a_corrupt_gzip_keeps_the_rows_before_the_damage(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = random.Random(0)
    body = b"".join(wit_line(i, context_page_description=rng.randbytes(600).hex()) for i in range(600))
    data = bytearray(gzip.compress(WIT_HEADER + body, mtime=0))
    data[len(data) * 2 // 3:len(data) * 2 // 3 + 64] = b"\xff" * 64
    (raw / WIT_FILE).write_bytes(bytes(data))
    proc = run_cli("build", "wit", "--raw", raw, "--out", tmp_path / "out", "--format", "parquet",
                   "--set", "rows_per_partition=37", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    s = stats(tmp_path / "out")
    assert 100 < s["input_rows"] < 600 and s["filtered"] + s["failed"] == s["input_rows"] and balanced(s)
    assert s["filtered"] > 100  # the rows before the damage
    assert s["notes"] == {f"corrupt_file:{WIT_FILE}": 1}
    # any failure is a garbled row just before the damage, never rows that partitions() counted and
    # records() could not find
    assert set(s["reasons"]["failed"]) <= {"malformed_row", "malformed_value", "row_not_utf8"}


def test_scin_image_files_over_image_max_bytes_are_not_read(scin_raw, tmp_path):
    """A local image file is refused by its size, before it is read (``image.max_bytes``)."""
    import vldata

    report = vldata.build("scin", scin_raw, tmp_path / "out", formats="parquet", image={"max_bytes": 100})
    s = report.splits["train"]
    assert s.written == 0 and s.input_rows == s.failed + s.filtered + s.duplicates
    assert s.reasons["failed"].get("image_too_large", 0) > 0
