"""WIT builder: the sample (gzipped TSVs served from 127.0.0.1) built in both formats, exact values and
accounting, the plain datasets/webdataset round trip, worker-count determinism, bad input."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

import vldata
from builders.wit import COLUMNS, choose_caption, strip_language_label
from builders.wit.sample import write_sample
from conftest import run_cli, shard_hashes, read_without_vldata
from vldata.ingest import loopback
from vldata.tools.validate import validate

FETCH = {"threads": 8, "per_host": 8, "read_timeout": 2, "connect_timeout": 2, "retries": 0}
# for the tests' own servers on 127.0.0.1 (a sample's server is exposed by its build, without a setting)
LOCAL_FETCH = {**FETCH, "allow_private": True}
SHARDS = {"parquet": 20_000, "webdataset": 30_000}


def parquet_rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(sorted((out / "parquet" / "data").glob("*.parquet")))
    return {r["key"]: r for r in table.to_pylist()}


def stats(out: Path) -> dict:
    return json.loads((out / "build" / "stats.json").read_text())["splits"]


def failures(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(out / "build" / "failures.parquet").to_pylist()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("wit_sample")
    raw, out = root / "raw", root / "out"
    write_sample(raw, n=12, seed=1)
    vldata.build("wit", raw, out, workers=2, shard_bytes=SHARDS, fetch=FETCH)
    return raw, out


# --------------------------------------------------------------------------------------------
# The sample: layout, accounting, exact values


def test_the_sample_has_the_real_layout(sample):
    raw, _ = sample
    names = sorted(p.name for p in raw.glob("*.tsv.gz"))
    assert names == ["wit_v1.test.all-00000-of-00001.tsv.gz", "wit_v1.train.all-00000-of-00002.tsv.gz",
                     "wit_v1.train.all-00001-of-00002.tsv.gz", "wit_v1.val.all-00000-of-00001.tsv.gz"]
    text = gzip.open(raw / names[1], "rt", encoding="utf-8").read()
    assert text.splitlines()[0] == "\t".join(COLUMNS)
    assert '"Logo del MGS\nen Galicia"' in text  # an embedded newline, quoted


def test_the_sample_accounting_is_exact(sample):
    _, out = sample
    s = stats(out)
    assert sorted(s) == ["test", "train", "val"]
    train = s["train"]
    assert (train["input_rows"], train["written"], train["failed"], train["filtered"], train["duplicates"]) == (24, 22, 1, 1, 0)
    assert train["reasons"]["failed"] == {"http_404": 1} and train["reasons"]["filtered"] == {"skip_mime_types": 1}
    for split in ("val", "test"):
        assert (s[split]["input_rows"], s[split]["written"]) == (3, 3)
    assert validate(out) == []
    f = failures(out)
    assert f["train_00000_000000004"]["reason"] == "http_404"
    assert f["train_00000_000000004"]["ref"] == "wit_v1.train.all-00000-of-00002.tsv.gz:4"
    svg = f["train_00000_000000003"]
    assert svg["outcome"] == "filtered" and svg["reason"] == "skip_mime_types"
    assert svg["message"].startswith("image/svg+xml is not rasterised: ") and svg["message"].endswith("Flag_of_Europe.svg")


def test_the_sample_field_values(sample):
    _, out = sample
    rows = parquet_rows(out)
    assert len(rows) == 28 and all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in rows)
    assert {r["split"] for r in rows.values()} == {"train", "val", "test"}
    assert "val_00000_000000002" in rows and "test_00000_000000000" in rows

    first = rows["train_00000_000000000"]
    assert first["text"] == "Logo del MGS\nen Galicia" and first["caption_source"] == "caption_reference_description"
    assert first["is_main_image"] is False and first["attribution_passes_lang_id"] is False
    assert first["page_changed_recently"] is True
    assert first["context_page_description"].endswith("símbolo de la unidad obrera y campesina.\n"
                                                      "El símbolo se usó en la Unión Soviética.")
    assert first["caption_attribution_description"] == "Galego: Logo do Movemento Galego ao Socialismo"
    assert first["license"] is None and first["extra_columns"] is None and first["section_title"] == "Emblemas"
    assert first["source_file"] == "wit_v1.train.all-00000-of-00002.tsv.gz" and first["source_row"] == 0
    assert first["image_info"]["format"] == "jpeg" and first["http_status"] == 200 and first["fetched_from"] == "http"

    na = rows["train_00000_000000001"]
    assert na["page_title"] == "NA" and na["text"] == "NA" and na["caption_source"] == "page_title"
    assert na["caption_reference_description"] == "" and na["section_title"] == "" and na["language"] == "en"

    bat = rows["train_00000_000000002"]
    assert bat["text"] == "Lesser bulldog bat (Noctilio albiventris)"
    assert bat["caption_source"] == "caption_attribution_description"
    assert bat["caption_attribution_description"] == "English: Lesser bulldog bat (Noctilio albiventris)"
    assert (bat["is_main_image"], bat["attribution_passes_lang_id"], bat["page_changed_recently"]) == (True, False, False)

    gif = rows["train_00000_000000005"]  # GIF policy: first frame re-encoded to PNG
    assert gif["mime_type"] == "image/gif" and gif["image_info"]["format"] == "png"
    assert gif["text"] == "Le phare" and gif["caption_source"] == "caption_alt_text_description"

    tg = rows["train_00000_000000006"]
    assert tg["language"] == "tg" and tg["page_title"] == "Душанбе" and tg["text"] == "Дом правительства"
    assert "%D0%94" in tg["image_url"]  # percent-encoded non-ASCII file name, served and decoded

    again = rows["train_00000_000000007"]  # the same image on another page
    assert again["image_url"] == first["image_url"] and again["image"]["bytes"] == first["image"]["bytes"]
    assert again["text"] == "Logo do MGS"  # attribution "Galego: Logo do MGS"
    for r in rows.values():
        img = PILImage.open(io.BytesIO(r["image"]["bytes"]))
        assert img.size == (r["image_info"]["width"], r["image_info"]["height"])
        assert (r["original_width"], r["original_height"]) == img.size  # the sample's metadata is truthful


READER = textwrap.dedent('''
    import json, sys, re, glob
    import datasets, webdataset
    out = sys.argv[1]
    result = {}
    for name in ("parquet", "webdataset"):
        dd = datasets.load_dataset(out + "/" + name)
        rows = {}
        for split in dd:
            for r in dd[split]:
                if name == "parquet":
                    rows[r["key"]] = {"image": r["image"].size, "text": r["text"], "main": r["is_main_image"],
                                      "title": r["page_title"], "split": split}
                else:
                    img = r.get("jpg") or r.get("png") or r.get("webp")
                    rows[r["__key__"]] = {"image": img.size, "text": r["txt"], "main": r["json"]["is_main_image"],
                                          "title": r["json"]["page_title"], "split": split}
        result[name] = rows
    samples = list(webdataset.WebDataset(sorted(glob.glob(out + "/webdataset/*.tar")), shardshuffle=False))
    result["wds"] = {"keys": sorted(s["__key__"] for s in samples),
                     "texts": {s["__key__"]: s["txt"].decode() for s in samples},
                     "one_image": all(sum(e in s for e in ("jpg", "png", "webp")) == 1 and "json" in s for s in samples)}
    result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("vldata", "builders"))
    print(json.dumps(result))
''')


def test_plain_datasets_and_webdataset_read_a_wit_build(sample):
    _, out = sample
    result = read_without_vldata(READER, out)
    expected = parquet_rows(out)
    for name in ("parquet", "webdataset"):
        rows = result[name]
        assert sorted(rows) == sorted(expected)
        first, na = rows["train_00000_000000000"], rows["train_00000_000000001"]
        assert first["text"] == "Logo del MGS\nen Galicia" and first["main"] is False and first["split"] == "train"
        assert na["title"] == "NA" and na["text"] == "NA"
        assert rows["val_00000_000000000"]["split"] == "val" and all(w > 0 for w, _ in (r["image"] for r in rows.values()))
    w = result["wds"]
    assert w["keys"] == sorted(expected) and w["one_image"]
    assert w["texts"]["train_00000_000000000"] == "Logo del MGS\nen Galicia"


def test_workers_do_not_change_shards(sample, tmp_path):
    raw, out = sample
    vldata.build("wit", raw, tmp_path / "w1", workers=1, shard_bytes=SHARDS, fetch=FETCH)
    assert shard_hashes(tmp_path / "w1") == shard_hashes(out) and len(shard_hashes(out)) > 2


def test_cli_sample_then_build(tmp_path):
    run_cli("sample", "wit", tmp_path / "raw", "--n", "8", check=True)
    proc = run_cli("build", "wit", "--raw", tmp_path / "raw", "--out", tmp_path / "out", "--format", "parquet",
                   "--set", "rows_per_partition=3")
    assert proc.returncode == 0, proc.stderr
    s = stats(tmp_path / "out")
    assert s["train"]["written"] == 14 and s["train"]["reasons"]["failed"] == {"http_404": 1}


# --------------------------------------------------------------------------------------------
# Captions


@pytest.mark.parametrize("given,expected", [
    ("English: Lesser bulldog bat", "Lesser bulldog bat"),
    ("Русский: Банкнота 1 гривна", "Банкнота 1 гривна"),
    ("Norsk bokmål: Et fyr", "Et fyr"),
    ("中文（简体）\u200e: 灯塔", "灯塔"),
    ("A lighthouse at dusk", "A lighthouse at dusk"),
    ("English:", "English:"),  # nothing after the label: unchanged
    ("1903: the first flight", "1903: the first flight"),
])
def test_language_labels_are_stripped(given, expected):
    assert strip_language_label(given) == expected


def test_caption_order():
    blank = dict.fromkeys(COLUMNS, "")
    assert choose_caption({**blank, "page_title": "T", "caption_attribution_description": "English: a",
                           "caption_alt_text_description": "b", "caption_reference_description": "c"}) == \
        ("c", "caption_reference_description")
    assert choose_caption({**blank, "page_title": "T", "caption_attribution_description": "English: a",
                           "caption_alt_text_description": " "}) == ("a", "caption_attribution_description")
    assert choose_caption({**blank, "page_title": "NA"}) == ("NA", "page_title")
    assert choose_caption(blank) == ("", "none")


# --------------------------------------------------------------------------------------------
# Bad input


def wit_row(url: str, **over: str) -> dict[str, str]:
    row = dict.fromkeys(COLUMNS, "")
    row.update(language="en", page_url="https://en.wikipedia.org/wiki/X", image_url=url, page_title="X",
               mime_type="image/png", original_height="8", original_width="8", is_main_image="true",
               attribution_passes_lang_id="false", page_changed_recently="false")
    row.update(over)
    return row


def write_tsv(path: Path, rows: list[dict | list], header: tuple[str, ...] = COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([r.get(c, "") for c in header] if isinstance(r, dict) else r)


def test_a_missing_column_stops_the_build_before_work(tmp_path):
    header = tuple(c for c in COLUMNS if c != "is_main_image")
    write_tsv(tmp_path / "raw" / "wit_v1.val.all-00000-of-00005.tsv", [wit_row("http://127.0.0.1:9/a.png")], header)
    proc = run_cli("build", "wit", "--raw", tmp_path / "raw", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "wit_v1.val.all-00000-of-00005.tsv" in proc.stderr and "missing required column 'is_main_image'" in proc.stderr
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("*.tar"))
    (tmp_path / "nothing").mkdir()
    proc = run_cli("build", "wit", "--raw", tmp_path / "nothing", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "no WIT files" in proc.stderr


def test_malformed_rows_are_counted_failures_in_a_plain_tsv(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    (site / "a.png").write_bytes(buf.getvalue())
    raw = tmp_path / "raw"
    with loopback.serve(site) as base:
        good = f"{base}/a.png"
        write_tsv(raw / "wit_v1.test.all-00003-of-00005.tsv", [
            wit_row(good, context_page_description="two\nlines"),
            wit_row(good, is_main_image="False"),  # not the lowercase true/false WIT writes
            wit_row(good, original_width="12.5"),
            ["en", "https://en.wikipedia.org/wiki/Short", good],  # too few fields
            wit_row("", page_title="no url"),
            wit_row(good, original_height="", original_width=""),
        ])
        report = vldata.build("wit", raw, tmp_path / "out", formats="parquet", fetch=LOCAL_FETCH)
    s = report.splits["test"]
    assert (s.input_rows, s.written, s.failed) == (6, 2, 4)
    assert s.reasons["failed"] == {"malformed_value": 2, "malformed_row": 1, "url_missing": 1}
    f = failures(tmp_path / "out")
    assert "is_main_image: expected true or false, got 'False'" in f["test_00003_000000001"]["message"]
    assert f["test_00003_000000003"]["message"] == "3 fields, the header has 17"
    rows = parquet_rows(tmp_path / "out")
    assert rows["test_00003_000000000"]["context_page_description"] == "two\nlines"
    assert rows["test_00003_000000005"]["original_height"] is None


def test_the_1percent_sample_is_skipped_next_to_full_train_files(tmp_path):
    raw = tmp_path / "raw"
    svg = wit_row("http://127.0.0.1:9/x.svg", mime_type="image/svg+xml")  # filtered: no server needed
    write_tsv(raw / "wit_v1.train.all-00000-of-00010.tsv", [svg])
    write_tsv(raw / "wit_v1.train.all-1percent_sample.tsv", [svg, svg])
    report = vldata.build("wit", raw, tmp_path / "out", formats="parquet")
    assert report.splits["train"].input_rows == 1
    assert stats(tmp_path / "out")["train"]["notes"] == {"skipped_1percent_sample": 1}
    (raw / "wit_v1.train.all-00000-of-00010.tsv").unlink()
    report = vldata.build("wit", raw, tmp_path / "out2", formats="parquet")
    assert report.splits["train"].input_rows == 2
    assert sorted(failures(tmp_path / "out2")) == ["train_1pct_000000000", "train_1pct_000000001"]


def test_an_image_on_several_pages_is_downloaded_once_per_partition(tmp_path):
    from fakes.http_server import ImageServer

    raw = tmp_path / "raw"
    with ImageServer() as server:
        shared, other = server.url("/img/a.jpg"), server.url("/img/b.png")
        rows = [wit_row(shared, page_title=f"P{i}", mime_type="image/jpeg") for i in range(3)] + [wit_row(other)]
        write_tsv(raw / "wit_v1.train.all-00000-of-00001.tsv", rows[:2] + [rows[3], rows[2]])
        report = vldata.build("wit", raw, tmp_path / "out", formats="parquet", fetch=LOCAL_FETCH)
        assert report.splits["train"].written == 4 and server.hits["/img/a.jpg"] == 1
        vldata.build("wit", raw, tmp_path / "out2", formats="parquet", fetch=LOCAL_FETCH, rows_per_partition=2)
        assert server.hits["/img/a.jpg"] == 3  # partitions are independent: once in each
    written = parquet_rows(tmp_path / "out")
    assert [written[f"train_00000_{i:09d}"]["page_title"] for i in range(4)] == ["P0", "P1", "X", "P2"]
    assert written["train_00000_000000003"]["image"]["bytes"] == server.images["a.jpg"]


def test_a_truncated_download_keeps_its_rows_and_is_noted(tmp_path):
    raw = tmp_path / "raw"
    write_sample(raw, n=10, seed=2)
    path = raw / "wit_v1.val.all-00000-of-00001.tsv.gz"
    path.write_bytes(path.read_bytes()[:-40])  # cuts into the last row: the rows before it stand
    proc = run_cli("build", "wit", "--raw", raw, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    val = stats(tmp_path / "out")["val"]
    assert (val["input_rows"], val["written"]) == (2, 2)
    assert val["notes"] == {"truncated_file:wit_v1.val.all-00000-of-00001.tsv.gz": 1}
