"""Arboretum builder: the sample over a loopback server (exact accounting, the ten text members with
the arbor_process templates, sniffed formats), the plain datasets/webdataset round trip, determinism
across workers, structural errors, malformed rows, local images and rare/cap balancing by
scientificName. Network: only the 127.0.0.1 server the sample starts."""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

import vldata
from builders.arboretum import TEXT_TYPES
from builders.arboretum.sample import SCHEMA, write_sample
from conftest import run_cli, shard_hashes, read_without_vldata
from vldata.tools.validate import validate

SHARDS = {"parquet": 20_000, "webdataset": 30_000}

STEATODA = {  # docs/RAW_FORMATS.md §5.2, real arbor_process output for photo 22295
    "com": "a photo of False Black Widow.",
    "common_name": "False Black Widow.",
    "sci": "a photo of Steatoda grossa.",
    "sci_com": "a photo of Steatoda grossa with common name False Black Widow.",
    "scientific_name": "Steatoda grossa.",
    "taxon": "a photo of Animalia Arthropoda Arachnida Araneae Theridiidae Steatoda grossa.",
    "taxonTag": "a photo of kingdom Animalia phylum Arthropoda class Arachnida order Araneae family Theridiidae "
                "genus Steatoda species grossa.",
    "taxonTag_com": "a photo of kingdom Animalia phylum Arthropoda class Arachnida order Araneae family Theridiidae "
                    "genus Steatoda species grossa with common name False Black Widow.",
    "taxon_com": "a photo of Animalia Arthropoda Arachnida Araneae Theridiidae Steatoda grossa with common name "
                 "False Black Widow.",
    "taxonomic_name": "Animalia Arthropoda Arachnida Araneae Theridiidae Steatoda grossa.",
}


def stats(out: Path) -> dict:
    return json.loads((out / "build" / "stats.json").read_text())["splits"]["train"]


def parquet_rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(sorted((out / "parquet" / "data").glob("*.parquet")))
    return {r["key"]: r for r in table.to_pylist()}


def tar_members(out: Path) -> dict[str, bytes]:
    members = {}
    for tar in sorted((out / "webdataset").glob("*.tar")):
        with tarfile.open(tar) as t:
            members.update({m.name: t.extractfile(m).read() for m in t})
    return members


def jpeg(color: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (24, 16), color).save(buf, format=fmt)
    return buf.getvalue()


def row(photo_id, sci="Steatoda grossa", genus="Steatoda", species="grossa", common="False Black Widow",
        url="http://127.0.0.1:9/none.jpg") -> dict:
    return {"photo_id": photo_id, "scientificName": sci, "kingdom": "Animalia", "phylum": "Arthropoda",
            "class": "Arachnida", "order": "Araneae", "family": "Theridiidae", "genus": genus, "species": species,
            "common_name": common, "photo_url": url}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("arboretum") / "raw"
    write_sample(raw, n=24, seed=3)
    return raw


@pytest.fixture(scope="module")
def built(sample) -> Path:
    out = sample.parent / "out2"
    vldata.build("arboretum", sample, out, workers=2, shard_bytes=SHARDS, rows_per_partition=5)
    return out


# --------------------------------------------------------------------------------------------
# The sample


def test_the_sample_builds_with_exact_accounting(sample, built):
    rows = pq.read_table(sorted(sample.glob("chunk_*.parquet"))).to_pylist()
    assert [p.name for p in sorted(sample.glob("*.parquet"))] == ["chunk_0_1000_1.parquet", "chunk_0_1000_2.parquet"]
    assert pq.read_schema(sample / "chunk_0_1000_1.parquet").names == SCHEMA.names
    s = stats(built)
    deleted = sum(i % 11 == 9 for i in range(24))
    pages = sum(i % 11 == 5 for i in range(24))
    assert s["input_rows"] == 24 == s["written"] + s["failed"] and s["filtered"] == s["duplicates"] == 0
    assert s["reasons"]["failed"] == {"http_404": deleted, "not_an_image": pages}
    assert validate(built) == []
    out = parquet_rows(built)
    assert sorted(out) == sorted(str(r["photo_id"]) for i, r in enumerate(rows) if i % 11 not in (5, 9))
    # the format is sniffed: a PNG behind a .jpg URL is a png, whatever the extension says
    lying = [r for r in out.values() if r["photo_url"].endswith(".jpg") and r["image_info"]["format"] == "png"]
    assert lying
    assert {r["image_info"]["format"] for r in out.values()} == {"jpeg", "png"}
    # the epithet stays an epithet; two genera share 'grossa' and stay two classes
    grossa = {r["scientific_name"] for r in out.values() if r["species_epithet"] == "grossa"}
    assert grossa == {"Steatoda grossa", "Eurema grossa"}
    manifest = json.loads((built / "parquet" / "vldata.json").read_text())
    assert manifest["splits"]["train"]["num_samples"] == s["written"]
    values = pq.read_table(built / "parquet" / "values" / "train.parquet")
    assert values.column_names == ["scientific_name"] and values.num_rows == s["written"]


def test_the_ten_text_members_have_the_arbor_process_templates(built):
    members = tar_members(built)
    out = parquet_rows(built)
    key = next(k for k, r in out.items() if r["scientific_name"] == "Steatoda grossa")
    for text_type, expected in STEATODA.items():
        assert members[f"{key}.{text_type.lower()}.txt"].decode() == expected, text_type
        assert out[key][f"text_{text_type}"] == expected
    assert members[f"{key}.txt"].decode() == STEATODA["taxon"] == out[key]["text"]
    # a missing common name follows the stated fallback, never "None"
    key = next(k for k, r in out.items() if r["scientific_name"] == "Eurema grossa")
    assert out[key]["common_name"] is None
    assert members[f"{key}.com.txt"] == b"a photo of Eurema grossa."
    assert members[f"{key}.common_name.txt"] == b"Eurema grossa."
    assert members[f"{key}.sci_com.txt"] == b"a photo of Eurema grossa."
    assert members[f"{key}.taxon_com.txt"] == b"a photo of Animalia Arthropoda Insecta Lepidoptera Pieridae Eurema grossa."
    texts = [v for name, v in members.items() if name.endswith(".txt")]
    assert not any(b"None" in v or b"nan" in v for v in texts)
    key = next(k for k, r in out.items() if r["scientific_name"] == "Neoscona crucifera")
    assert members[f"{key}.sci_com.txt"] == "a photo of Neoscona crucifera with common name Hentz's Orbweaver.".encode()
    # every sample: one image, the main text, the ten text types and the json
    suffixes = {}
    for name in members:
        key, suffix = name.split(".", 1)
        suffixes.setdefault(key, set()).add(suffix)
    expected = {"txt", "json", *(f"{t.lower()}.txt" for t in TEXT_TYPES)}
    # the primary image is KEY.jpg, JPEG or PNG (one image column on the Hub); no suffix has a capital
    assert all(s - expected == {"jpg"} for s in suffixes.values())
    assert len(suffixes) == len(out)


READER = textwrap.dedent('''
    import json, sys, glob
    import datasets, webdataset
    out = sys.argv[1]
    result = {}
    pq_rows = list(datasets.load_dataset(out + "/parquet")["train"])
    wds_rows = list(datasets.load_dataset(out + "/webdataset")["train"])
    result["parquet"] = {"n": len(pq_rows), "keys": sorted(r["key"] for r in pq_rows),
                         "sizes_ok": all(r["image"].size[0] > 0 for r in pq_rows),
                         "taxon": sorted(r["text_taxon"] for r in pq_rows)}
    result["hf_webdataset"] = {"n": len(wds_rows), "keys": sorted(r["__key__"] for r in wds_rows),
                               "taxon": sorted(r["taxon.txt"] for r in wds_rows),
                               "columns": sorted(wds_rows[0]),
                               "sizes_ok": all(r["jpg"].size[0] > 0 for r in wds_rows)}
    # how BioCLIP/Arboretum training reads it: an image and one --text_type member per sample
    tars = sorted(glob.glob(out + "/webdataset/*.tar"))
    pairs = list(webdataset.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("jpg;png", "taxon.txt", "__key__"))
    samples = list(webdataset.WebDataset(tars, shardshuffle=False))
    result["wds"] = {"n": len(pairs), "keys": sorted(k for _, _, k in pairs), "taxon": sorted(t for _, t, _ in pairs),
                     "members": sorted({k for s in samples for k in s if not k.startswith("__")}),
                     "json_ok": all(json.loads(s["json"])["photo_id"] == int(s["__key__"]) for s in samples)}
    result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("vldata", "builders"))
    print(json.dumps(result))
''')


def test_plain_datasets_and_webdataset_read_an_arboretum_build(built):
    result = read_without_vldata(READER, built)
    rows = parquet_rows(built)
    keys, taxon = sorted(rows), sorted(r["text_taxon"] for r in rows.values())
    for name in ("parquet", "hf_webdataset", "wds"):
        assert result[name]["n"] == len(keys) and result[name]["keys"] == keys and result[name]["taxon"] == taxon
    assert result["parquet"]["sizes_ok"] and result["hf_webdataset"]["sizes_ok"] and result["wds"]["json_ok"]
    # the members as written (lower case: taxontag.txt), the PNG photos too under KEY.jpg
    members = sorted({"jpg", "txt", "json", *(f"{t.lower()}.txt" for t in TEXT_TYPES)})
    assert result["wds"]["members"] == members
    assert result["hf_webdataset"]["columns"] == sorted(["__key__", "__url__", *members])


def test_workers_do_not_change_the_shards(sample, built, tmp_path):
    one = tmp_path / "one"
    vldata.build("arboretum", sample, one, workers=1, shard_bytes=SHARDS, rows_per_partition=5)
    hashes = shard_hashes(one)
    assert len(hashes) > 2 and hashes == shard_hashes(built)


# --------------------------------------------------------------------------------------------
# Structure and malformed rows (no network: images from a local folder)


def test_a_missing_required_column_stops_the_build_in_one_line(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [{k: v for k, v in row(1).items() if k != "scientificName"}]
    pq.write_table(pa.Table.from_pylist(rows), raw / "chunk_0.parquet")
    proc = run_cli("build", "arboretum", "--raw", raw, "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "chunk_0.parquet" in proc.stderr and "missing column scientificName" in proc.stderr
    assert not (tmp_path / "out" / "parquet").exists()


def test_malformed_rows_are_counted_failures_and_local_images_are_read(tmp_path):
    raw, images = tmp_path / "raw", tmp_path / "imgs"
    rows = [row(11), row(None), row(12, sci=" "), row(13, url=None), row(14, common=None), row(15), row(16)]
    schema = pa.schema(list(SCHEMA) + [("taxonRank", pa.string()), ("license", pa.string())])
    for r in rows:
        r.update(taxonRank="species", license="cc-by-nc")
    raw.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), raw / "processed_chunks_0001.parquet", row_group_size=3)
    (images / "processed_chunks_0001").mkdir(parents=True)
    for pid in (11, 12, 13, 14):  # arbor_process GetImages layout: <dir>/<chunk stem>/<photo_id>.jpg
        (images / "processed_chunks_0001" / f"{pid}.jpg").write_bytes(jpeg((pid, 0, 0)))
    (images / "15.jpg").write_bytes(jpeg((0, 0, 15), "PNG"))  # flat layout, a PNG named .jpg
    out = tmp_path / "out"
    vldata.build("arboretum", raw, out, images_dir=str(images))
    s = stats(out)
    assert s["input_rows"] == 7 == s["written"] + s["failed"]
    assert s["reasons"]["failed"] == {"invalid_photo_id": 1, "missing_scientific_name": 1, "image_missing": 1}
    failures = pq.read_table(out / "build" / "failures.parquet").to_pylist()
    assert {(f["key"], f["reason"]) for f in failures} == {
        ("processed_chunks_0001_row1", "invalid_photo_id"), ("12", "missing_scientific_name"), ("16", "image_missing")}
    assert {f["ref"] for f in failures} == {f"processed_chunks_0001.parquet:{i}" for i in (1, 2, 6)}  # 3 row groups
    out_rows = parquet_rows(out)
    assert sorted(out_rows) == ["11", "13", "14", "15"]
    assert out_rows["15"]["image_info"]["format"] == "png" and out_rows["13"]["photo_url"] == ""
    assert out_rows["11"]["taxon_rank"] == "species" and out_rows["11"]["license"] == "cc-by-nc"
    assert out_rows["11"]["chunk"] == "processed_chunks_0001" and out_rows["11"]["class_"] == "Arachnida"
    assert out_rows["14"]["text_sci_com"] == "a photo of Steatoda grossa."
    assert validate(out) == []


def test_rare_and_cap_are_keyed_by_scientific_name(tmp_path):
    raw, images = tmp_path / "raw", tmp_path / "imgs"
    raw.mkdir()
    images.mkdir()
    # 'grossa' is one epithet of two species: counted by epithet it would be 5 rows, neither rare
    rows = ([row(100 + i) for i in range(4)] + [row(200, sci="Eurema grossa", genus="Eurema")]
            + [row(300 + i, sci="Quercus alba", genus="Quercus", species="alba") for i in range(2)])
    rows = [rows[i] for i in (0, 4, 5, 1, 2, 6, 3)]  # interleaved, so the cap crosses partitions
    for i, chunk in enumerate((rows[:4], rows[4:])):
        pq.write_table(pa.Table.from_pylist(chunk, schema=SCHEMA), raw / f"chunk_{i}.parquet", row_group_size=3)
    for r in rows:
        (images / f"{r['photo_id']}.jpg").write_bytes(jpeg((r["photo_id"] % 256, 1, 2)))
    settings = {"images_dir": str(images), "rare_threshold": 2, "cap_threshold": 2, "rows_per_partition": 2}
    vldata.build("arboretum", raw, tmp_path / "a", workers=1, **settings)
    vldata.build("arboretum", raw, tmp_path / "b", workers=2, **settings)
    s = stats(tmp_path / "a")
    assert s["input_rows"] == 7 and s["reasons"]["filtered"] == {"rare_threshold": 1, "cap_threshold": 2}
    # the first cap_threshold rows of a species in input order are kept, exactly
    assert sorted(parquet_rows(tmp_path / "a")) == ["100", "101", "300", "301"]
    assert shard_hashes(tmp_path / "a") == shard_hashes(tmp_path / "b")
    counts = json.loads((tmp_path / "a" / "parquet" / "vldata.json").read_text())
    assert "Steatoda grossa" in json.dumps(counts)


def test_cli_sample_then_build_serves_the_sample(tmp_path):
    run_cli("sample", "arboretum", tmp_path / "raw", "--n", "6", check=True)
    proc = run_cli("build", "arboretum", "--raw", tmp_path / "raw", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    s = stats(tmp_path / "out")
    assert s["input_rows"] == 6 == s["written"] + s["failed"] and "connection_error" not in s["reasons"]["failed"]
