"""Hostile input to the laion and arboretum builders: damaged metadata parquet (a data page, the
footer, a string that is not UTF-8), damaged img2dataset shards (a truncated or garbage tar, a member
whose header announces 256 MB, names pointing outside, a damaged shard parquet, a broken stats file)
and photo ids that cannot be keys. Each case builds its own input; a damaged container fails only
its own rows with an exact reason naming the file, an unreadable footer is exit 2 with one line, and
memory stays under 1 GB. No network: rows are filtered before download or read from local files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image as PILImage

import vldata
from builders.arboretum.sample import SCHEMA as ARBORETUM
from conftest import run_cli
from fuzz_raw import RSS_LIMIT_KB, RUNNER, _Zeros



def stats(out: Path) -> dict:
    return json.loads((out / "build" / "stats.json").read_text())["splits"]["train"]


def reasons(s: dict) -> dict:
    return {kind: counts for kind, counts in s["reasons"].items() if counts}


def failures(out: Path) -> dict[str, dict]:
    return {f["key"]: f for f in pq.read_table(out / "build" / "failures.parquet").to_pylist()}


def built_keys(out: Path) -> list[str]:
    return sorted(pq.read_table(sorted((out / "parquet" / "data").glob("*.parquet")), columns=["key"])
                  .column("key").to_pylist())


def picture(color: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (24, 16), color).save(buf, format=fmt)
    return buf.getvalue()


def build_in_child(raw: Path, out: Path, builder: str = "laion") -> dict:
    """``vldata build`` in a child whose peak RSS a wrapper reads (as tests/fuzz_raw.py does)."""
    cmd = [sys.executable, "-c", RUNNER, sys.executable, "-m", "vldata.cli", "build", builder, "--raw", str(raw),
           "--out", str(out), "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=330, check=True,
                          env={**os.environ, "FUZZ_TIMEOUT": "300"})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def damage_page(path: Path, row_group: int, column: int = 0) -> None:
    """Overwrite the header of the first data page of one column chunk."""
    chunk = pq.ParquetFile(path).metadata.row_group(row_group).column(column)
    offset = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))


def not_utf8_strings(values: list[bytes]) -> pa.Array:
    """A string array whose bytes are written as they are (pyarrow checks nothing when writing)."""
    return pa.Array.from_buffers(pa.string(), len(values), pa.array(values, pa.binary()).buffers())


def one_line_exit_2(proc: subprocess.CompletedProcess, name: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vldata: error: ") and name in lines[0], proc.stderr
    assert "could not be read (" not in lines[0]  # named by the builder, not the engine's last resort


# --------------------------------------------------------------------------------------------
# LAION metadata parquet


def metadata_file(path: Path, n: int = 12, group: int = 4, caption: pa.Array | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"SAMPLE_ID": pa.array(range(n), pa.int64()),
                      "URL": [f"http://127.0.0.1:9/{i}.jpg" for i in range(n)],
                      "TEXT": caption if caption is not None else [f"caption {i}" for i in range(n)],
                      "similarity": [0.1] * n})
    pq.write_table(table, path, row_group_size=group, use_dictionary=False)
    return path


def test_a_damaged_page_fails_only_its_row_group(tmp_path):
    raw = tmp_path / "raw"
    damaged = metadata_file(raw / "a.parquet")
    metadata_file(raw / "b.parquet", n=3)
    damage_page(damaged, 1, column=1)  # rows 4..7 of a.parquet
    out = tmp_path / "out"
    vldata.build("laion", raw, out, min_similarity=0.5, rows_per_partition=3)  # filtered: no download
    s = stats(out)
    assert s["input_rows"] == 15 == s["failed"] + s["filtered"]
    assert reasons(s) == {"failed": {"unreadable_row_group": 4}, "filtered": {"min_similarity": 11}}
    bad = failures(out)
    assert sorted(k for k, f in bad.items() if f["outcome"] == "failed") == [f"00000_00000000{i}" for i in (4, 5, 6, 7)]
    assert all("a.parquet row group 1" in bad[f"00000_00000000{i}"]["message"] for i in (4, 5, 6, 7))
    assert bad["00000_000000004"]["ref"] == "a.parquet:4"


def test_a_string_that_is_not_utf8_fails_its_row_only(tmp_path):
    raw = tmp_path / "raw"
    metadata_file(raw / "a.parquet", n=4, caption=not_utf8_strings([b"ok", b"bad \xff\xfe", b"fine", b"\xc3"]))
    out = tmp_path / "out"
    vldata.build("laion", raw, out, min_similarity=0.5)
    s = stats(out)
    assert reasons(s) == {"failed": {"row_not_utf8": 2}, "filtered": {"min_similarity": 2}}
    bad = failures(out)
    assert bad["00000_000000001"]["reason"] == "row_not_utf8" and "a.parquet" in bad["00000_000000001"]["message"]
    assert bad["00000_000000003"]["reason"] == "row_not_utf8"


def test_an_unreadable_footer_is_one_line_naming_the_file(tmp_path):
    raw = tmp_path / "raw"
    metadata_file(raw / "a.parquet")
    cut = metadata_file(raw / "b.parquet")
    cut.write_bytes(cut.read_bytes()[:-30])
    one_line_exit_2(run_cli("build", "laion", "--raw", raw, "--out", tmp_path / "out"), "b.parquet")
    assert not (tmp_path / "out" / "parquet").exists()


# --------------------------------------------------------------------------------------------
# img2dataset output folders


SHARD = pa.schema([("key", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
                   ("caption", pa.string()), ("url", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                   ("original_width", pa.int32()), ("original_height", pa.int32())])


def key(i: int, shard_id: int = 0) -> str:
    """img2dataset's key of row i of a shard (default oom_shard_count 5, 10000 rows per shard)."""
    return f"{shard_id:05d}{i:04d}"


def shard(folder: Path, n: int, ok: int, shard_id: int = 0) -> Path:
    """``NNNNN.parquet`` with n rows, the first ``ok`` of them downloaded (in completion order:
    reversed), ``NNNNN.tar`` with their images, ``NNNNN_stats.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = [key(i, shard_id) for i in range(n)]
    images = {k: picture((i * 40 % 256, shard_id, 0)) for i, k in enumerate(keys[:ok])}
    rows = [{"key": k, "status": "success" if k in images else "failed_to_download",
             "error_message": None if k in images else "HTTP Error 404: File not found", "caption": f"c{k}",
             "url": f"http://127.0.0.1:9/{k}.jpg", "width": 24, "height": 16, "original_width": 24,
             "original_height": 16} for k in reversed(keys)]
    stem = folder / f"{shard_id:05d}"
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD), stem.with_suffix(".parquet"), row_group_size=4,
                   use_dictionary=False)
    with tarfile.open(stem.with_suffix(".tar"), "w") as tar:
        for k, data in images.items():
            for name, payload in ((f"{k}.jpg", data), (f"{k}.txt", f"c{k}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (folder / f"{shard_id:05d}_stats.json").write_text(json.dumps({"count": n, "successes": len(images)}))
    return stem


def test_a_truncated_tar_fails_only_the_images_after_the_cut(tmp_path):
    raw = tmp_path / "i2d"
    stem = shard(raw, 5, 3)
    shard(raw, 2, 1, shard_id=1)
    tar = stem.with_suffix(".tar")
    with tarfile.open(tar) as t:
        second = t.getmembers()[2]  # 000000000.jpg, 000000000.txt, 000000001.jpg, ...
    assert second.name == f"{key(1)}.jpg"
    tar.write_bytes(tar.read_bytes()[:second.offset_data + 100])  # cut inside the second image
    out = tmp_path / "out"
    vldata.build("laion", raw, out)
    s = stats(out)
    assert s["input_rows"] == 7 and s["written"] == 2
    assert s["reasons"]["failed"] == {"tar_corrupt": 2, "http_404": 3}
    bad = failures(out)
    assert {k for k, f in bad.items() if f["reason"] == "tar_corrupt"} == {key(1), key(2)}
    assert "00000.tar" in bad[key(1)]["message"] and "cut off" in bad[key(1)]["message"]
    assert "00000.tar" in bad[key(2)]["message"] and "no image for key 000000002" in bad[key(2)]["message"]
    assert built_keys(out) == [key(0), key(0, 1)]


def test_rows_a_damaged_tar_failed_are_rebuilt_by_rerun_once_it_is_repaired(tmp_path):
    raw = tmp_path / "i2d"
    stem = shard(raw, 5, 3)
    tar = stem.with_suffix(".tar")
    good = tar.read_bytes()
    tar.write_bytes(good[:2048])  # the first image only
    vldata.build("laion", raw, tmp_path / "first")
    assert stats(tmp_path / "first")["reasons"]["failed"] == {"tar_corrupt": 2, "http_404": 2}
    tar.write_bytes(good)
    vldata.build("laion", raw, tmp_path / "again", rerun=str(tmp_path / "first"))
    s = stats(tmp_path / "again")
    assert s["input_rows"] == 4 and s["written"] == 2 and s["reasons"]["failed"] == {"http_404": 2}
    assert built_keys(tmp_path / "again") == [key(1), key(2)]


def test_a_garbage_tar_fails_its_successes_only(tmp_path):
    raw = tmp_path / "i2d"
    stem = shard(raw, 4, 2)
    stem.with_suffix(".tar").write_bytes(bytes(range(256)) * 40)
    out = tmp_path / "out"
    vldata.build("laion", raw, out)
    s = stats(out)
    assert s["input_rows"] == 4 and s["reasons"]["failed"] == {"tar_corrupt": 2, "http_404": 2}
    assert "00000.tar: unreadable after 0 images" in failures(out)[key(0)]["message"]


def test_a_huge_member_is_refused_from_its_header_and_names_stay_inside(tmp_path):
    """A member whose header announces 256 MB (the fuzz harness's bomb), a member named outside the
    folder and a link: nothing is read beyond the cap, nothing extracted, memory stays small."""
    raw = tmp_path / "i2d"
    stem = shard(raw, 4, 1)
    zeros = 256 << 20
    with tarfile.open(stem.with_suffix(".tar"), "a") as tar:
        info = tarfile.TarInfo(f"bomb/{key(1)}.jpg")
        info.size = zeros
        tar.addfile(info, _Zeros(zeros))
        outside = picture((4, 5, 6))
        info = tarfile.TarInfo(f"../../escaped/{key(2)}.jpg")
        info.size = len(outside)
        tar.addfile(info, io.BytesIO(outside))
        link = tarfile.TarInfo(f"{key(3)}.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    table = pq.read_table(stem.with_suffix(".parquet")).to_pylist()
    for row in table:
        row["status"], row["error_message"] = "success", None
    pq.write_table(pa.Table.from_pylist(table, schema=SHARD), stem.with_suffix(".parquet"))
    out = tmp_path / "out"
    result = build_in_child(raw, out)
    assert result["rc"] == 0, result["err"]
    assert result["rss_kb"] < RSS_LIMIT_KB, result
    s = stats(out)
    assert s["input_rows"] == 4 and s["written"] == 2  # key 2 is found by its base name only
    assert s["reasons"]["failed"] == {"member_too_large": 1, "image_missing": 1}
    bad = failures(out)
    assert bad[key(1)]["reason"] == "member_too_large" and f"bomb/{key(1)}.jpg" in bad[key(1)]["message"]
    assert bad[key(3)]["reason"] == "image_missing"  # a link is not an image
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.rglob("escaped"))


def test_a_damaged_shard_parquet_fails_its_unreadable_rows(tmp_path):
    raw = tmp_path / "i2d"
    stem = shard(raw, 8, 8)
    damage_page(stem.with_suffix(".parquet"), 1, column=3)  # rows 4..7 in file order: keys 3..0
    (raw / "00000_stats.json").write_text("{not json")
    out = tmp_path / "out"
    vldata.build("laion", raw, out)
    s = stats(out)
    assert s["input_rows"] == 8 and s["written"] == 4
    assert s["reasons"]["failed"] == {"unreadable_row_group": 4}
    assert s["notes"] == {"img2dataset_stats_unreadable": 1}
    bad = failures(out)
    assert sorted(bad) == [f"00000_row00000000{i}" for i in (4, 5, 6, 7)]
    assert "00000.parquet row group 1" in bad["00000_row000000004"]["message"]
    assert built_keys(out) == [key(i) for i in (4, 5, 6, 7)]


def test_an_unreadable_shard_parquet_footer_is_one_line(tmp_path):
    raw = tmp_path / "i2d"
    stem = shard(raw, 3, 1)
    stem.with_suffix(".parquet").write_bytes(b"PAR1 not really")
    one_line_exit_2(run_cli("build", "laion", "--raw", raw, "--out", tmp_path / "out"), "00000.parquet")


# --------------------------------------------------------------------------------------------
# Arboretum


def arboretum_row(photo_id, sci: str = "Steatoda grossa") -> dict:
    return {"photo_id": photo_id, "scientificName": sci, "kingdom": "Animalia", "phylum": "Arthropoda",
            "class": "Arachnida", "order": "Araneae", "family": "Theridiidae", "genus": "Steatoda",
            "species": "grossa", "common_name": "False Black Widow", "photo_url": "http://127.0.0.1:9/x.jpg"}


def test_arboretum_damage_and_bad_photo_ids_fail_only_their_rows(tmp_path):
    raw, images = tmp_path / "raw", tmp_path / "imgs"
    raw.mkdir()
    images.mkdir()
    schema = pa.schema([("photo_id", pa.string()) if f.name == "photo_id" else f for f in ARBORETUM])
    ids = ["11", "12", "x1", "-5", "9007199254740993", "99999999999999999999", "16", "17", "18", "19"]
    rows = [arboretum_row(i) for i in ids]
    table = pa.Table.from_pylist(rows, schema=schema)
    names = not_utf8_strings([b"Steatoda grossa"] * 6 + [b"Steatoda \xff"] + [b"Steatoda grossa"] * 3)
    table = table.set_column(1, "scientificName", names)
    pq.write_table(table, raw / "chunk_0.parquet", row_group_size=4, use_dictionary=False)
    damage_page(raw / "chunk_0.parquet", 2, column=10)  # rows 8, 9
    for pid in (11, 12, 9007199254740993, 16, 17, 18, 19):
        (images / f"{pid}.jpg").write_bytes(picture((pid % 256, 0, 0)))
    out = tmp_path / "out"
    vldata.build("arboretum", raw, out, images_dir=str(images))
    s = stats(out)
    assert s["input_rows"] == 10 and s["written"] == 4
    assert s["reasons"]["failed"] == {"invalid_photo_id": 3, "row_not_utf8": 1, "unreadable_row_group": 2}
    assert built_keys(out) == ["11", "12", "17", "9007199254740993"]  # digits read exactly, not via a float
    bad = failures(out)
    assert {k: f["reason"] for k, f in bad.items()} == {
        "chunk_0_row2": "invalid_photo_id", "chunk_0_row3": "invalid_photo_id", "chunk_0_row5": "invalid_photo_id",
        "chunk_0_row6": "row_not_utf8", "chunk_0_row8": "unreadable_row_group", "chunk_0_row9": "unreadable_row_group"}
    assert "chunk_0.parquet row group 2" in bad["chunk_0_row8"]["message"]


def test_arboretum_damage_keeps_balancing_counts_exact(tmp_path):
    """With balancing on, partitions() reads the names alone; records() agrees even where rows fail."""
    raw, images = tmp_path / "raw", tmp_path / "imgs"
    raw.mkdir()
    images.mkdir()
    rows = [arboretum_row(100 + i) for i in range(8)]
    pq.write_table(pa.Table.from_pylist(rows, schema=ARBORETUM), raw / "chunk_0.parquet", row_group_size=4,
                   use_dictionary=False)
    damage_page(raw / "chunk_0.parquet", 0, column=10)  # photo_url of rows 0..3; the names still read
    for r in rows:
        (images / f"{r['photo_id']}.jpg").write_bytes(picture((r["photo_id"] % 256, 1, 2)))
    out = tmp_path / "out"
    vldata.build("arboretum", raw, out, images_dir=str(images), cap_threshold=5, rows_per_partition=2)
    s = stats(out)
    assert s["input_rows"] == 8
    assert reasons(s) == {"failed": {"unreadable_row_group": 4}, "filtered": {"cap_threshold": 3}}
    assert built_keys(out) == ["104"]


def test_arboretum_unreadable_footer_is_one_line(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.Table.from_pylist([arboretum_row(1)], schema=ARBORETUM), raw / "chunk_0.parquet")
    path = raw / "chunk_0.parquet"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    one_line_exit_2(run_cli("build", "arboretum", "--raw", raw, "--out", tmp_path / "out"), "chunk_0.parquet")

