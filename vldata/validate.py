"""Re-read a built dataset and say exactly what is wrong with it, naming the file.

Checks, per format folder: the manifest parses; every shard it lists exists with the recorded size
and sha256; every shard reads to the end (a truncated tar or parquet names itself) with the recorded
number of samples, valid unique keys and, for parquet, the declared schema; every webdataset sample
has its primary image, ``.txt`` and ``.json``; README.md carries a YAML header; croissant.json
validates; and the build's accounting (``build/stats.json``) balances and matches the manifest.
It only reads, from a local folder or any fsspec URL (a build uploaded to s3://, served over http).
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from .engine import FORMATS
from .output import MANIFEST
from .schema import valid_key
from .shards import stream_sha256
from .storage import is_remote, local_path


class Location:
    """A file or folder on some fsspec filesystem, with the few path operations validation needs;
    ``str()`` is the path as the user gave it, so messages name files the way they were asked for."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path.rstrip("/") or "/"

    @classmethod
    def of(cls, path: str | Path) -> Location:
        if is_remote(path):
            fs, root = fsspec.core.url_to_fs(str(path))
            loc = cls(fs, root)
            loc._shown = str(path).rstrip("/")
            return loc
        return cls(LocalFileSystem(), str(local_path(path)))

    def __truediv__(self, rel: str) -> Location:
        child = Location(self.fs, f"{self.path}/{rel}")
        if hasattr(self, "_shown"):
            child._shown = f"{self._shown}/{rel}"
        return child

    def __str__(self) -> str:
        return getattr(self, "_shown", self.path)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        parent = Location(self.fs, self.path.rsplit("/", 1)[0] or "/")
        if hasattr(self, "_shown"):
            parent._shown = self._shown.rsplit("/", 1)[0]
        return parent

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def size(self) -> int:
        return self.fs.size(self.path)

    def open(self):
        return self.fs.open(self.path, "rb")

    def read_text(self) -> str:
        with self.open() as f:
            return f.read().decode("utf-8")

    def sha256(self) -> str:
        with self.open() as f:
            return stream_sha256(f)


def format_folders(path: Path) -> list[Path]:
    """The format folders under a local OUT, or ``path`` itself when it is one."""
    path = Path(path)
    if (path / MANIFEST).exists():
        return [path]
    return [path / f for f in FORMATS if (path / f).is_dir()]


def _format_locations(path: Location) -> list[Location]:
    if (path / MANIFEST).exists():
        return [path]
    # over http a folder cannot be listed, but its manifest can be asked for
    return [path / f for f in FORMATS if (path / f / MANIFEST).exists() or (path / f).is_dir()]


def read_manifest(folder: Location) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def validate(path: str | Path) -> list[str]:
    """All problems found (empty when the dataset is sound). ``path``: OUT or a format folder,
    local or an fsspec URL."""
    path = Location.of(path)
    folders = _format_locations(path)
    if not folders:
        return [f"{path}: no parquet/ or webdataset/ folder with a {MANIFEST}"]
    problems: list[str] = []
    for folder in folders:
        problems += _validate_folder(folder)
    stats_path = (path if not (path / MANIFEST).exists() else path.parent) / "build" / "stats.json"
    if stats_path.exists():
        problems += _validate_stats(stats_path, folders)
    return problems


def _validate_folder(folder: Location) -> list[str]:
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return [f"{folder / MANIFEST}: missing"]
    except json.JSONDecodeError as e:
        return [f"{folder / MANIFEST}: not valid JSON ({e})"]
    problems: list[str] = []
    seen_keys: set[str] = set()
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            file = folder / shard["path"]
            if not file.exists():
                problems.append(f"{file}: listed in the manifest but missing")
                continue
            size = file.size()
            if size != shard["num_bytes"]:
                problems.append(f"{file}: {size} bytes, manifest says {shard['num_bytes']} (truncated or altered)")
            if file.sha256() != shard["sha256"]:
                problems.append(f"{file}: sha256 differs from the manifest (altered)")
            if manifest["format"] == "parquet":
                problems += _read_parquet(file, shard["num_samples"], seen_keys, manifest)
            else:
                problems += _read_tar(file, shard["num_samples"], seen_keys, manifest,
                                      folder / shard["index"] if shard.get("index") else None)
    for name, table in manifest.get("tables", {}).items():
        file = folder / table["path"]
        if not file.exists():
            problems.append(f"{file}: side table {name} listed in the manifest but missing")
        elif file.sha256() != table["sha256"]:
            problems.append(f"{file}: sha256 differs from the manifest (altered)")
        elif pq.ParquetFile(file.open()).metadata.num_rows != table["num_rows"]:
            problems.append(f"{file}: row count differs from the manifest")
    problems += _validate_card(folder)
    return problems


def _read_parquet(file: Location, expected: int, seen: set[str], manifest: dict) -> list[str]:
    import datasets

    try:
        pf = pq.ParquetFile(file.open())
        declared = datasets.Features.from_dict(manifest["features"]).arrow_schema
        if not pf.schema_arrow.remove_metadata().equals(declared.remove_metadata()):
            return [f"{file}: schema differs from the manifest's features"]
        n = 0
        problems = []
        for i in range(pf.num_row_groups):
            keys = pf.read_row_group(i, columns=["key"]).column("key").to_pylist()
            n += len(keys)
            problems += _check_keys(file, keys, seen)
            pf.read_row_group(i)  # every column must decode
    except Exception as e:
        return [f"{file}: unreadable parquet ({type(e).__name__}: {e})"]
    if n != expected:
        problems.append(f"{file}: {n} rows, manifest says {expected}")
    return problems


def _read_tar(file: Location, expected: int, seen: set[str], manifest: dict, index: Location | None) -> list[str]:
    samples: dict[str, set[str]] = {}
    order: list[str] = []
    located: list[list] = []  # [key, [[suffix, data offset, size], ...]], as the member index records it
    try:
        with file.open() as f, tarfile.open(fileobj=f, mode="r") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                key_, _, suffix_ = base.partition(".")
                if not located or located[-1][0] != key_:
                    located.append([key_, []])
                located[-1][1].append([suffix_, member.offset_data, member.size])
                key, _, suffix = base.partition(".")
                if key not in samples:
                    samples[key] = set()
                    order.append(key)
                samples[key].add(suffix)
                data = tar.extractfile(member)
                if data is not None:
                    data.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        return [f"{file}: unreadable tar ({type(e).__name__}: {e})"]
    problems = _check_keys(file, order, seen)
    primary = {"jpg", "png", "webp"}
    for key in order:
        members = samples[key]
        missing = [m for m in ("txt", "json") if m not in members]
        if not members & primary:
            missing.append("primary image")
        if missing:
            problems.append(f"{file}: sample {key} lacks {', '.join(missing)}")
    if len(order) != expected:
        problems.append(f"{file}: {len(order)} samples, manifest says {expected}")
    if index is None:
        problems.append(f"{file}: the manifest lists no member index")
    elif not index.exists():
        problems.append(f"{index}: member index missing")
    elif json.loads(index.read_text()).get("samples") != located:
        problems.append(f"{index}: member index does not match {file.name}")
    return problems


def _check_keys(file: Location, keys: list[str], seen: set[str]) -> list[str]:
    problems = []
    for k in keys:
        if not valid_key(k):
            problems.append(f"{file}: invalid key {k!r}")
        elif k in seen:
            problems.append(f"{file}: duplicate key {k!r}")
        seen.add(k)
    return problems


def _validate_card(folder: Location) -> list[str]:
    from .croissant import validate_croissant

    problems = []
    readme = folder / "README.md"
    if not readme.exists():
        problems.append(f"{readme}: missing")
    elif not readme.read_text().startswith("---\n"):
        problems.append(f"{readme}: no YAML header")
    croissant = folder / "croissant.json"
    if not croissant.exists():
        problems.append(f"{croissant}: missing")
    else:
        if isinstance(croissant.fs, LocalFileSystem):
            messages = validate_croissant(croissant.path)
        else:  # mlcroissant reads local files only
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "croissant.json"
                local.write_text(croissant.read_text(), encoding="utf-8")
                messages = validate_croissant(local)
        problems += [f"{croissant}: {msg}" for msg in messages]
    return problems


def _validate_stats(stats_path: Location, folders: list[Location]) -> list[str]:
    stats = json.loads(stats_path.read_text())
    problems = []
    for split, s in stats["splits"].items():
        if s["input_rows"] != s["written"] + s["failed"] + s["filtered"] + s["duplicates"]:
            problems.append(f"{stats_path}: split {split} accounting does not balance")
        for folder in folders:
            m = read_manifest(folder) if (folder / MANIFEST).exists() else None
            if m and split in m["splits"] and m["splits"][split]["num_samples"] != s["written"]:
                problems.append(f"{folder / MANIFEST}: split {split} has {m['splits'][split]['num_samples']} "
                                f"samples, stats.json says {s['written']} written")
    return problems
