"""LAION builder: column sets, filters, dedup, the misbehaving-server acceptance build, img2dataset
folders, the sample, and the plain datasets/webdataset round trip. Network: loopback servers only."""

from __future__ import annotations

import hashlib
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
from builders.laion import column_set
from builders.laion.sample import DATACOMP, LAION400M, write_sample
from conftest import run_cli, read_without_vldata
from fakes.audit import recording
from fakes.http_server import ImageServer, encode
from vldata.tools.validate import validate

# the test server listens on 127.0.0.1, which the fetcher refuses (blocked_address) unless told
FETCH = {"threads": 8, "per_host": 8, "read_timeout": 0.5, "connect_timeout": 2, "retries": 1, "backoff": 0.05,
         "max_retry_after": 5, "max_bytes": 1 << 20, "allow_private": True}

LAION2B_MULTI = pa.schema([("SAMPLE_ID", pa.int64()), ("URL", pa.string()), ("TEXT", pa.string()),
                           ("HEIGHT", pa.float64()), ("WIDTH", pa.float64()),  # float in some re-exports
                           ("LICENSE", pa.string()), ("LANGUAGE", pa.string()), ("NSFW", pa.string()),
                           ("similarity", pa.float64())])
JOINED = pa.schema([("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.int32()), ("HEIGHT", pa.int32()),
                    ("similarity", pa.float64()), ("hash", pa.int64()), ("punsafe", pa.float32()),
                    ("pwatermark", pa.float32()), ("LANGUAGE", pa.string())])


def laion_row(i: int, url: str | None, **over) -> dict:
    return {"SAMPLE_ID": 100 + i, "URL": url, "TEXT": f"caption {i}", "HEIGHT": 48, "WIDTH": 64, "LICENSE": "?",
            "NSFW": "UNLIKELY", "similarity": 0.31, **over}


def write(path: Path, rows: list[dict], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def parquet_rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(sorted((out / "parquet" / "data").glob("*.parquet")))
    return {r["key"]: r for r in table.to_pylist()}


def stats(out: Path) -> dict:
    return json.loads((out / "build" / "stats.json").read_text())["splits"]["train"]


@pytest.fixture()
def server():
    with ImageServer(slow_seconds=2.0) as srv:
        yield srv


# --------------------------------------------------------------------------------------------
# Acceptance: every way a download goes wrong, exact accounting, nothing read from the disk


def test_every_outcome_is_accounted_and_no_local_file_is_read(server, tmp_path):
    canary = tmp_path / "canary.jpg"
    canary.write_bytes(server.images["a.jpg"])  # a real image: reading it would succeed, visibly
    server.file_target = str(canary)
    copy = server.add("/img/copy.jpg", server.images["a.jpg"])  # the same bytes under another URL
    cases = [  # (url, expected outcome reason; None = written)
        (server.url("/img/a.jpg"), None), (server.url("/img/b.png"), None), (server.url("/img/c.webp"), None),
        (server.url("/flaky.jpg"), None), (server.url("/busy.jpg"), None), (server.url("/redirect.jpg"), None),
        (server.url("/missing.jpg"), "http_404"), (server.url("/always-500.jpg"), "http_5xx_exhausted"),
        (server.url("/slow.jpg"), "timeout"), (server.url("/page.jpg"), "not_an_image"),
        (server.url("/truncated.jpg"), "image_corrupt"), (server.url("/huge.jpg"), "too_large"),
        (server.url("/loop-a.jpg"), "redirect_loop"), (server.url("/noai.jpg"), "opted_out"),
        (server.url("/to-file.jpg"), "unsupported_scheme"), ("file:///etc/passwd", "unsupported_scheme"),
        (f"file://{canary}", "unsupported_scheme"), ("ftp://127.0.0.1/img/a.jpg", "unsupported_scheme"),
        (None, "url_missing"), (server.url("/img/a.jpg"), "duplicate_url"), (copy, "duplicate_image"),
    ]
    raw = tmp_path / "raw"
    write(raw / "part-00000-5b54c5d5-bbcf-484d-a2ce-0d6f73df1a36-c000.snappy.parquet",
          [laion_row(i, url) for i, (url, _) in enumerate(cases)], LAION400M)
    out = tmp_path / "out"
    with recording() as events:
        report = vldata.build("laion", raw, out, fetch=FETCH)
    touched = [target for _, target in events]
    assert str(canary) not in touched and "/etc/passwd" not in touched

    s = stats(out)
    assert s["input_rows"] == len(cases) == s["written"] + s["failed"] + s["filtered"] + s["duplicates"]
    expected: dict[str, int] = {}
    for _, reason in cases:
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    got = {**s["reasons"]["failed"], **s["reasons"]["duplicates"]}
    assert got == expected and s["written"] == 6 and report.splits["train"].balanced
    assert s["notes"]["fetch_retries"] >= 4  # flaky, busy, always-500, slow

    rows = parquet_rows(out)
    assert sorted(rows) == [f"00000_{i:09d}" for i, (_, r) in enumerate(cases) if r is None]
    a = rows["00000_000000000"]
    assert a["url"] == server.url("/img/a.jpg") and a["caption"] == "caption 0" and a["text"] == "caption 0"
    assert a["image"]["bytes"] == server.images["a.jpg"] and a["image_info"]["format"] == "jpeg"
    assert a["column_set"] == "laion" and a["source_id"] == "100" and a["license"] is None
    assert a["meta_width"] == 64 and a["original_width"] == 64 and a["http_status"] == 200
    assert a["download_sha256"] == hashlib.sha256(server.images["a.jpg"]).hexdigest()
    assert json.loads(a["raw"]) == laion_row(0, server.url("/img/a.jpg"))
    redirected = rows["00000_000000005"]
    assert redirected["final_url"] == server.url("/redirected.jpg") and redirected["fetched_from"] == "http"

    failures = {r["key"]: r for r in pq.read_table(out / "build" / "failures.parquet").to_pylist()}
    assert len(failures) == len(cases) - 6
    f = failures["00000_000000006"]
    assert f["outcome"] == "failed" and f["reason"] == "http_404" and server.url("/missing.jpg") in f["message"]
    assert f["ref"].endswith(".snappy.parquet:6")
    assert "redirect" in failures["00000_000000014"]["message"]

    # failures.parquet lets a user rebuild only what failed (here: the server now answers one of them)
    server.add("/missing.jpg", server.images["b.png"])
    again = tmp_path / "again"
    vldata.build("laion", raw, again, fetch=FETCH, rerun=str(out / "build" / "failures.parquet"))
    s2 = stats(again)
    assert s2["input_rows"] == sum(1 for r in failures.values() if r["outcome"] == "failed")
    assert sorted(parquet_rows(again)) == ["00000_000000006"]


# --------------------------------------------------------------------------------------------
# Column sets, normalization, filters, dedup


def test_column_sets_are_detected_and_normalized(server, tmp_path):
    raw = tmp_path / "raw"
    a, b, c = server.url("/img/a.jpg"), server.url("/img/b.png"), server.url("/img/c.webp")
    write(raw / "laion400m" / "part-00000.parquet", [laion_row(0, a, LICENSE="https://creativecommons.org/licenses/by/4.0/")],
          LAION400M)
    write(raw / "laion2B-multi" / "part-00000.parquet",
          [{**laion_row(1, b), "HEIGHT": 30.0, "WIDTH": 40.0, "LANGUAGE": "de", "NSFW": "UNSURE"}], LAION2B_MULTI)
    write(raw / "laion2B-multi-joined" / "part-00000.parquet",
          [{"URL": c, "TEXT": "ein Bild", "WIDTH": 50, "HEIGHT": 50, "similarity": 0.29, "hash": -7436018474331853318,
            "punsafe": 0.25, "pwatermark": 0.5, "LANGUAGE": "de"}], JOINED)
    write(raw / "datacomp" / "0a1b.parquet",
          [{"uid": "0123456789ABCDEF" * 2, "url": server.add("/dc.jpg", encode("JPEG", (64, 48), (1, 2, 3))),
            "text": "a red square", "original_width": 64, "original_height": 48, "clip_b32_similarity_score": 0.25,
            "clip_l14_similarity_score": 0.2, "face_bboxes": [[0.1, 0.1, 0.4, 0.5]], "sha256": None}], DATACOMP)
    out = tmp_path / "out"
    vldata.build("laion", raw, out, formats="parquet", fetch=FETCH)
    rows = {r["column_set"]: r for r in parquet_rows(out).values()}
    assert sorted(rows) == ["datacomp", "laion", "laion_joined", "laion_language"]
    assert rows["laion"]["license"] == "https://creativecommons.org/licenses/by/4.0/"
    multi = rows["laion_language"]
    assert multi["language"] == "de" and multi["meta_width"] == 40 and multi["nsfw_tag"] == "UNSURE"
    joined = rows["laion_joined"]
    assert joined["source_hash"] == "-7436018474331853318" and joined["punsafe"] == 0.25
    assert joined["pwatermark"] == 0.5 and joined["source_id"] is None and joined["caption"] == "ein Bild"
    dc = rows["datacomp"]
    assert dc["source_id"] == "0123456789ABCDEF" * 2  # the raw value; uid is the normalized one
    assert dc["uid"] == "0123456789abcdef" * 2 and rows["laion"]["uid"] is None
    assert dc["similarity"] == pytest.approx(0.25)
    assert dc["similarity_l14"] == pytest.approx(0.2) and dc["meta_height"] == 48
    assert dc["face_bboxes"] == [{"x_min": 0.1, "y_min": 0.1, "x_max": 0.4, "y_max": 0.5}]
    assert dc["faces_blurred"] is False and dc["source_file"] == "datacomp/0a1b.parquet"


def test_limit_and_small_partitions_keep_keys_and_order(server, tmp_path):
    raw = tmp_path / "raw"
    urls = [server.add(f"/p{i}.png", encode("PNG", (10 + i, 10), (i, 0, 0))) for i in range(7)]
    write(raw / "a.parquet", [laion_row(i, u) for i, u in enumerate(urls)], LAION400M)
    vldata.build("laion", raw, tmp_path / "out", formats="parquet", fetch=FETCH, rows_per_partition=2, limit=5,
                 workers=2, shuffle=None)
    assert list(parquet_rows(tmp_path / "out")) == [f"00000_{i:09d}" for i in range(5)]
    assert stats(tmp_path / "out")["input_rows"] == 5


def test_column_set_names():
    assert column_set(LAION400M.names) == "laion"
    assert column_set(LAION2B_MULTI.names) == "laion_language"
    assert column_set(JOINED.names) == "laion_joined"
    assert column_set(JOINED.names + ["aesthetic"]) == "laion_aesthetic"
    assert column_set(DATACOMP.names) == "datacomp"
    assert column_set(["id", "url", "text", "width", "height", "image_phash", "clip_similarity_vitb32"]) == "coyo"
    assert column_set(["link", "alt"]) == "custom"


def test_filters_and_dedup_counts(server, tmp_path):
    wide = server.add("/wide.png", encode("PNG", (120, 20), (1, 2, 3)))
    small = server.add("/small.png", encode("PNG", (10, 12), (4, 5, 6)))
    copy = server.add("/copy.webp", server.images["c.webp"])
    urls = {n: server.add(f"/u{n}.jpg", encode("JPEG", (40 + n, 40), (n * 10, 0, 0))) for n in range(8)}
    rows = [
        {"URL": urls[0], "TEXT": "ok", "WIDTH": 40, "HEIGHT": 40, "similarity": 0.35, "hash": 1, "punsafe": 0.1, "pwatermark": 0.1, "LANGUAGE": "en"},
        {"URL": urls[1], "TEXT": "low sim", "WIDTH": 41, "HEIGHT": 40, "similarity": 0.2, "hash": 2, "punsafe": 0.1, "pwatermark": 0.1, "LANGUAGE": "en"},
        {"URL": urls[2], "TEXT": "unsafe", "WIDTH": 42, "HEIGHT": 40, "similarity": 0.35, "hash": 3, "punsafe": 0.9, "pwatermark": 0.1, "LANGUAGE": "en"},
        {"URL": urls[3], "TEXT": "watermark", "WIDTH": 43, "HEIGHT": 40, "similarity": 0.35, "hash": 4, "punsafe": 0.1, "pwatermark": 0.95, "LANGUAGE": "en"},
        {"URL": urls[4], "TEXT": "french", "WIDTH": 44, "HEIGHT": 40, "similarity": 0.35, "hash": 5, "punsafe": 0.1, "pwatermark": 0.1, "LANGUAGE": "fr"},
        {"URL": small, "TEXT": "small by metadata", "WIDTH": 10, "HEIGHT": 12, "similarity": 0.35, "hash": 6, "punsafe": 0.1, "pwatermark": 0.1, "LANGUAGE": "en"},
        {"URL": small, "TEXT": "small, no metadata size", "WIDTH": None, "HEIGHT": None, "similarity": 0.35, "hash": 7, "punsafe": 0.1, "pwatermark": 0.1, "LANGUAGE": "en"},
        {"URL": wide, "TEXT": "too wide", "WIDTH": None, "HEIGHT": None, "similarity": 0.35, "hash": 8, "punsafe": 0.1, "pwatermark": 0.1, "LANGUAGE": "en"},
        {"URL": urls[5], "TEXT": "unknown values pass", "WIDTH": 45, "HEIGHT": 40, "similarity": None, "hash": 9, "punsafe": None, "pwatermark": None, "LANGUAGE": None},
        {"URL": urls[0], "TEXT": "same url", "WIDTH": 40, "HEIGHT": 40, "similarity": 0.35, "hash": 10, "punsafe": 0.1, "pwatermark": 0.1, "LANGUAGE": "en"},
        {"URL": server.url("/img/c.webp"), "TEXT": "first webp", "WIDTH": 50, "HEIGHT": 50, "similarity": 0.35, "hash": 11, "punsafe": 0.1, "pwatermark": 0.1, "LANGUAGE": "en"},
        {"URL": copy, "TEXT": "same image", "WIDTH": 50, "HEIGHT": 50, "similarity": 0.35, "hash": 12, "punsafe": 0.1, "pwatermark": 0.1, "LANGUAGE": "en"},
    ]
    raw = tmp_path / "raw"
    write(raw / "joined.parquet", rows, JOINED)
    filters = dict(min_similarity=0.28, max_punsafe=0.5, max_pwatermark=0.8, min_image_size=16, max_aspect_ratio=3,
                   languages="en,de")
    vldata.build("laion", raw, tmp_path / "out", formats="parquet", fetch=FETCH, **filters)
    s = stats(tmp_path / "out")
    assert s["reasons"]["filtered"] == {"min_similarity": 1, "max_punsafe": 1, "max_pwatermark": 1, "languages": 1,
                                        "min_image_size": 2, "max_aspect_ratio": 1}
    assert s["reasons"]["duplicates"] == {"duplicate_url": 1, "duplicate_image": 1}
    assert s["written"] == 3 and s["failed"] == 0
    failures = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "build" / "failures.parquet").to_pylist()}
    assert failures["00000_000000006"]["reason"] == "min_image_size"  # known only after the download
    assert "10x12" in failures["00000_000000006"]["message"]
    assert server.hits["/u1.jpg"] == 0  # filtered on metadata: never downloaded

    vldata.build("laion", raw, tmp_path / "nodedup", formats="parquet", fetch=FETCH, dedup="")
    s = stats(tmp_path / "nodedup")
    assert s["duplicates"] == 0 and s["written"] == 12


def test_nsfw_tag_filter(server, tmp_path):
    raw = tmp_path / "raw"
    write(raw / "p.parquet", [laion_row(i, server.add(f"/n{i}.jpg", encode("JPEG", (20 + i, 20), (i, i, i))),
                                        NSFW=tag) for i, tag in enumerate(["UNLIKELY", "UNSURE", "NSFW", None])], LAION400M)
    vldata.build("laion", raw, tmp_path / "out", formats="parquet", fetch=FETCH, nsfw_tags="UNLIKELY,UNSURE")
    s = stats(tmp_path / "out")
    assert s["reasons"]["filtered"] == {"nsfw_tags": 1} and s["written"] == 3


def test_a_file_without_a_url_column_is_structural(server, tmp_path):
    raw = tmp_path / "raw"
    write(raw / "custom.parquet", [{"link": server.url("/img/a.jpg"), "alt": "an image"}],
          pa.schema([("link", pa.string()), ("alt", pa.string())]))
    proc = run_cli("build", "laion", "--raw", raw, "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "custom.parquet" in proc.stderr and "no URL column" in proc.stderr and "link, alt" in proc.stderr
    proc = run_cli("build", "laion", "--raw", raw, "--out", tmp_path / "out2", "--set", "url_col=nope")
    assert proc.returncode == 2 and "url_col 'nope'" in proc.stderr
    run_cli("build", "laion", "--raw", raw, "--out", tmp_path / "out3", "--set", "url_col=link",
            "--set", "caption_col=alt", "--set", "fetch.allow_private=true", "--format", "parquet", check=True)
    (row,) = parquet_rows(tmp_path / "out3").values()
    assert row["caption"] == "an image" and row["column_set"] == "custom"


def test_resize_and_mirror_settings(server, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "127.0.0.1" / "offline").mkdir(parents=True)
    (mirror / "127.0.0.1" / "offline" / "x.jpg").write_bytes(encode("JPEG", (200, 100), (9, 9, 9)))
    raw = tmp_path / "raw"
    write(raw / "p.parquet", [laion_row(0, server.url("/offline/x.jpg")), laion_row(1, server.url("/img/a.jpg"))],
          LAION400M)
    run_cli("build", "laion", "--raw", raw, "--out", tmp_path / "out", "--format", "parquet",
            "--set", f"mirror={mirror}", "--set", "fetch.allow_private=true",
            "--set", "image.resize_mode=keep_ratio", "--set", "image.image_size=32",
            "--set", "image.encode_format=webp", check=True)
    rows = parquet_rows(tmp_path / "out")
    x, a = rows["00000_000000000"], rows["00000_000000001"]
    assert x["fetched_from"] == "mirror" and server.hits["/offline/x.jpg"] == 0
    assert (x["image_info"]["width"], x["image_info"]["height"]) == (64, 32) and x["image_info"]["format"] == "webp"
    assert (x["original_width"], x["original_height"]) == (200, 100)
    assert a["fetched_from"] == "http" and (a["image_info"]["width"], a["image_info"]["height"]) == (43, 32)
    assert stats(tmp_path / "out")["notes"]["fetched_from_mirror"] == 1


def test_face_boxes_are_blurred_on_request(server, tmp_path):
    img = PILImage.new("RGB", (80, 80), (255, 255, 255))
    for x in range(0, 80, 2):
        for y in range(80):
            img.putpixel((x, y), (0, 0, 0))  # stripes: blurring turns them grey
    buf = io.BytesIO()
    img.save(buf, "PNG")
    url = server.add("/face.png", buf.getvalue())
    raw = tmp_path / "raw"
    write(raw / "pool.parquet", [{"uid": "ab", "url": url, "text": "a person", "original_width": 80, "original_height": 80,
                                  "clip_b32_similarity_score": 0.3, "clip_l14_similarity_score": 0.3,
                                  "face_bboxes": [[0.0, 0.0, 0.5, 0.5]], "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}],
          DATACOMP)
    vldata.build("laion", raw, tmp_path / "out", formats="parquet", fetch=FETCH, blur_faces=True)
    (row,) = parquet_rows(tmp_path / "out").values()
    assert row["faces_blurred"] is True
    assert row["uid"] is None and row["source_id"] == "ab"  # a malformed uid is null, not a failed row
    out = PILImage.open(io.BytesIO(row["image"]["bytes"])).convert("L")
    assert 60 < out.getpixel((20, 20)) < 200  # inside the box: grey
    assert out.getpixel((60, 60)) == 0 and out.getpixel((61, 60)) == 255  # outside: untouched stripes


# --------------------------------------------------------------------------------------------
# img2dataset output folder as raw input


def write_img2dataset_folder(folder: Path, images: dict[str, bytes]) -> None:
    """Two shards laid out as img2dataset 1.47 writes them (--output_format webdataset, LAION-400M
    additional columns): tar members in completion order, failures only in the parquet."""
    folder.mkdir(parents=True)
    schema = pa.schema([("NSFW", pa.string()), ("similarity", pa.float64()), ("LICENSE", pa.string()),
                        ("caption", pa.string()), ("url", pa.string()), ("key", pa.string()), ("status", pa.string()),
                        ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                        ("original_width", pa.int32()), ("original_height", pa.int32()), ("exif", pa.string()),
                        ("sha256", pa.string())])
    shards = {0: [("000000001", "b.png", None), ("000000002", "a.jpg", None), ("000000000", "c.webp", None),
                  ("000000003", None, "HTTP Error 404: File not found")],
              1: [("000010001", None, "hash mismatch"), ("000010000", "a.jpg", None),
                  ("000010002", None, "The read operation timed out")]}
    for shard, entries in shards.items():
        rows, status = [], {}
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for key, name, error in entries:
                row = {"NSFW": "UNLIKELY", "similarity": 0.31, "LICENSE": "?", "caption": None if key == "000000002" else f"caption {key}",
                       "url": f"http://127.0.0.1:9/{key}.jpg", "key": key,
                       "status": "success" if name else "failed_to_download", "error_message": error,
                       "width": None, "height": None, "original_width": None, "original_height": None, "exif": None,
                       "sha256": None}
                if name:
                    data = images[name]
                    w, h = PILImage.open(io.BytesIO(data)).size
                    row.update(width=w, height=h, original_width=w * 2, original_height=h * 2, exif="{}",
                               sha256=hashlib.sha256(data).hexdigest())
                    ext = name.split(".")[1]
                    for member, payload in ((f"{key}.{ext}", data), (f"{key}.txt", (row["caption"] or "").encode()),
                                            (f"{key}.json", json.dumps(row, indent=4).encode())):
                        info = tarfile.TarInfo(member)
                        info.size, info.mode, info.uname = len(payload), 0o444, "bigdata"
                        tar.addfile(info, io.BytesIO(payload))
                rows.append(row)
                status[error or "success"] = status.get(error or "success", 0) + 1
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{shard:05d}.parquet")
        ok = sum(1 for _, n, _ in entries if n)
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({
            "count": len(entries), "successes": ok, "failed_to_download": len(entries) - ok, "failed_to_resize": 0,
            "duration": 0.2, "start_time": 1795963207.45, "end_time": 1795963207.65, "status_dict": status}, indent=4))


def test_img2dataset_folder_is_converted_without_network(tmp_path, monkeypatch):
    images = {"a.jpg": encode("JPEG", (64, 48), (200, 30, 30)), "b.png": encode("PNG", (40, 30), (30, 200, 30)),
              "c.webp": encode("WEBP", (50, 50), (30, 30, 200))}
    raw = tmp_path / "i2d"
    write_img2dataset_folder(raw, images)

    def no_network(*args, **kwargs):
        raise AssertionError("an img2dataset folder must not be downloaded again")

    monkeypatch.setattr("vldata.ingest.fetch.Fetcher.fetch", no_network)
    out = tmp_path / "out"
    with recording() as events:
        vldata.build("laion", raw, out, dedup="url", shuffle=None)  # input (key) order, checked below
    assert not [e for e in events if e[0] == "socket.connect"]
    s = stats(out)
    assert s["input_rows"] == 7 and s["written"] == 4 and s["failed"] == 3
    assert s["reasons"]["failed"] == {"http_404": 1, "checksum_mismatch": 1, "timeout": 1}
    failures = {r["key"]: r for r in pq.read_table(out / "build" / "failures.parquet").to_pylist()}
    assert failures["000000003"]["message"] == "HTTP Error 404: File not found"
    assert failures["000010001"]["message"] == "hash mismatch" and failures["000010001"]["ref"] == "00001.parquet:0"
    rows = parquet_rows(out)
    assert sorted(rows) == ["000000000", "000000001", "000000002", "000010000"]
    b = rows["000000001"]
    assert b["image"]["bytes"] == images["b.png"] and b["fetched_from"] == "img2dataset"
    assert b["column_set"] == "img2dataset" and b["nsfw_tag"] == "UNLIKELY" and b["similarity"] == 0.31
    assert (b["original_width"], b["original_height"]) == (80, 60) and b["meta_width"] is None and b["exif"] == "{}"
    assert b["download_sha256"] == hashlib.sha256(images["b.png"]).hexdigest() and b["license"] is None
    assert rows["000000002"]["caption"] is None and rows["000000002"]["text"] == ""
    # written in key order, although the tar and parquet are in completion order
    tar_keys = []
    for tar in sorted((out / "webdataset").glob("*.tar")):
        with tarfile.open(tar) as t:
            tar_keys += list(dict.fromkeys(m.name.split(".")[0] for m in t.getmembers()))
    assert tar_keys == sorted(rows)


def test_an_img2dataset_shard_without_images_is_structural(tmp_path):
    raw = tmp_path / "i2d"
    write_img2dataset_folder(raw, {"a.jpg": encode("JPEG", (8, 8), (1, 1, 1)), "b.png": encode("PNG", (8, 8), (1, 1, 1)),
                                   "c.webp": encode("WEBP", (8, 8), (1, 1, 1))})
    (raw / "00001.tar").unlink()
    proc = run_cli("build", "laion", "--raw", raw, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "00001.parquet" in proc.stderr and "without images" in proc.stderr


# --------------------------------------------------------------------------------------------
# The sample and the round trip through plain datasets / webdataset


READER = textwrap.dedent('''
    import json, sys, re, glob
    import datasets, webdataset
    out = sys.argv[1]
    result = {}
    for name in ("parquet", "webdataset"):
        split = datasets.load_dataset(out + "/" + name)["train"]
        rows = list(split)
        f = split.features if name == "parquet" else split.features["json"]
        if name == "parquet":
            images = [r["image"] for r in rows]
            keys = [r["key"] for r in rows]
        else:
            images = [r.get("jpg") or r.get("png") or r.get("webp") for r in rows]
            keys = [r["__key__"] for r in rows]
        result[name] = {"n": len(rows), "keys": sorted(keys), "sizes_ok": all(i.size[0] > 0 for i in images),
                        "punsafe": f["punsafe"].dtype, "similarity": f["similarity"].dtype,
                        "face": str(f["face_bboxes"])}
    samples = list(webdataset.WebDataset(sorted(glob.glob(out + "/webdataset/*.tar")), shardshuffle=False))
    result["wds"] = {"n": len(samples), "keys": sorted(s["__key__"] for s in samples),
                     "one_image": all(sum(e in s for e in ("jpg", "png", "webp")) == 1 and "txt" in s and "json" in s
                                      for s in samples),
                     "json_ok": all(json.loads(s["json"])["url"].startswith("http") for s in samples)}
    result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("vldata", "builders"))
    print(json.dumps(result))
''')


@pytest.fixture(scope="module")
def sample_built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("laion_sample")
    raw, out = root / "raw", root / "out"
    write_sample(raw, n=24, seed=3)
    # vldata.build serves the sample's loopback server itself (sample_services), as the CLI does
    vldata.build("laion", raw, out, workers=2, shard_bytes={"parquet": 20_000, "webdataset": 30_000})
    return out


def test_the_sample_builds_with_its_loopback_server(sample_built):
    s = stats(sample_built)
    assert s["input_rows"] == 48 == s["written"] + s["failed"] + s["filtered"] + s["duplicates"]
    assert s["written"] >= 20
    for reason in ("http_404", "not_an_image", "image_corrupt", "opted_out", "unsupported_scheme", "checksum_mismatch"):
        assert s["reasons"]["failed"].get(reason), reason
    assert s["reasons"]["duplicates"].get("duplicate_url") and s["reasons"]["duplicates"].get("duplicate_image")
    assert validate(sample_built) == []
    rows = parquet_rows(sample_built)
    assert {r["column_set"] for r in rows.values()} == {"laion", "datacomp"}
    assert all(len(r["uid"]) == 32 for r in rows.values() if r["column_set"] == "datacomp")


def test_the_sample_service_is_only_for_samples(tmp_path):
    with vldata.get_builder("laion").sample_services(tmp_path) as base:
        assert base is None


def test_plain_datasets_and_webdataset_read_a_laion_build(sample_built):
    result = read_without_vldata(READER, sample_built)
    expected = sorted(parquet_rows(sample_built))
    for name in ("parquet", "webdataset"):
        r = result[name]
        assert r["n"] == len(expected) and r["keys"] == expected and r["sizes_ok"]
        assert r["punsafe"] == "float32" and r["similarity"] == "float64" and "x_min" in r["face"]
    w = result["wds"]
    assert w["n"] == len(expected) and w["keys"] == expected and w["one_image"] and w["json_ok"]


def test_cli_sample_then_build_serves_the_sample(tmp_path):
    from conftest import run_cli

    run_cli("sample", "laion", tmp_path / "raw", "--n", "6", check=True)
    proc = run_cli("build", "laion", "--raw", tmp_path / "raw", "--out", tmp_path / "out", "--format", "parquet")
    assert proc.returncode == 0, proc.stderr
    s = stats(tmp_path / "out")
    assert s["written"] > 0 and "connection_error" not in s["reasons"]["failed"]
