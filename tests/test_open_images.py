"""Open Images builder on generated raw files in the real layout: exact values (negatives stay negative,
box order, display names from both class-file variants, ids with leading zeros, text template, narratives),
the class and hierarchy side tables, exact accounting, plain readers, determinism across workers, where
the spill goes, and bad input."""

from __future__ import annotations

import csv
import json
import shutil
import hashlib
import tempfile
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import vldata
from builders.open_images.sample import LEADING_ZEROS_ID, ORPHAN_NARRATIVE_ID, write_sample
from conftest import run_cli, shard_hashes, read_without_vldata


def small(spill: Path) -> list[str]:
    return ["--parquet-shard-size", "8KB", "--tar-shard-size", "8KB", "--set", "prefix_chars=1",
            "--set", f"spill_dir={spill}"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("oi_raw")
    write_sample(raw, n=12, seed=0)
    return raw


@pytest.fixture(scope="module")
def spill(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("oi_spill")


@pytest.fixture(scope="module")
def built(raw, spill, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oi_built") / "out"
    run_cli("build", "open_images", "--raw", raw, "--out", out, *small(spill), check=True)
    return out


def written(out: Path) -> dict[str, dict]:
    table = pq.read_table(sorted((out / "parquet" / "data").glob("*.parquet")))
    return {r["key"]: r for r in table.to_pylist()}


def test_accounting_is_exact(built):
    stats = json.loads((built / "build" / "stats.json").read_text())["splits"]
    assert list(stats) == ["train", "validation", "test"]
    tr, va, te = stats["train"], stats["validation"], stats["test"]
    assert (tr["input_rows"], tr["written"], tr["failed"]) == (6, 6, 0)
    assert (va["input_rows"], va["written"], va["failed"]) == (4, 2, 2)
    assert va["reasons"]["failed"] == {"bad_image_id": 1, "image_missing": 1}
    assert (te["input_rows"], te["written"], te["failed"]) == (4, 3, 1)
    assert te["reasons"]["failed"] == {"bad_rotation": 1}
    notes = {k: v for s in stats.values() for k, v in s["notes"].items()}
    assert notes == {"narratives_rows_without_image_info": 1}  # ORPHAN_NARRATIVE_ID
    for s in stats.values():
        assert s["input_rows"] == s["written"] + s["failed"] + s["filtered"] + s["duplicates"]
    failures = {f["reason"]: f for f in pq.read_table(built / "build" / "failures.parquet").to_pylist()}
    assert failures["bad_image_id"]["ref"].startswith("validation-images-with-rotation.csv:")
    assert failures["bad_rotation"]["message"] == "Rotation 'abc'"


def test_exact_values(raw, built):
    rows = written(built)
    r = rows[LEADING_ZEROS_ID]
    assert r["image_id"] == LEADING_ZEROS_ID and r["split"] == "train"
    assert r["image_source"] == f"train_0.tar.gz:train/{LEADING_ZEROS_ID}.jpg"
    human = {x["label"]: x for x in r["labels_human"]}
    # the Confidence 0 row is a verified negative: kept, confidence 0, not in the text
    assert human["/m/014j1m"] == {"label": "/m/014j1m", "display_name": "Apple", "source": "verification",
                                  "confidence": 0.0}
    assert "apple" not in r["text"]
    assert r["text"] == "a photo of dog, ball and grass" and r["text_template"] == "human_positive"
    assert [x["label"] for x in r["labels_machine"]] == ["/m/0k4j"]
    assert r["labels_machine"][0]["display_name"] == "Car"
    assert r["labels_machine"][0]["confidence"] == pytest.approx(0.7)
    box, box2 = r["boxes"]
    # file order XMin,XMax,YMin,YMax = 0.0125,0.195312,0.148438,0.5875
    assert [box[c] for c in ("xmin", "xmax", "ymin", "ymax")] == pytest.approx([0.0125, 0.195312, 0.148438, 0.5875])
    assert box["display_name"] == "Dog" and box["source"] == "xclick" and box["is_truncated"] == 1
    assert box["xclick"] == pytest.approx([0.148438, 0.0125, 0.059375, 0.195312, 0.148438, 0.357812, 0.5875, 0.325])
    assert (box2["is_truncated"], box2["is_depiction"], box2["is_inside"]) == (-1, -1, -1)
    assert box2["xclick"] == [-1.0] * 8  # activemil dummies kept as upstream
    rel = r["relationships"][0]
    assert rel["relationship"] == "is" and rel["label2"] == "/m/02gy9n" and rel["display_name2"] == "Transparent"
    assert r["masks"][0]["mask_index"] == 0 and len(r["mask_images"]) == 1
    assert r["points"][0]["label"] == "/m/0bt9lr" and r["points"][0]["yes_votes"] == 3
    assert r["title"] == 'Dog, "ball" & grass — Zürich'
    assert r["license"] == "https://creativecommons.org/licenses/by/2.0/"
    assert r["original_md5_b64"] == "0Sad+xMj2ttXM1U8meEJ0A=="
    # rotation: blank and nan become null, floats otherwise
    info = {row["ImageID"]: row["Rotation"] for row in csv.DictReader(open(raw / "train-images-boxable-with-rotation.csv"))}
    for iid, rot in info.items():
        assert rows[iid]["rotation"] == (None if rot in ("", "nan") else float(rot))
    assert {None, 0.0, 90.0} <= {rows[i]["rotation"] for i in info}
    # validation: no XClick columns; folder image; names from the headered V7 file (no header in boxable)
    val = [x for x in rows.values() if x["split"] == "validation"]
    assert val and all(b["xclick"] is None for x in val for b in x["boxes"])
    assert all(x["image_source"] == f"validation/{x['image_id']}.jpg" for x in val)
    for x in rows.values():
        assert len(x["key"]) == 16 and x["key"] == x["image_id"]


def test_class_files_with_and_without_header(tmp_path):
    raw = tmp_path / "raw"
    write_sample(raw, n=4, seed=1)
    (raw / "oidv7-class-descriptions.csv").unlink()  # only the headerless V4/V5 file remains
    (raw / "class-descriptions-boxable.csv").write_text('/m/0bt9lr,Dog\n/m/018xm,"Ball, round"\n')
    vldata.build("open_images", raw, tmp_path / "o1", formats="parquet", spill_dir=str(tmp_path / "s"))
    r = written(tmp_path / "o1")[LEADING_ZEROS_ID]
    assert r["text"] == "a photo of dog and ball, round"
    assert {x["label"]: x["display_name"] for x in r["labels_human"]}["/m/08t9c_"] is None
    (raw / "class-descriptions-boxable.csv").write_text("LabelName,DisplayName\n/m/0bt9lr,Dog\n")
    vldata.build("open_images", raw, tmp_path / "o2", formats="parquet", spill_dir=str(tmp_path / "s"))
    r = written(tmp_path / "o2")[LEADING_ZEROS_ID]
    assert r["text"] == "a photo of dog"


READER = textwrap.dedent('''
    import glob, hashlib, json, sys
    import datasets, webdataset
    out = sys.argv[1]
    result = {}
    for name in ("parquet", "webdataset"):
        dd = datasets.load_dataset(out + "/" + name)
        result[name] = {}
        for split in dd:
            rows = list(dd[split])
            if name == "parquet":
                result[name][split] = {r["key"]: [r["text"], list(r["image"].size)] for r in rows}
            else:
                result[name][split] = {r["__key__"]: [r["txt"], list(r["jpg"].size)] for r in rows}
    samples = list(webdataset.WebDataset(sorted(glob.glob(out + "/webdataset/*.tar")), shardshuffle=False))
    result["wds"] = {s["__key__"]: [hashlib.sha256(s["jpg"]).hexdigest(), json.loads(s["json"])["labels_human"]]
                     for s in samples}
    result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("vldata", "builders"))
    print(json.dumps(result))
''')


def test_plain_datasets_and_webdataset_read_it(built):
    result = read_without_vldata(READER, built)
    rows = written(built)
    for fmt in ("parquet", "webdataset"):
        assert sorted(result[fmt]) == ["test", "train", "validation"]
        got = {k: v for split in result[fmt].values() for k, v in split.items()}
        assert sorted(got) == sorted(rows)
        for key, (text, size) in got.items():
            assert text == rows[key]["text"]
            assert size == [rows[key]["image_info"]["width"], rows[key]["image_info"]["height"]]
    assert {k: v[0] for k, v in result["wds"].items()} == {k: r["image_info"]["sha256"] for k, r in rows.items()}
    neg = [x for x in result["wds"][LEADING_ZEROS_ID][1] if x["confidence"] == 0]
    assert [x["label"] for x in neg] == ["/m/014j1m"]


def test_workers_do_not_change_shards(raw, spill, built, tmp_path):
    run_cli("build", "open_images", "--raw", raw, "--out", tmp_path / "w2", "--workers", "2", *small(spill),
            check=True)
    one, two = shard_hashes(built), shard_hashes(tmp_path / "w2")
    assert len(one) > 4 and one == two


def test_spill_is_rebuilt_elsewhere_identically(raw, built, tmp_path):
    run_cli("build", "open_images", "--raw", raw, "--out", tmp_path / "o", *small(tmp_path / "fresh"), check=True)
    assert shard_hashes(built) == shard_hashes(tmp_path / "o")


def test_missing_image_info_file_is_structural(raw, tmp_path):
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    for p in copy.glob("*-images-*.csv"):
        p.unlink()
    proc = run_cli("build", "open_images", "--raw", copy, "--out", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "image-info file" in lines[0] and "not found" in lines[0]


@pytest.mark.parametrize("name,column", [("validation-images-with-rotation.csv", "ImageID"),
                                         ("oidv6-train-annotations-bbox.csv", "XMin"),
                                         ("train-annotations-human-imagelabels-boxable.csv", "Confidence"),
                                         ("oidv7-train-annotations-point-labels.csv", "ImageId")])
def test_missing_required_column_is_structural(raw, tmp_path, name, column):
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    path = copy / name
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    lines[0] = ",".join("Renamed" if h == column else h for h in header) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    proc = run_cli("build", "open_images", "--raw", copy, "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    expected = "ImageID" if column == "ImageId" else column
    assert f"missing required column '{expected}'" in proc.stderr and name in proc.stderr


def test_malformed_rows_are_counted(raw, tmp_path):
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    with open(copy / "test-images-with-rotation.csv", "a", encoding="utf-8") as f:
        f.write("0123456789abcdef,test,only,three\n")  # wrong column count
    with open(copy / "oidv6-train-annotations-bbox.csv", "a", encoding="utf-8") as f:
        f.write(f"{LEADING_ZEROS_ID},xclick,/m/0bt9lr,1,left,0.5,0.1,0.2,0,0,0,0,0\n")  # bad coordinate
    with open(copy / "open_images_test_localized_narratives.jsonl", "a", encoding="utf-8") as f:
        f.write('{"image_id": "0123456789abcdef", "caption": "cut short\n')  # not JSON: noted before grouping
        f.write(json.dumps({"image_id": LEADING_ZEROS_ID, "annotator_id": 7, "caption": "x", "timed_caption": [],
                            "traces": [{"x": 0.5}], "voice_recording": None}) + "\n")  # a trace is not a list
    report = vldata.build("open_images", copy, tmp_path / "out", formats="parquet", prefix_chars=1,
                          spill_dir=str(tmp_path / "s"))
    assert report.splits["test"].reasons["failed"] == {"bad_rotation": 1, "malformed_row": 1}
    assert report.splits["train"].notes["malformed_boxes_row"] == 1
    assert report.splits["train"].written == 6
    notes = {k: v for s in report.splits.values() for k, v in s.notes.items()}
    assert notes["malformed_narratives_row"] == 2
    r = written(tmp_path / "out")[LEADING_ZEROS_ID]
    assert len(r["boxes"]) == 2 and [n["annotator_id"] for n in r["narratives"]] == [10, 2]


def test_annotations_without_image_info_are_noted(raw, tmp_path):
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    with open(copy / "train-annotations-human-imagelabels-boxable.csv", "a", encoding="utf-8") as f:
        f.write("00000000000000aa,verification,/m/0bt9lr,1\n")
    report = vldata.build("open_images", copy, tmp_path / "out", formats="parquet", prefix_chars=1,
                          spill_dir=str(tmp_path / "s"))
    notes = {k: v for s in report.splits.values() for k, v in s.notes.items()}
    assert notes["human_rows_without_image_info"] == 1
    assert sum(s.written for s in report.splits.values()) == 11


def test_side_tables_are_exact_listed_and_valid(built):
    classes = {"/m/0bt9lr": ("Dog", True, True), "/m/018xm": ("Ball", True, True), "/m/08t9c_": ("Grass", True, True),
               "/m/01g317": ("Person", True, True), "/m/0k4j": ("Car", True, False),
               "/m/014j1m": ("Apple", False, True), "/m/02wvth": ('Fiat 500 "topolino"', False, False),
               "/m/03hgsf0": ("Lemon, lime and bitters", False, False), "/m/083wq": ("Wheel", False, False),
               "/m/0jbk": (None, False, True)}  # trainable, in no class-descriptions file
    expected_classes = [{"label": m, "display_name": d, "is_boxable": b, "is_trainable": t}
                        for m, (d, b, t) in sorted(classes.items())]
    # depth first in file order; the root Entity (/m/0bl9f) is in no class file
    expected_edges = [("/m/0bl9f", "/m/0bt9lr", "subcategory"), ("/m/0bl9f", "/m/018xm", "subcategory"),
                      ("/m/0bl9f", "/m/0k4j", "subcategory"), ("/m/0k4j", "/m/02wvth", "subcategory"),
                      ("/m/0k4j", "/m/083wq", "part"), ("/m/0bl9f", "/m/01g317", "subcategory")]
    for fmt in ("parquet", "webdataset"):
        folder = built / fmt
        assert pq.read_table(folder / "tables" / "classes.parquet").to_pylist() == expected_classes
        edges = pq.read_table(folder / "tables" / "hierarchy.parquet").to_pylist()
        assert [(e["parent"], e["child"], e["kind"]) for e in edges] == expected_edges
        listed = json.loads((folder / "vldata.json").read_text())["tables"]
        assert sorted(listed) == ["classes", "hierarchy"]
        for name, entry in listed.items():
            file = folder / entry["path"]
            assert entry["path"] == f"tables/{name}.parquet"
            assert entry["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
            assert entry["num_rows"] == pq.ParquetFile(file).metadata.num_rows
    proc = run_cli("validate", built)
    assert proc.returncode == 0, proc.stdout + proc.stderr


NARRATIVE_READER = textwrap.dedent('''
    import glob, json, sys
    import datasets, webdataset
    out, key = sys.argv[1], "''' + LEADING_ZEROS_ID + '''"
    files = sorted(glob.glob(out + "/parquet/data/*.parquet"))
    rows = [r for r in datasets.load_dataset("parquet", data_files=files, split="train") if r["key"] == key]
    samples = webdataset.WebDataset(sorted(glob.glob(out + "/webdataset/*.tar")), shardshuffle=False)
    members = [json.loads(s["json"]) for s in samples if s["__key__"] == key]
    result = {"parquet": [r["narratives"] for r in rows], "wds": [m["narratives"] for m in members]}
    result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("vldata", "builders"))
    print(json.dumps(result))
''')


def test_narratives_round_trip_exactly(raw, built):
    upstream = [json.loads(line) for f in sorted(raw.glob("*localized_narratives*.jsonl"))
                for line in f.read_text(encoding="utf-8").splitlines()]
    expected = [{"annotator_id": n["annotator_id"], "caption": n["caption"], "timed_caption": n["timed_caption"],
                 "traces": n["traces"], "voice_recording": n["voice_recording"]}
                for n in upstream if n["image_id"] == LEADING_ZEROS_ID]
    assert [n["annotator_id"] for n in expected] == [10, 2]  # two annotators, from two upstream files
    assert "\n" in expected[0]["caption"] and "ë" in expected[0]["caption"]
    result = read_without_vldata(NARRATIVE_READER, built)
    assert result["parquet"] == [expected] and result["wds"] == [expected]
    rows = written(built)
    assert ORPHAN_NARRATIVE_ID not in rows
    narrated = {k for k, r in rows.items() if r["narratives"]}
    assert {n["image_id"] for n in upstream} - {ORPHAN_NARRATIVE_ID} == narrated


@pytest.mark.parametrize("text", ['{"LabelName": "/m/0bl9f", "Subcategory": [',
                                  '{"LabelName": "/m/0bl9f", "Part": {"LabelName": "/m/0k4j"}}',
                                  '{"LabelName": "/m/0bl9f", "Subcategory": [{"Subcategory": []}]}',
                                  '[]'])
def test_malformed_hierarchy_is_structural(raw, tmp_path, text):
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    (copy / "bbox_labels_600_hierarchy.json").write_text(text)
    proc = run_cli("build", "open_images", "--raw", copy, "--out", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bbox_labels_600_hierarchy.json" in lines[0] and "malformed hierarchy JSON" in lines[0]
    assert not (tmp_path / "out").exists()  # stopped before any work, spill included


def test_spill_defaults_to_scratch_and_is_removed(raw, tmp_path, monkeypatch):
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    out = tmp_path / "out"
    run_cli("build", "open_images", "--raw", raw, "--out", out, "--set", "prefix_chars=1",
            env={"TMPDIR": str(system_tmp)}, check=True)
    assert not list(system_tmp.glob("vldata-open_images-*"))
    assert not list(out.rglob("vldata-open_images-*")) and not (out / "build" / "scratch").exists()
    # where partitions() puts it: the engine's scratch; spill_dir overrides; the temp dir outside the engine
    builder = vldata.get_builder("open_images", prefix_chars=1)
    builder.scratch = tmp_path / "scratch"
    spill = Path(builder.partitions(raw)[0].payload["spill"])
    assert spill.parent == tmp_path / "scratch" and (spill / "DONE").is_file()
    builder = vldata.get_builder("open_images", prefix_chars=1, spill_dir=str(tmp_path / "mine"))
    builder.scratch = tmp_path / "scratch"
    assert Path(builder.partitions(raw)[0].payload["spill"]).parent == tmp_path / "mine"
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    spill = Path(vldata.get_builder("open_images", prefix_chars=1).partitions(raw)[0].payload["spill"])
    assert spill.parent == system_tmp
