"""Plain webdataset tars (webdataset.TarWriter output, img2dataset folders) read like a build: ``vldata
index`` then ``vldata.open`` give exactly what ``webdataset.WebDataset`` reads (the samples with an
image, in tar order, same bytes), what was skipped is counted and named, an index is built once (next
to the tars, in ``--index-dir`` or in the cache) and only a changed tar is read again, local and over
HTTP, and hostile tars give counts or one line, never a crash."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from fakes.range_server import RangeServer
from PIL import Image

import vldata
from vldata.cli import main
from vldata.errors import ShardError
from vldata.layout import PlainLayout, cache_dir
from vldata.read import tar_index, tar_scan
from vldata.read.tar_scan import key_and_suffix


def _image(fmt: str, i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8 + i % 5, 6 + i % 3), (i * 37 % 256, i * 11 % 256, 90)).save(out, format=fmt)
    return out.getvalue()


def _write_tar(path: Path, t: int, n: int, extra: int = 0) -> None:
    """n samples of every kind with webdataset's own writer: jpg or png (one ``JPG``), txt, json, cls;
    sample 3 has no image."""
    with wds.TarWriter(str(path)) as w:
        for i in range(n + extra):
            sample = {"__key__": f"s{t}_{i:04d}", "txt": f"caption {t}/{i}", "cls": i % 3,
                      "json": {"i": i, "key": "not mine", "text": "not mine", "lang": "en"}}
            if i == 5:
                sample["JPG"] = _image("JPEG", i)  # upper case, as some writers do
            elif i != 3:
                sample["png" if i % 2 else "jpg"] = _image("PNG" if i % 2 else "JPEG", i)
            w.write(sample)


def _cut_mid_member(path: Path, member: str) -> None:
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
    path.write_bytes(path.read_bytes()[: info.offset_data + info.size // 2])


@pytest.fixture
def tars(tmp_path) -> Path:
    """tars/shard-0000{0,1,2}.tar; the last one cut in the middle of sample 9's image."""
    folder = tmp_path / "tars"
    folder.mkdir()
    for t in range(3):
        _write_tar(folder / f"shard-{t:05d}.tar", t, 12)
    _cut_mid_member(folder / "shard-00002.tar", "s2_0009.png")
    return folder


def webdataset_reads(paths: list[Path]) -> list[dict]:
    """What plain webdataset yields (no decoding), a truncated tar ending the way its handler lets it."""
    ds = wds.WebDataset([str(p) for p in paths], shardshuffle=False, handler=wds.ignore_and_continue,
                        empty_check=False)
    return [dict(s) for s in ds]


def _primary(sample: dict) -> bytes | None:
    return next((sample[s] for s in ("jpg", "jpeg", "png", "webp") if s in sample), None)


def _expected(paths: list[Path], truncated: set[str] = frozenset()) -> list[dict]:
    return [s for s in webdataset_reads(paths) if _primary(s) is not None and s["__key__"] not in truncated]


def _assert_same(src, expected: list[dict]) -> None:
    got = [src[i] for i in range(len(src))]
    assert [s["key"] for s in got] == [s["__key__"] for s in expected]
    for a, b in zip(got, expected):
        assert a["image"] == _primary(b)
        assert a["text"] == b["txt"].decode()
        assert a["cls"] == int(b["cls"]) and a["lang"] == "en" and a["i"] == json.loads(b["json"])["i"]


def _count_scans(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = tar_index.scan

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tar_index, "scan", counted)
    return calls


# --------------------------------------------------------------------------------------------


def test_index_then_open_gives_what_webdataset_reads(tars, capsys):
    assert main(["index", str(tars)]) == 0
    out = capsys.readouterr().out
    assert "3 tars: 3 indexed (3 read, 0 unchanged), 0 excluded" in out
    assert "no_image 3" in out and "truncated 1" in out and "ended early: shard-00002.tar" in out

    src = vldata.open(tars)
    assert src.name == "tars" and src.shard_sizes == (11, 11, 8)  # sample 3 has no image; 9.. of the cut tar
    paths = sorted(tars.glob("*.tar"))
    _assert_same(src, _expected(paths, truncated={"s2_0009"}))
    assert src[4]["key"] == "s0_0005" and src[4]["image"].startswith(b"\xff\xd8")  # the .JPG member
    assert src[0]["source"] == "tars"

    cut = json.loads((tars / "shard-00002.idx.json").read_text())["stats"]
    assert cut["skipped"] == {"no_image": 1, "truncated": 1}
    assert cut["skipped_keys"] == {"no_image": ["s2_0003"], "truncated": ["s2_0009"]}
    assert "past the end" in cut["ended_early"]
    plain = json.loads((tars / "vldata.json").read_text())["plain"]
    assert plain["stats"]["ended_early"] == ["shard-00002.tar"]
    assert plain["stats"]["skipped"] == {"no_image": 3, "truncated": 1}


def test_img2dataset_folder_ignores_its_parquet_and_stats(tmp_path):
    folder = tmp_path / "laion"
    folder.mkdir()
    with wds.TarWriter(str(folder / "00000.tar")) as w:
        for i in range(5):
            w.write({"__key__": f"{i:09d}", "jpg": _image("JPEG", i), "txt": f"a photo {i}",
                     "json": {"url": f"http://127.0.0.1/{i}.jpg", "caption": f"a photo {i}", "status": "success"}})
    (folder / "00000.parquet").write_bytes(b"PAR1 not really")
    (folder / "00000_stats.json").write_text("{}")
    assert main(["index", str(folder)]) == 0
    src = vldata.open(folder)
    assert len(src) == 5 and src[2]["key"] == "000000002" and src[2]["url"].endswith("/2.jpg")
    _assert_same_basic = [s["__key__"] for s in webdataset_reads([folder / "00000.tar"])]
    assert [src[i]["key"] for i in range(5)] == _assert_same_basic
    manifest = json.loads((folder / "vldata.json").read_text())
    assert [sh["path"] for sh in manifest["splits"]["train"]["shards"]] == ["00000.tar"]


def test_open_without_an_index_builds_one_in_the_cache_once(tars, tmp_path, monkeypatch):
    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    before = sorted(os.listdir(tars))
    scans = _count_scans(monkeypatch)
    src = vldata.open(tars)
    assert len(scans) == 3 and len(src) == 30
    assert sorted(os.listdir(tars)) == before  # nothing next to the tars
    slots = list((cache_dir() / "index").iterdir())
    assert len(slots) == 1 and (slots[0] / "vldata.json").is_file()
    _assert_same(src, _expected(sorted(tars.glob("*.tar")), truncated={"s2_0009"}))

    again = vldata.open(tars, split="validation")  # the tars name no split: whatever is asked
    assert len(scans) == 3 and len(again) == 30  # no tar read again

    _write_tar(tars / "shard-00001.tar", 1, 12, extra=2)  # a changed tar (another size)
    changed = vldata.open(tars)
    assert len(scans) == 4 and changed.shard_sizes == (11, 13, 8)  # only it was read again
    assert changed[11 + 12]["key"] == "s1_0013"
    assert sorted(os.listdir(tars)) == before


def test_an_index_next_to_the_tars_that_is_out_of_date_is_not_rewritten(tars, tmp_path, monkeypatch):
    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    assert main(["index", str(tars)]) == 0
    manifest = (tars / "vldata.json").read_bytes()
    scans = _count_scans(monkeypatch)
    assert len(vldata.open(tars)) == 30 and not scans
    _write_tar(tars / "shard-00000.tar", 0, 12, extra=1)
    assert vldata.open(tars).shard_sizes == (12, 11, 8) and len(scans) == 1  # re-indexed into the cache
    assert (tars / "vldata.json").read_bytes() == manifest
    assert main(["index", str(tars)]) == 0  # asked: next to the tars, reading only the changed one
    assert len(scans) == 2 and vldata.open(tars).shard_sizes == (12, 11, 8) and len(scans) == 2


def test_prefix_brace_and_single_tar_forms(tars, tmp_path, monkeypatch):
    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    assert vldata.open(f"{tars}/shard-0000").shard_sizes == (11, 11, 8)
    assert vldata.open(f"{tars}/shard-{{00001..00002}}.tar").shard_sizes == (11, 8)
    assert vldata.open(f"{tars}/shard-{{00002,00000}}.tar").shard_sizes == (8, 11)  # pattern order
    assert vldata.open(tars / "shard-00001.tar").shard_sizes == (11,)
    assert main(["index", str(tars)]) == 0
    scans = _count_scans(monkeypatch)
    assert vldata.open(f"{tars}/shard-{{00000..00001}}.tar").shard_sizes == (11, 11) and not scans  # a subset


def test_brace_expansion_without_braceexpand():
    pattern = "http://127.0.0.1:9/{train,val}/x-{008..010}.tar"
    assert list(tar_index._braces(pattern)) == tar_index.expand_braces(pattern)
    assert list(tar_index._braces("a{1..3}b{x,{y,z}}")) == [f"a{i}b{c}" for i in (1, 2, 3) for c in "xyz"]
    assert list(tar_index._braces("{unbalanced")) == ["{unbalanced"]


def test_tar_names_with_splits_are_split(tmp_path, monkeypatch):
    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "splits"
    folder.mkdir()
    _write_tar(folder / "train-000000.tar", 0, 6)
    _write_tar(folder / "train-000001.tar", 1, 6)
    _write_tar(folder / "validation-000000.tar", 2, 4)
    assert vldata.open(folder).shard_sizes == (5, 5)
    assert vldata.open(folder, split="validation").shard_sizes == (3,)
    with pytest.raises(KeyError, match="no split 'test'"):
        vldata.open(folder, split="test")


def test_remote_tars_over_http(tars, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    www = tmp_path / "www"
    www.mkdir()
    tars.rename(www / "tars")
    tars = www / "tars"
    expected = _expected(sorted(tars.glob("*.tar")), truncated={"s2_0009"})
    with RangeServer(www) as srv:
        pattern = srv.url("tars/shard-{00000..00002}.tar")
        assert main(["index", pattern]) == 2  # remote: the index cannot go next to the tars
        assert "--index-dir" in capsys.readouterr().err
        assert main(["index", pattern, "--index-dir", str(tmp_path / "idx")]) == 0
        body = sum(n for m, path, _, n in srv.requests if path.endswith(".tar") and m == "GET")
        assert body == sum(p.stat().st_size for p in tars.glob("*.tar"))  # each tar read once
        srv.reset()
        src = vldata.open(pattern, index_dir=str(tmp_path / "idx"))
        assert not sum(n for _, path, _, n in srv.requests if path.endswith(".tar"))  # no tar body read
        _assert_same(src, expected)
        assert not list((tmp_path / "cache").glob("index/*"))

    with RangeServer(www, listing=True) as srv:  # the prefix form needs a listing
        scans = _count_scans(monkeypatch)
        src = vldata.open(srv.url("tars/shard-"))
        assert len(scans) == 3 and src.shard_sizes == (11, 11, 8)  # built into the cache
        assert src[12]["key"] == expected[12]["__key__"]
        assert len(vldata.open(srv.url("tars/shard-"))) == 30 and len(scans) == 3
        assert main(["index", srv.url("tars/shard-0000"), "--index-dir", str(tmp_path / "idx2")]) == 0
        assert "3 tars: 3 indexed (3 read" in capsys.readouterr().out
        assert len(vldata.open(srv.url("tars/shard-"), index_dir=str(tmp_path / "idx2"))) == 30 and len(scans) == 6


def test_an_index_uploaded_with_the_tars_is_used_over_http(tars, tmp_path, monkeypatch):
    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    assert main(["index", str(tars)]) == 0
    scans = _count_scans(monkeypatch)
    with RangeServer(tars.parent) as srv:  # no listing: the index names the tars; only sizes are compared
        src = vldata.open(srv.url("tars"))
        assert not scans and src.shard_sizes == (11, 11, 8)
        assert not sum(n for _, path, _, n in srv.requests if path.endswith(".tar"))
        assert src[20]["key"] == "s1_0010"


def test_a_mix_of_a_build_and_plain_tars_trains(scin_built, tars, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    mix = vldata.Mix({"scin": vldata.open(scin_built), "plain": vldata.open(tars)})
    sources, n = set(), 0
    for batch in vldata.TorchDataset(mix, batch_size=4):
        sources.update(batch["source"])
        n += len(batch["key"])
        assert batch["image_sizes"].sum() == batch["image"].numel()
    assert sources == {"scin", "plain"} and n >= len(mix)  # the last batch may be padded


def test_member_choice(tars, tmp_path, monkeypatch):
    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    src = vldata.open(tars, image="png", text="json")  # only png samples; text is the json member
    assert src.shard_sizes == (4, 4, 2)
    assert src[0]["key"] == "s0_0001" and json.loads(src[0]["text"])["i"] == 1
    assert main(["index", str(tars), "--image", "png;jpg", "--text", "txt"]) == 0
    assert json.loads((tars / "vldata.json").read_text())["plain"]["image"] == ["png", "jpg"]
    assert vldata.open(tars).shard_sizes == (11, 11, 8)
    layout = PlainLayout()
    sample = layout.sample("k", [("JPG", b"a"), ("PNG", b"b"), ("txt", b"t"), ("cls", b" 7\n"), ("seg.png", b"s"),
                                 ("json", json.dumps({"key": "x", "image": "x", "text": "x", "source": "x",
                                                      "cls": 0, "extra": 1}).encode())])
    assert sample == {"key": "k", "image": b"a", "text": "t", "cls": 7, "png": b"b", "seg.png": b"s", "extra": 1}


def test_keys_follow_webdataset():
    from webdataset.tariterators import base_plus_ext

    for name in ("a.jpg", "dir/a.b.c.png", "a.b/c.txt", "../x.jpg", "/abs/y.JPG", "noext", "dir/.hidden", "x.", "a/b"):
        assert key_and_suffix(name) == tuple(base_plus_ext(name)), name


# --------------------------------------------------------------------------------------------
# Hostile input


def _member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    pad = -len(data) % tarfile.BLOCKSIZE
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * pad


def _end() -> bytes:
    return b"\0" * (2 * tarfile.BLOCKSIZE)


@pytest.fixture
def hostile(tmp_path) -> Path:
    folder = tmp_path / "hostile"
    folder.mkdir()
    jpg = _image("JPEG", 1)
    (folder / "a-junk.tar").write_bytes(os.urandom(3000))
    (folder / "b-empty.tar").write_bytes(b"")
    (folder / "c-gzip.tar").write_bytes(gzip.compress(_member("k.jpg", jpg) + _end()))
    huge = tarfile.TarInfo("big.jpg")
    huge.size = 1 << 30  # claimed in the header; the file holds 1000 bytes of it
    (folder / "d-claims.tar").write_bytes(_member("ok.jpg", jpg) + _member("ok.txt", b"fine")
                                          + huge.tobuf(format=tarfile.GNU_FORMAT) + b"x" * 1000)
    (folder / "e-paths.tar").write_bytes(_member("../x.jpg", jpg) + _member("../x.txt", b"up")
                                         + _member("/abs/y.jpg", jpg) + _member("ok.jpg", jpg) + _end())
    many = b"".join(_member(f"m.{i:05d}.bin", b"") for i in range(10_000))
    (folder / "f-many.tar").write_bytes(_member("m.jpg", jpg) + many + _member("n.jpg", jpg) + _end())
    (folder / "g-twice.tar").write_bytes(_member("t.jpg", jpg) + _member("t.jpg", jpg) + _member("u.png", jpg)
                                         + _end())
    (folder / "h-garbage-inside.tar").write_bytes(_member("v.jpg", jpg) + _member("w.jpg", jpg)
                                                  + os.urandom(512) + _member("z.jpg", jpg) + _end())
    huge_name = tarfile.TarInfo("p" * 300 + ".jpg")  # a GNU long-name header claiming 2 GB
    raw = bytearray(huge_name.tobuf(format=tarfile.GNU_FORMAT)[:512])
    raw[124:136] = b"%011o\0" % (2 << 30)
    raw[148:156] = b" " * 8
    raw[148:155] = b"%06o\0" % sum(raw)
    (folder / "i-longname.tar").write_bytes(_member("q.jpg", jpg) + bytes(raw) + b"x" * 5000)
    return folder


def test_hostile_tars_give_counts_not_crashes(hostile, capsys):
    assert main(["index", str(hostile)]) == 0
    out = capsys.readouterr().out
    assert "9 tars: 6 indexed" in out and "3 excluded" in out
    assert "excluded: a-junk.tar: not a tar" in out and "excluded: b-empty.tar: empty file" in out
    assert "excluded: c-gzip.tar: gzip-compressed" in out
    manifest = json.loads((hostile / "vldata.json").read_text())
    shards = {sh["path"]: sh for sh in manifest["splits"]["train"]["shards"]}
    assert shards["d-claims.tar"]["skipped"] == {"truncated": 1}
    assert "1073741824" in shards["d-claims.tar"]["ended_early"]
    assert shards["f-many.tar"]["skipped"] == {"too_many_members": 1}
    assert shards["g-twice.tar"]["skipped"] == {"duplicate_member": 1}
    assert "invalid header" in shards["h-garbage-inside.tar"]["ended_early"]
    assert "extended header" in shards["i-longname.tar"]["ended_early"]
    many = json.loads((hostile / "f-many.idx.json").read_text())
    assert many["stats"]["skipped_keys"] == {"too_many_members": ["m"]} and many["samples"][0][0] == "n"

    src = vldata.open(hostile)
    keys = [src[i]["key"] for i in range(len(src))]
    # d: "ok" (the cut "big" dropped); e: keys as webdataset gives them, never used as paths;
    # f: "n"; g: "u"; h: "v" (w was the last before the garbage: maybe incomplete); i: nothing complete
    assert keys == ["ok", "../x", "/abs/y", "ok", "n", "u", "v"]
    assert src[1]["text"] == "up" and src[1]["image"] == _image("JPEG", 1)
    expected = [s["__key__"] for s in webdataset_reads([hostile / "e-paths.tar"])]
    assert expected == ["../x", "/abs/y", "ok"]


@pytest.mark.parametrize("name", ["k.jpg", "no_dot", "__meta__", "dir/"])
def test_a_scan_never_skips_past_the_end(name):
    """A header claiming 2**60 bytes (of a member that is kept or not): tarfile would try to skip them;
    the scan stops at the file's end."""
    info = tarfile.TarInfo(name.rstrip("/"))
    info.size, info.type = 1 << 60, tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
    data = _member("a.jpg", b"1") + _member("b.jpg", b"2") + info.tobuf(format=tarfile.GNU_FORMAT) + b"x" * 100
    result = tar_scan.scan(io.BytesIO(data), len(data), PlainLayout())
    kept = ["a", "b"] if name == "k.jpg" else ["a"]  # else b is the last sample before the cut
    assert [s[0] for s in result.samples] == kept and result.skipped == {"truncated": 1}


def test_unusable_indexes_are_refused_in_one_line(tars, tmp_path):
    idx = tmp_path / "idx"
    assert main(["index", str(tars), "--index-dir", str(idx)]) == 0
    manifest = json.loads((idx / "vldata.json").read_text())
    manifest["splits"]["train"]["shards"][0]["index"] = "../../elsewhere.idx.json"
    (idx / "vldata.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="points outside the folder"):
        vldata.open(tars, index_dir=str(idx))
    (idx / "vldata.json").write_text("{not json")
    with pytest.raises(ShardError, match="unreadable manifest"):
        vldata.open(tars, index_dir=str(idx))
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(ShardError, match="cannot be written"):
        vldata.open(tars, index_dir=str(blocked / "idx"))


def test_cli_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    assert main(["index", str(tmp_path)]) == 2
    assert "no .tar files" in capsys.readouterr().err
    assert main(["index", f"{tmp_path}/{{0..2}}.tar"]) == 2  # a pattern that names no existing tar
    assert "none of its 3 tars can be read (not found)" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no parquet dataset or webdataset tars"):
        vldata.open(f"{tmp_path}/{{0..2}}.tar")
    (tmp_path / "x.tar").write_bytes(b"")
    assert main(["index", str(tmp_path), "--image", ";"]) == 2
    assert "no member suffix" in capsys.readouterr().err
