"""A built dataset is untrusted input (it may come from the Hub): a manifest or member index that
points outside its folder, at a device, or past the end of a shard, and shards with bytes changed,
give a ``ShardError`` (or a one-line ``validate`` problem) naming the file, and nothing outside the
folder is ever opened. A member the build did not write never becomes the image."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import vldata
from vldata.tools.inspect import read_samples, summary
from vldata.tools.validate import validate

OPENED: list[str] = []
_AUDITING = [False]


def _audit(event: str, args: tuple) -> None:
    if _AUDITING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def build(scin_built, tmp_path) -> Path:
    """A private copy of the SCIN build, and a secret file beside it that no reader may open."""
    out = tmp_path / "out"
    shutil.copytree(scin_built, out)
    (tmp_path / "secret.txt").write_text("AWS_SECRET=abcd1\n")
    return out


def _manifest(out: Path, fmt: str) -> dict:
    return json.loads((out / fmt / "vldata.json").read_text())


def _save(out: Path, fmt: str, manifest: dict) -> None:
    (out / fmt / "vldata.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("fmt,field", [("webdataset", "path"), ("webdataset", "index"), ("parquet", "path")])
@pytest.mark.parametrize("target", ["../../secret.txt", "/etc/passwd", "data/../../../secret.txt"])
def test_a_shard_path_outside_the_folder_is_refused(build, fmt, field, target):
    m = _manifest(build, fmt)
    m["splits"]["train"]["shards"][0][field] = target
    _save(build, fmt, m)
    with pytest.raises(vldata.ShardError, match="vldata.json: .*points outside the folder"):
        vldata.open(build, format=fmt)
    assert [p for p in validate(build) if "points outside" in p] == \
        [f"{build / fmt / 'vldata.json'}: {'member index' if field == 'index' else 'shard'} path {target!r} points outside the folder"]


def test_values_and_table_paths_outside_the_folder_are_refused(build):
    m = _manifest(build, "parquet")
    m["tables"] = {"classes": {"path": "../secret.txt", "num_rows": 1, "sha256": "0" * 64}}
    _save(build, "parquet", m)
    assert any("table 'classes' path '../secret.txt' points outside" in p for p in validate(build))
    with pytest.raises(vldata.ShardError):
        vldata.open(build, format="parquet")


def test_a_link_to_a_device_or_outside_is_not_read(build):
    m = _manifest(build, "webdataset")
    shard = build / "webdataset" / m["splits"]["train"]["shards"][0]["path"]
    shard.unlink()
    shard.symlink_to("/dev/zero")
    src = vldata.open(build, format="webdataset")
    with pytest.raises(vldata.ShardError, match="leads outside|not a regular file"):
        src[0]
    proc = subprocess.run([sys.executable, "-m", "vldata.cli", "validate", str(build)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{shard}: leads outside {build / 'webdataset'}" in proc.stdout


def test_index_offsets_past_the_shard_are_a_shard_error(build):
    m = _manifest(build, "webdataset")
    index = build / "webdataset" / m["splits"]["train"]["shards"][0]["index"]
    doc = json.loads(index.read_text())
    doc["samples"][1][1][0][1] = 10**12  # an offset far past the end
    index.write_text(json.dumps(doc))
    src = vldata.open(build, format="webdataset")
    src[0]
    with pytest.raises(vldata.ShardError, match="member index entry of sample 1 does not fit"):
        src[1]


def test_an_undeclared_member_never_becomes_the_image(build):
    """A tar rewritten with ``KEY.pyd`` before the real image: the reader ignores it, validate names it."""
    m = _manifest(build, "webdataset")
    info = m["splits"]["train"]["shards"][0]
    tar_path, index_path = build / "webdataset" / info["path"], build / "webdataset" / info["index"]
    with tarfile.open(tar_path) as t:
        members = [(mem, t.extractfile(mem).read()) for mem in t]
    first_key = members[0][0].name.split(".")[0]
    buf = io.BytesIO()
    located: dict[str, list] = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for mem, data in [(tarfile.TarInfo(f"{first_key}.pyd"), b"import os; os.system('x')")] + members:
            mem.size = len(data)
            t.addfile(mem, io.BytesIO(data))
            key, _, suffix = mem.name.partition(".")
            padded = -(-len(data) // 512) * 512
            located.setdefault(key, []).append([suffix, t.offset - padded, len(data)])
    tar_path.write_bytes(buf.getvalue())
    index_path.write_text(json.dumps({"samples": [[k, v] for k, v in located.items()]}))
    info["num_bytes"] = len(buf.getvalue())
    _save(build, "webdataset", m)
    sample = vldata.open(build, format="webdataset")[0]
    assert sample["key"] == first_key and "pyd" not in sample
    assert sample["image"] == next(d for mem, d in members if mem.name.startswith(first_key + ".") and
                                   mem.name.rsplit(".", 1)[1] in ("png", "jpg", "webp") and mem.name.count(".") == 1)
    assert any(f"sample {first_key} has undeclared member .pyd" in p for p in validate(build))


def test_validate_opens_a_compressed_tar_as_what_it_is_not(build):
    """A shard replaced by a gzip "tar" holding a 256 MB member (250 KB on disk): validate names it
    without decompressing it."""
    import gzip

    m = _manifest(build, "webdataset")
    info = m["splits"]["train"]["shards"][0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        member = tarfile.TarInfo("x.png")
        member.size = 256 << 20
        t.addfile(member, io.BytesIO(bytes(member.size)))
    data = gzip.compress(buf.getvalue(), mtime=0)
    (build / "webdataset" / info["path"]).write_bytes(data)
    problems = validate(build / "webdataset")
    assert any(p.startswith(f"{build / 'webdataset' / info['path']}: unreadable tar") for p in problems)


# --------------------------------------------------------------------------------------------
# Fuzz: seeded corruptions of manifests, member indexes and shards


HOSTILE = ["../../secret.txt", "/dev/zero", "", "..", -1, 10**15, None, "x" * 5000, ["a"], {"b": 1}, 3.5]


def _corrupt(out: Path, pristine: Path, rng: random.Random) -> str:
    """One seeded corruption of ``out`` (a copy of ``pristine``, whose manifests say where things are)."""
    fmt = rng.choice(["webdataset", "parquet"])
    kind = rng.choice(["manifest_field", "manifest_bytes", "index", "shard_bytes", "truncate"])
    folder = out / fmt
    shard = rng.choice(_manifest(pristine, fmt)["splits"]["train"]["shards"])
    try:
        m = json.loads((folder / "vldata.json").read_text())
        m["splits"]["train"]["shards"][0].keys()
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):  # an earlier corruption broke it
        kind = "shard_bytes"
    if kind == "manifest_field":
        shard = rng.choice(m["splits"]["train"]["shards"])
        target = rng.choice([shard, m["splits"]["train"], m])
        key = rng.choice(sorted(target))
        target[key] = rng.choice(HOSTILE)
        (folder / "vldata.json").write_text(json.dumps(m))
    elif kind == "manifest_bytes" or (kind == "index" and fmt == "parquet"):
        data = bytearray((folder / "vldata.json").read_bytes())
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.choice(b'"{}[],:\\\x00\r/.9')
        (folder / "vldata.json").write_bytes(bytes(data))
    elif kind == "index":
        index = folder / shard["index"]
        doc = json.loads(index.read_text())
        if not doc["samples"]:
            return f"{fmt}/nothing"
        entry = rng.choice(doc["samples"])
        member = rng.choice(entry[1])
        member[rng.choice([0, 1, 2])] = rng.choice(HOSTILE)
        index.write_text(json.dumps(doc))
    else:
        path = folder / shard["path"]
        data = bytearray(path.read_bytes())
        if kind == "truncate":
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
    return f"{fmt}/{kind}"


def _exercise(out: Path) -> None:
    for fmt in ("webdataset", "parquet"):
        try:
            src = vldata.open(out, format=fmt)
            for i in range(len(src)):
                src[i]
        except vldata.ShardError as e:
            assert "\n" not in str(e) and str(out) in str(e)
    problems = validate(out)
    assert all("\n" not in p for p in problems)
    try:
        summary(out)
        read_samples(out, n=4)
    except vldata.ShardError as e:
        assert str(out) in str(e)


@pytest.mark.parametrize("seed", range(200))
def test_fuzzed_builds_read_or_name_the_shard_and_open_nothing_outside(scin_built, tmp_path_factory, seed):
    rng = random.Random(seed)
    root = tmp_path_factory.mktemp(f"fuzz{seed}")
    out = root / "out"
    shutil.copytree(scin_built, out)
    secret = root / "secret.txt"
    secret.write_text("AWS_SECRET=abcd1\n")
    what = [_corrupt(out, scin_built, rng) for _ in range(rng.randint(1, 3))]
    OPENED.clear()
    _AUDITING[0] = True
    try:
        _exercise(out)
    finally:
        _AUDITING[0] = False
    outside = [p for p in OPENED if p in ("/dev/zero", "/etc/passwd") or Path(p).resolve() == secret.resolve()]
    assert outside == [], (seed, what)


@pytest.mark.parametrize("json_features", [[], "x", 5])
def test_a_manifest_whose_json_features_are_not_an_object_is_refused(build, json_features):
    m = _manifest(build, "webdataset")
    m["features"]["json"] = json_features
    _save(build, "webdataset", m)
    with pytest.raises(vldata.ShardError, match="'features.json' is not an object"):
        vldata.open(build, format="webdataset")
    assert f"{build / 'webdataset' / 'vldata.json'}: 'features.json' is not an object" in validate(build)
