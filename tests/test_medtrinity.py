"""MedTrinity-25M builder on generated raw files in both real layouts: the join with the streamed
.tar.zst shards, a truncated shard, exact values, plain readers, determinism and bad input."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from PIL import Image as PILImage

import vldata
from builders.medtrinity.sample import CAPTIONS, write_sample
from conftest import run_cli, shard_hashes, read_without_vldata

SMALL = ["--parquet-shard-size", "8KB", "--tar-shard-size", "12KB", "--set", "rows_per_partition=1"]
TRUNCATED = "dataset_shard_3.tar.zst"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("medtrinity_raw")
    write_sample(raw, n=12, seed=0)
    return raw


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("medtrinity_built") / "out"
    run_cli("build", "medtrinity", "--raw", raw, "--out", out, *SMALL, check=True)
    return out


def full_rows(raw: Path) -> list[dict]:
    return pq.read_table(sorted((raw / "25M_full").glob("*.parquet"))).to_pylist()


def shard_members(path: Path) -> dict[str, bytes]:
    """Readable members of a .tar.zst by basename, read independently of the builder."""
    members = {}
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        try:
            with tarfile.open(fileobj=r, mode="r|") as t:
                for m in t:
                    members[m.name.rsplit("/", 1)[-1]] = t.extractfile(m).read()
        except tarfile.ReadError:
            pass
    return members


def written(out: Path) -> dict[str, dict]:
    table = pq.read_table(sorted((out / "parquet" / "data").glob("*.parquet")))
    return {r["key"]: r for r in table.to_pylist()}


def test_sample_accounting_is_exact_and_the_truncated_shard_is_named(built):
    stats = json.loads((built / "build" / "stats.json").read_text())["splits"]
    train, demo = stats["train"], stats["demo"]
    # 12 full rows: one image in no shard, three in the truncated shard (its first member readable, the
    # second cut inside its data, the third lost with the tail)
    assert (train["input_rows"], train["written"], train["failed"]) == (12, 9, 3)
    assert train["reasons"]["failed"] == {"image_not_accessible": 2, "shard_truncated": 1}
    assert train["notes"] == {f"shard_truncated:{TRUNCATED}": 1}
    assert (demo["input_rows"], demo["written"], demo["failed"]) == (12, 12, 0)
    for s in (train, demo):
        assert s["input_rows"] == s["written"] + s["failed"] + s["filtered"] + s["duplicates"]
    failures = pq.read_table(built / "build" / "failures.parquet").to_pylist()
    cut = [f for f in failures if f["reason"] == "shard_truncated"]
    assert len(cut) == 1 and cut[0]["message"].startswith(f"{TRUNCATED}: truncated")
    lost = [f for f in failures if f["reason"] == "image_not_accessible"]
    assert all(TRUNCATED in f["message"] and f["ref"].startswith("25M_full/train-") for f in lost)


def test_joined_image_is_the_shard_file_byte_for_byte(raw, built):
    rows = written(built)
    members = {}
    for shard in sorted((raw / "25M_accessible").glob("*.tar.zst")):
        members.update(shard_members(shard))
    by_id = {r["id"]: r for r in full_rows(raw)}
    checked = 0
    for up in by_id.values():
        r = rows.get(up["id"])
        if r is None:
            continue
        data = members[up["file_name"]]
        assert r["subset"] == "25M_full" and r["file_name"] == up["file_name"] and r["source"] == up["source"]
        assert r["text"] == up["caption"] and r["image_member"].endswith("/" + up["file_name"])
        assert r["image_member"].count("/") == 4  # nested folders inside the shard
        assert json.loads(r["raw"]) == up
        assert r["roi_bbox"] is None and r["roi_mask"] is None and r["license"] is None
        if r["image_mode"] == "I;16":  # 16-bit becomes 8-bit under the image policy
            assert r["image"]["bytes"] != data
            assert PILImage.open(io.BytesIO(r["image"]["bytes"])).mode == "L"
        else:  # P, LA, L, RGB PNGs and the JPEG are kept as they are
            assert r["image"]["bytes"] == data
            assert r["image_info"]["sha256"] == hashlib.sha256(data).hexdigest()
            checked += 1
    assert checked >= 6
    assert {r["image_mode"] for r in rows.values()} >= {"P", "LA", "I;16", "RGB"}
    first = rows["0000000"]  # ids are digit strings with leading zeros, kept as strings
    assert first["id"] == "0000000" and first["source"] == "pmc_oa" and first["image_shard"] == "dataset_shard_1.tar.zst"
    assert first["text"] == CAPTIONS[0] and first["text"].startswith("The image is a non-contrast computed tomography")


def test_demo_rows_keep_the_embedded_image(raw, built):
    demo = pq.read_table(raw / "25M_demo").to_pylist()
    rows = written(built)
    for up in demo:
        r = rows[up["id"]]
        assert r["subset"] == "25M_demo" and r["text"] == up["caption"] and r["file_name"] is None
        assert json.loads(r["raw"]) == {"id": up["id"], "caption": up["caption"], "image": {"path": up["image"]["path"]}}
        if r["image_mode"] != "I;16":
            assert r["image"]["bytes"] == up["image"]["bytes"]


READER = textwrap.dedent('''
    import glob, hashlib, json, sys
    import datasets, webdataset
    out = sys.argv[1]
    result = {}
    pq_ds = datasets.load_dataset(out + "/parquet")
    wds_ds = datasets.load_dataset(out + "/webdataset")
    for name, dd in (("parquet", pq_ds), ("webdataset", wds_ds)):
        result[name] = {}
        for split in dd:
            rows = list(dd[split])
            if name == "parquet":
                result[name][split] = {r["key"]: [r["text"], r["image"].size, r["image_info"]["sha256"]] for r in rows}
            else:
                result[name][split] = {r["__key__"]: [r["json"]["text"] if "text" in r["json"] else r["txt"],
                                                      (r.get("png") or r.get("jpg")).size, None] for r in rows}
    samples = list(webdataset.WebDataset(sorted(glob.glob(out + "/webdataset/*.tar")), shardshuffle=False))
    result["wds"] = {s["__key__"]: hashlib.sha256(s.get("png") or s.get("jpg")).hexdigest() for s in samples}
    result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("vldata", "builders"))
    print(json.dumps(result))
''')


def test_plain_datasets_and_webdataset_read_both_splits(built):
    result = read_without_vldata(READER, built)
    rows = written(built)
    for fmt in ("parquet", "webdataset"):
        assert sorted(result[fmt]) == ["demo", "train"]
        assert len(result[fmt]["train"]) == 9 and len(result[fmt]["demo"]) == 12
        for split in ("train", "demo"):
            for key, (text, size, _) in result[fmt][split].items():
                assert text == rows[key]["text"]
                assert size == [rows[key]["image_info"]["width"], rows[key]["image_info"]["height"]]
    assert {k: v[2] for k, v in result["parquet"]["train"].items()} == {
        k: rows[k]["image_info"]["sha256"] for k in result["parquet"]["train"]}
    assert result["wds"] == {k: r["image_info"]["sha256"] for k, r in rows.items()}
    assert len(list((built / "parquet" / "data").glob("*.parquet"))) > 2  # several shards


def test_workers_do_not_change_shards(raw, built, tmp_path):
    run_cli("build", "medtrinity", "--raw", raw, "--out", tmp_path / "w2", "--workers", "2", *SMALL, check=True)
    one, two = shard_hashes(built), shard_hashes(tmp_path / "w2")
    assert len(one) > 4 and one == two


def test_either_layout_alone_builds_into_train(raw, tmp_path):
    demo_only, full_only = tmp_path / "demo", tmp_path / "full"
    shutil.copytree(raw / "25M_demo", demo_only / "25M_demo")
    for d in ("25M_full", "25M_accessible"):
        shutil.copytree(raw / d, full_only / d)
    report = vldata.build("medtrinity", demo_only, tmp_path / "o1", formats="parquet")
    assert list(report.splits) == ["train"] and report.splits["train"].written == 12
    report = vldata.build("medtrinity", full_only, tmp_path / "o2", formats="webdataset",
                          license="unknown", source_licenses={"pmc_oa": "cc-by-4.0"})
    assert list(report.splits) == ["train"] and report.splits["train"].written == 9
    meta = {}
    for tar in (tmp_path / "o2" / "webdataset").glob("*.tar"):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    doc = json.loads(t.extractfile(m).read())
                    meta[doc["source"]] = doc["license"]
    assert meta["pmc_oa"] == "cc-by-4.0" and meta["chexpert"] == "unknown"


def test_missing_accessible_folder_is_structural(raw, tmp_path):
    shutil.copytree(raw / "25M_full", tmp_path / "raw" / "25M_full")
    proc = run_cli("build", "medtrinity", "--raw", tmp_path / "raw", "--out", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "25M_accessible" in lines[0] and "not found" in lines[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))


@pytest.mark.parametrize("subset,column", [("25M_full", "file_name"), ("25M_full", "caption"), ("25M_demo", "image")])
def test_missing_required_column_is_structural(raw, tmp_path, subset, column):
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    path = sorted((copy / subset).glob("*.parquet"))[-1]
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([column]), path)
    proc = run_cli("build", "medtrinity", "--raw", copy, "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"missing required column '{column}'" in proc.stderr and path.name in proc.stderr


def test_empty_raw_folder_is_structural(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(vldata.StructuralError, match="25M_demo"):
        vldata.build("medtrinity", tmp_path / "raw", tmp_path / "out")


def test_shard_cut_between_members_is_still_reported(raw, tmp_path):
    """A download that stops exactly at a member boundary decodes as a shorter but valid-looking tar."""
    copy = tmp_path / "raw"
    for d in ("25M_full", "25M_accessible"):
        shutil.copytree(raw / d, copy / d)
    shard = copy / "25M_accessible" / "dataset_shard_1.tar.zst"
    with open(shard, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        tar = r.read()
    first = 512 + -(-int(tar[124:135], 8) // 512) * 512  # header + padded data of the first member
    shard.write_bytes(zstandard.ZstdCompressor().compress(tar[:first]))
    report = vldata.build("medtrinity", copy, tmp_path / "out", formats="parquet")
    s = report.splits["train"]
    assert s.notes["shard_truncated:dataset_shard_1.tar.zst"] == 1
    assert s.written == 6 and s.reasons["failed"]["image_not_accessible"] == 5


def test_ids_that_are_not_key_safe_get_a_hashed_key(tmp_path):
    raw = tmp_path / "raw"
    write_sample(raw, n=6, seed=1)
    shutil.rmtree(raw / "25M_full")
    shutil.rmtree(raw / "25M_accessible")
    path = raw / "25M_demo" / "train-00000-of-00001.parquet"
    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    ids[0] = "PMC123/fig 1.png"
    table = table.set_column(table.schema.get_field_index("id"), table.schema.field("id"), pa.array(ids, pa.string()))
    pq.write_table(table, path)
    vldata.build("medtrinity", raw, tmp_path / "out", formats="parquet")
    rows = {r["id"]: r for r in written(tmp_path / "out").values()}
    # hashed keys have their own namespace (a prefix), so a literal id can never equal one
    assert rows["PMC123/fig 1.png"]["key"] == "sha1-" + hashlib.sha1(b"PMC123/fig 1.png").hexdigest()[:16]
