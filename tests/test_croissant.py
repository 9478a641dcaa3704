"""Croissant documents of built folders validate with mlcroissant, and mlcroissant can read them."""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path

import mlcroissant as mlc
import pytest

from fakes.toy import SPLITS, Toy, write_parquet, write_webdataset
from vldata.describe import card, schema
from vldata.describe.croissant import CONFORMS_TO, CONTEXT, croissant_document, validate_croissant


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(autouse=True)
def croissant_cache(tmp_path, monkeypatch):
    # mlcroissant extracts archives into ~/.cache/croissant/extract/sha256(contentUrl) and reuses that
    # folder: two datasets with the same relative tar name would share it, so each test gets its own
    from etils import epath
    from mlcroissant._src.core import constants
    from mlcroissant._src.operation_graph.operations import extract

    cache = epath.Path(tmp_path) / "croissant-cache"
    monkeypatch.setattr(extract, "EXTRACT_PATH", cache / "extract")
    monkeypatch.setattr(constants, "DOWNLOAD_PATH", cache / "download")


@pytest.fixture(scope="module")
def sheet() -> card.Datasheet:
    return card.load_datasheet(card.card_file("scin"))


def write_document(folder: Path, sheet: card.Datasheet, fmt: str, shards: dict) -> tuple[Path, dict]:
    doc = croissant_document(sheet, name="toy", version="1.0.0", fmt=fmt, record_type=Toy, shards=shards,
                             date_published="2024-03-19")
    path = folder / "croissant.json"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path, doc


def records(path: Path, record_set: str) -> list[dict]:
    return list(itertools.islice(mlc.Dataset(jsonld=path).records(record_set), 100))


def test_parquet_document_validates_and_reads_back(tmp_path, sheet):
    shards = write_parquet(tmp_path)
    path, doc = write_document(tmp_path, sheet, "parquet", shards)
    assert validate_croissant(path) == []
    assert validate_croissant(path, warnings=True) == []

    assert doc["conformsTo"] == CONFORMS_TO == "http://mlcommons.org/croissant/1.1"
    files = [d for d in doc["distribution"] if d["@type"] == "cr:FileObject"]
    assert [f["contentUrl"] for f in files] == [s[0]["path"] for s in shards.values()]
    assert {f["encodingFormat"] for f in files} == {"application/x-parquet"}
    assert [f["sha256"] for f in files] == [s[0]["sha256"] for s in shards.values()]
    assert [f["contentSize"] for f in files] == [f"{s[0]['num_bytes']} B" for s in shards.values()]

    rows = records(path, "default")
    assert len(rows) == sum(SPLITS.values())
    by_key = {r["default/key"].decode(): r for r in rows}
    one = by_key["train-1"]
    assert one["default/split"] == b"train"
    assert one["default/color"] == b"red" and one["default/count"] is None
    assert one["default/image"].size == (5, 3)  # decoded from the parquet image struct's bytes
    assert one["default/boxes"] == [{"default/boxes/label": b"b0", "default/boxes/score": 0.5}]
    assert by_key["test-0"]["default/split"] == b"test"


def test_webdataset_document_validates_and_members_read_back(tmp_path, sheet):
    shards = write_webdataset(tmp_path)
    path, doc = write_document(tmp_path, sheet, "webdataset", shards)
    assert validate_croissant(path) == []

    tars = [d for d in doc["distribution"] if d["@type"] == "cr:FileObject"]
    assert [t["contentUrl"] for t in tars] == ["train-000000.tar", "test-000000.tar"]
    assert {t["encodingFormat"] for t in tars} == {"application/x-tar"}
    member_sets = {d["@id"]: d for d in doc["distribution"] if d["@type"] == "cr:FileSet"}
    assert member_sets["json-members"]["includes"] == ["*.json"]
    assert member_sets["json-members"]["containedIn"] == [{"@id": t["@id"]} for t in tars]
    samples = next(rs for rs in doc["recordSet"] if rs["@id"] == "samples")
    assert [f["name"] for f in samples["field"]] == ["key", *schema.wds_json_features(Toy)]

    images = records(path, "images")
    assert sorted(r["images/key"].decode() for r in images) == sorted(
        f"{s}-{i}" for s in SPLITS for i in range(SPLITS[s]))
    assert {r["images/content"].size for r in images} >= {(4, 3), (6, 3)}
    texts = {r["texts/key"].decode(): r["texts/content"] for r in records(path, "texts")}
    assert texts["test-1"] == b"a test toy 1"


def test_rai_properties_come_from_the_datasheet(tmp_path, sheet):
    _, doc = write_document(tmp_path, sheet, "parquet", write_parquet(tmp_path))
    assert doc["license"] == sheet.license_link
    assert doc["citeAs"] == sheet.citation.strip()
    assert doc["rai:dataUseCases"] == [sheet.uses.intended.strip()]
    assert doc["rai:dataBiases"] == [sheet.uses.risks.strip()]
    assert sheet.uses.out_of_scope.strip() in doc["rai:dataLimitations"]
    assert sheet.collection_process.acquisition.strip() in doc["rai:dataCollection"]
    assert set(sheet.sensitive_data) <= set(doc["rai:personalSensitiveInformation"])
    assert doc["rai:dataCollectionRawData"] == sheet.preprocessing.raw_data.strip()
    assert doc["rai:dataAnnotationProtocol"] == [sheet.composition.labels.strip()]
    metadata = mlc.Dataset(jsonld=tmp_path / "croissant.json").metadata
    assert metadata.data_use_cases == doc["rai:dataUseCases"]
    assert metadata.personal_sensitive_information == doc["rai:personalSensitiveInformation"]
    assert metadata.data_annotation_protocol == doc["rai:dataAnnotationProtocol"]
    assert str(metadata.ctx.conforms_to.value) == CONFORMS_TO


def test_context_is_the_standard_croissant_1_1_context():
    from mlcroissant._src.core.context import Context, CroissantVersion
    from mlcroissant._src.core.rdf import make_context

    assert CONTEXT == make_context(Context(conforms_to=CroissantVersion.V_1_1))


def test_mlcroissant_cli_validates_documents_offline(tmp_path, sheet):
    import subprocess
    import sys

    cli = Path(sys.executable).with_name("mlcroissant")
    for fmt, writer in (("parquet", write_parquet), ("webdataset", write_webdataset)):
        folder = tmp_path / fmt
        path, _ = write_document(folder, sheet, fmt, writer(folder))
        proc = subprocess.run([str(cli), "validate", "--jsonld", str(path)], capture_output=True, text=True,
                              env={**os.environ, "NO_PROXY": "", "HTTPS_PROXY": "http://127.0.0.1:9",
                                   "HTTP_PROXY": "http://127.0.0.1:9"}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "error" not in proc.stderr.lower()


def test_mlcroissant_iterates_the_records_of_the_built_scin_parquet_folder(scin_built):
    import pyarrow.parquet as pq
    from PIL import Image

    folder = scin_built / "parquet"
    assert validate_croissant(folder / "croissant.json") == []
    manifest = json.loads((folder / "vldata.json").read_text())
    expected = {}
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            table = pq.read_table(folder / shard["path"], columns=["key", "text", "case_id"])
            expected.update({r["key"]: r for r in table.to_pylist()})
    rows = list(mlc.Dataset(jsonld=folder / "croissant.json").records("default"))
    assert len(rows) == sum(info["num_samples"] for info in manifest["splits"].values()) == len(expected)
    for row in rows:
        want = expected[row["default/key"].decode()]
        assert row["default/text"].decode() == want["text"]
        assert row["default/case_id"].decode() == want["case_id"]
        assert row["default/split"] == b"train"
        assert isinstance(row["default/image"], Image.Image) and min(row["default/image"].size) > 0
        assert all(isinstance(i["default/images/index"], int) for i in row["default/images"])


def test_broken_documents_report_issues(tmp_path, sheet):
    path, doc = write_document(tmp_path, sheet, "parquet", write_parquet(tmp_path))
    field = next(f for f in doc["recordSet"][0]["field"] if f["name"] == "color")
    del field["dataType"], field["source"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    issues = validate_croissant(path)
    assert issues and any("Field(color)" in i and "dataType" in i for i in issues)

    _, doc = write_document(tmp_path, sheet, "parquet", write_parquet(tmp_path))
    doc["recordSet"][0]["field"][0]["source"]["fileSet"]["@id"] = "no-such-files"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert any("no-such-files" in i for i in validate_croissant(path))

    path.write_text("{not json", encoding="utf-8")
    assert validate_croissant(path)
    assert validate_croissant(tmp_path / "missing.json") == [f"{tmp_path / 'missing.json'}: no such file"]
