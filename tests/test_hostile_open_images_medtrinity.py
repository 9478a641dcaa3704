"""Hostile input for Open Images and MedTrinity: one bad row or one damaged file costs only its own
rows (exact reasons and counts, accounting that balances), an unreadable header is one line and exit 2,
and bombs (members whose header promises gigabytes) are refused before they are read, the build's
peak RSS staying under 1 GB. Every input is the builder's sample plus targeted damage, made here."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import run_cli
from fuzz_raw import RSS_LIMIT_KB, _Zeros  # the harness's limit and its stream of zeros

import vldata
from builders.medtrinity.sample import write_sample as write_medtrinity
from builders.open_images.sample import LEADING_ZEROS_ID
from builders.open_images.sample import write_sample as write_open_images

BOMB = 1536 << 20  # what a member's header promises: read whole, it alone would pass the 1 GB limit
RUNNER = r"""
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "err": proc.stderr[-4000:],
                  "rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def build_measured(name: str, raw: Path, out: Path, *args: str) -> dict:
    """``vldata build`` in a child of a wrapper child: exit code, stderr and the build's peak RSS."""
    cmd = [sys.executable, "-c", RUNNER, sys.executable, "-m", "vldata.cli", "build", name, "--raw", str(raw),
           "--out", str(out), "--format", "parquet", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stats(out: Path) -> dict:
    splits = json.loads((out / "build" / "stats.json").read_text())["splits"]
    for s in splits.values():
        assert s["input_rows"] == s["written"] + s["failed"] + s["filtered"] + s["duplicates"]
        assert "reader_error" not in s["reasons"]["failed"]
    return splits


def failures(out: Path) -> list[dict]:
    return pq.read_table(out / "build" / "failures.parquet").to_pylist()


def all_notes(splits: dict) -> dict:
    return {k: v for s in splits.values() for k, v in s["notes"].items()}


# ------------------------------------------------------------------------------------------ Open Images

@pytest.fixture(scope="module")
def oi_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("oi_hostile") / "raw"
    write_open_images(raw, n=12, seed=0)
    return raw


def oi_copy(oi_raw: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(oi_raw, copy)
    return copy


def oi_build(raw: Path, tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "out"
    run_cli("build", "open_images", "--raw", raw, "--out", out, "--format", "parquet", "--set", "prefix_chars=1",
            *args, check=True)
    return out


def info_row(iid: str, title: bytes = b"t", subset: bytes = b"test") -> bytes:
    return iid.encode() + b"," + subset + b",,,,,," + title + b",1,,,0.0\n"


def test_bad_bytes_in_image_info_rows_fail_only_those_rows(oi_raw, tmp_path):
    raw = oi_copy(oi_raw, tmp_path)
    ids = [f"{0xabc0 + i:016x}" for i in range(6)]
    jpeg = next((raw / "test").glob("*.jpg")).read_bytes()
    for iid in ids:
        (raw / "test" / f"{iid}.jpg").write_bytes(jpeg)
    with open(raw / "test-images-with-rotation.csv", "ab") as f:
        f.write(info_row(ids[0], b"big " * (50 << 10)))  # a 200 KiB field: over csv's default limit, fine
        f.write(info_row(ids[1], b"caf\xe9 \xff"))  # not UTF-8
        f.write(info_row(ids[2], b"lone\rCR"))  # a lone CR inside an unquoted field
        f.write(info_row(ids[3], b"A" * (17 << 20)))  # over the 16 MiB row cap
        f.write(info_row(ids[4], subset=b"tr\x00in"))  # no known split
        f.write(info_row(ids[5]))  # still read after all that
    with open(raw / "test-annotations-bbox.csv", "ab") as f:
        f.write(ids[5].encode() + b",xclick,/m/0bt9lr,1,0.1,0.2,0.3,0.4,0,0,0,0,\xff\n")
        f.write(ids[5].encode() + b",xclick,/m/0bt9lr,1,0.1,0.2,0.3,0.4,0,0,0,0," + b"B" * (17 << 20) + b"\n")
    out = oi_build(raw, tmp_path)
    splits = stats(out)
    te = splits["test"]
    assert (te["input_rows"], te["written"], te["failed"]) == (10, 5, 5)
    assert te["reasons"]["failed"] == {"bad_rotation": 1, "row_not_utf8": 1, "malformed_row": 1,
                                       "row_too_large": 1, "bad_subset": 1}
    notes = all_notes(splits)
    assert notes["malformed_boxes_row"] == 1 and notes["boxes_row_too_large"] == 1
    rows = {r["key"]: r for r in pq.read_table(sorted((out / "parquet" / "data").glob("test-*.parquet"))).to_pylist()}
    assert rows[ids[0]]["title"] == "big " * (50 << 10)
    assert ids[5] in rows and len(rows[ids[5]]["boxes"]) == 0
    refs = {f["reason"]: f["ref"] for f in failures(out)}
    assert all(refs[r].startswith("test-images-with-rotation.csv:") for r in ("row_not_utf8", "row_too_large"))


def test_an_unreadable_header_is_one_line_naming_the_file(oi_raw, tmp_path):
    raw = oi_copy(oi_raw, tmp_path)
    path = raw / "validation-annotations-bbox.csv"
    path.write_bytes(b"Image\xffID" + path.read_bytes()[len("ImageID"):])
    proc = run_cli("build", "open_images", "--raw", raw, "--out", tmp_path / "out")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert "validation-annotations-bbox.csv" in lines[0] and "row_not_utf8" in lines[0]


def _train_tars(raw: Path) -> dict[str, list[str]]:
    out = {}
    for t in sorted((raw / "tar").glob("train_*.tar.gz")):
        with tarfile.open(t) as tar:
            out[t.name] = [m.name.rsplit("/", 1)[-1][:-4] for m in tar.getmembers()]
    return out


def test_a_truncated_tarball_fails_only_the_rows_waiting_for_it(oi_raw, tmp_path):
    raw = oi_copy(oi_raw, tmp_path)
    name, ids = next((n, ids) for n, ids in _train_tars(raw).items() if LEADING_ZEROS_ID in ids)
    path = raw / "tar" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    out = oi_build(raw, tmp_path)
    tr = stats(out)["train"]
    assert tr["reasons"]["failed"] == {"tarball_truncated": len(ids)}
    assert (tr["input_rows"], tr["written"]) == (6, 6 - len(ids))
    assert tr["notes"][f"tarball_truncated:{name}"] == 1
    cut = [f for f in failures(out) if f["reason"] == "tarball_truncated"]
    assert {f["key"] for f in cut} == set(ids) and all(name in f["message"] for f in cut)


def test_a_truncated_masks_zip_is_noted_and_costs_no_row(oi_raw, tmp_path):
    raw = oi_copy(oi_raw, tmp_path)
    path = raw / "train-masks" / f"train-masks-{LEADING_ZEROS_ID[0]}.zip"
    path.write_bytes(path.read_bytes()[:40])
    out = oi_build(raw, tmp_path)
    splits = stats(out)
    assert splits["train"]["written"] == 6
    assert all_notes(splits)[f"masks_zip_unreadable:{path.name}"] == 1
    r = next(r for r in pq.read_table(out / "parquet" / "data").to_pylist() if r["key"] == LEADING_ZEROS_ID)
    assert r["mask_images"] == [] and r["masks"][0]["mask_index"] is None


def test_bombs_in_a_tarball_and_a_masks_zip_are_refused_unread(oi_raw, tmp_path):
    raw = oi_copy(oi_raw, tmp_path)
    name, ids = next((n, ids) for n, ids in _train_tars(raw).items() if LEADING_ZEROS_ID in ids)
    with gzip.open(raw / "tar" / name, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        info = tarfile.TarInfo(f"train/{LEADING_ZEROS_ID}.jpg")
        info.size = BOMB
        tar.addfile(info, _Zeros(BOMB))
    mask = raw / "train-masks" / f"train-masks-{LEADING_ZEROS_ID[0]}.zip"
    with zipfile.ZipFile(mask, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open(f"{LEADING_ZEROS_ID}_m0bt9lr_9a041d52.png", "w", force_zip64=True) as m:
            for _ in range(BOMB >> 24):
                m.write(bytes(1 << 24))
    assert (raw / "tar" / name).stat().st_size < 16 << 20 and mask.stat().st_size < 16 << 20
    result = build_measured("open_images", raw, tmp_path / "out", "--set", "prefix_chars=1")
    assert result["rc"] == 0, result["err"]
    assert result["rss_kb"] < RSS_LIMIT_KB, f"peak RSS {result['rss_kb'] // 1024} MB"
    splits = stats(tmp_path / "out")
    tr = splits["train"]
    assert tr["reasons"]["failed"] == {"image_too_large": 1, **({"image_missing": len(ids) - 1} if len(ids) > 1 else {})}
    assert tr["written"] == 6 - len(ids)
    big = next(f for f in failures(tmp_path / "out") if f["reason"] == "image_too_large")
    assert big["key"] == LEADING_ZEROS_ID and f"{BOMB} bytes" in big["message"] and name in big["message"]


def test_the_image_cap_holds_for_folder_files_and_tarball_members(oi_raw, tmp_path):
    raw = oi_copy(oi_raw, tmp_path)
    out = oi_build(raw, tmp_path, "--set", "image.max_bytes=50")  # every sample JPEG is larger
    splits = stats(out)
    assert splits["train"]["reasons"]["failed"] == {"image_too_large": 6}
    assert splits["validation"]["reasons"]["failed"]["image_too_large"] == 2


# ------------------------------------------------------------------------------------------ MedTrinity

@pytest.fixture(scope="module")
def mt_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("mt_hostile") / "raw"
    write_medtrinity(raw, n=12, seed=0)
    return raw


def mt_copy(mt_raw: Path, tmp_path: Path, parts=("25M_demo", "25M_full", "25M_accessible")) -> Path:
    copy = tmp_path / "raw"
    for d in parts:
        shutil.copytree(mt_raw / d, copy / d)
    return copy


def _set_column(path: Path, column: str, values: list) -> None:
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    pq.write_table(table.set_column(i, table.schema.field(i), values), path, row_group_size=6)


def test_a_caption_that_is_not_utf8_fails_only_its_row(mt_raw, tmp_path):
    raw = mt_copy(mt_raw, tmp_path, ("25M_demo",))
    path = raw / "25M_demo" / "train-00000-of-00001.parquet"
    captions = pq.read_table(path).column("caption").to_pylist()
    raw_bytes = [c.encode() for c in captions]
    raw_bytes[3] = b"The image \xff\xfe"
    _set_column(path, "caption", pa.array(raw_bytes, pa.binary()).view(pa.string()))
    report = vldata.build("medtrinity", raw, tmp_path / "out", formats="parquet")
    s = report.splits["train"]
    assert (s.input_rows, s.written, s.failed) == (12, 11, 1) and s.reasons["failed"] == {"row_not_utf8": 1}
    assert failures(tmp_path / "out")[0]["ref"] == "25M_demo/train-00000-of-00001.parquet:3"


def test_a_damaged_row_group_fails_only_its_rows(mt_raw, tmp_path):
    raw = mt_copy(mt_raw, tmp_path, ("25M_demo",))
    path = raw / "25M_demo" / "train-00000-of-00001.parquet"
    pq.write_table(pq.read_table(path), path, row_group_size=6, compression="NONE")
    meta = pq.ParquetFile(path).metadata
    offset = meta.row_group(0).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 32] = b"\xff" * 32  # the first page header of row group 0 no longer parses
    path.write_bytes(bytes(data))
    result = build_measured("medtrinity", raw, tmp_path / "out")
    assert result["rc"] == 0 and "Traceback" not in result["err"], result["err"]
    s = stats(tmp_path / "out")["train"]
    assert (s["input_rows"], s["written"]) == (12, 6) and s["reasons"]["failed"] == {"unreadable_row_group": 6}
    assert all(f["message"].startswith(f"{path.name}: row group 0") for f in failures(tmp_path / "out"))


def test_hashed_keys_never_collide_with_literal_ids(mt_raw, tmp_path):
    raw = mt_copy(mt_raw, tmp_path, ("25M_demo",))
    path = raw / "25M_demo" / "train-00000-of-00001.parquet"
    ids = pq.read_table(path).column("id").to_pylist()
    digest = hashlib.sha1(b"PMC1/fig 1.png").hexdigest()[:16]
    ids[0], ids[1], ids[2] = "PMC1/fig 1.png", "sha1-" + digest, digest  # the 2nd is the 1st's hashed key
    _set_column(path, "id", pa.array(ids, pa.string()))
    report = vldata.build("medtrinity", raw, tmp_path / "out", formats="parquet")
    s = report.splits["train"]
    assert (s.written, s.duplicates) == (12, 0)
    keys = {r["id"]: r["key"] for r in pq.read_table(tmp_path / "out" / "parquet" / "data").to_pylist()}
    assert keys["PMC1/fig 1.png"] == "sha1-" + digest
    assert keys["sha1-" + digest] == "sha1-" + hashlib.sha1(("sha1-" + digest).encode()).hexdigest()[:16]
    assert keys[digest] == digest and keys[ids[5]] == ids[5]  # literal ids keep their keys


def test_a_tar_zst_bomb_is_refused_unread(mt_raw, tmp_path):
    raw = mt_copy(mt_raw, tmp_path, ("25M_full", "25M_accessible"))
    target = pq.read_table(raw / "25M_full").to_pylist()[0]["file_name"]
    shard = raw / "25M_accessible" / "dataset_shard_1.tar.zst"
    with open(shard, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as zw, \
            tarfile.open(fileobj=zw, mode="w|") as tar:
        info = tarfile.TarInfo(f"pmc_oa/images/{target}")
        info.size = BOMB
        tar.addfile(info, _Zeros(BOMB))
    assert shard.stat().st_size < 1 << 20
    result = build_measured("medtrinity", raw, tmp_path / "out")
    assert result["rc"] == 0, result["err"]
    assert result["rss_kb"] < RSS_LIMIT_KB, f"peak RSS {result['rss_kb'] // 1024} MB"
    s = stats(tmp_path / "out")["train"]
    assert s["reasons"]["failed"]["image_too_large"] == 1
    big = next(f for f in failures(tmp_path / "out") if f["reason"] == "image_too_large")
    assert big["message"].startswith(f"dataset_shard_1.tar.zst:pmc_oa/images/{target}: {BOMB} bytes")


def test_garbage_after_the_end_of_a_shard_is_not_read_whole(mt_raw, tmp_path):
    raw = mt_copy(mt_raw, tmp_path, ("25M_full", "25M_accessible"))
    shard = raw / "25M_accessible" / "dataset_shard_2.tar.zst"
    with open(shard, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        tar = r.read()
    with open(shard, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as zw:
        zw.write(tar)
        for _ in range(BOMB >> 24):
            zw.write(bytes(1 << 24))
    result = build_measured("medtrinity", raw, tmp_path / "out")
    assert result["rc"] == 0, result["err"]
    assert result["rss_kb"] < RSS_LIMIT_KB, f"peak RSS {result['rss_kb'] // 1024} MB"
    s = stats(tmp_path / "out")["train"]
    assert (s["input_rows"], s["written"]) == (12, 9)  # as the undamaged sample


def test_a_truncated_full_parquet_is_one_line(mt_raw, tmp_path):
    raw = mt_copy(mt_raw, tmp_path, ("25M_full", "25M_accessible"))
    path = sorted((raw / "25M_full").glob("*.parquet"))[0]
    path.write_bytes(path.read_bytes()[:100])
    proc = run_cli("build", "medtrinity", "--raw", raw, "--out", tmp_path / "out")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and path.name in lines[0] and "parquet" in lines[0]
