"""Re-read a built dataset and say exactly what is wrong with it, naming the file.

Checks, per format folder: the manifest parses; every shard it lists exists with the recorded size
and sha256; every shard reads to the end (a truncated tar or parquet names itself) with the recorded
number of samples, valid unique keys and, for parquet, the declared schema; every webdataset sample
has its primary image, ``.txt`` and ``.json``; the files for trainers beside the tars (timm's
``_info.json``, open_clip's ``sizes.json``, Energon's ``.nv-meta/`` and ``<shard>.tar.idx``) are listed
in the manifest, match their recorded size and sha256 and agree with the tars (counts, file names,
sample offsets); README.md carries a YAML header; croissant.json validates; and the build's
accounting (``build/stats.json``) balances and matches the manifest; every subset (``vldata select``)
has its recorded size and sha256, lists samples of its splits in order with the recorded counts, and
is the same in both format folders.
It only reads, from a local folder or any fsspec URL (a build uploaded to s3://, served over http).
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from vldata.errors import ShardError, one_line
from vldata.layout import (MANIFEST, TRAINER_DOCUMENTS, MemberLayout, decode_offsets, escapes, format_folders,
                           manifest_problems, read_checked_manifest, read_manifest, sample_offsets, stats_file,
                           stream_sha256, tar_samples, trainer_documents, valid_key)
from vldata.read import subset as subsets


class Location:
    """A file or folder on some fsspec filesystem, with the few path operations validation needs;
    ``str()`` is the path as the user gave it, so messages name files the way they were asked for."""

    def __init__(self, fs, path: str, shown: str | None = None):
        self.fs, self.path = fs, path.rstrip("/") or "/"
        self.shown = shown or self.path

    @classmethod
    def of(cls, path: str | Path) -> Location:
        fs, root = fsspec.core.url_to_fs(str(path))
        return cls(fs, root, str(path).rstrip("/") or "/")

    def __truediv__(self, rel: str) -> Location:
        return Location(self.fs, f"{self.path}/{rel}", f"{self.shown}/{rel}")

    def at(self, path: str) -> Location:
        """Another path on the same filesystem, shown relative to how this one was given."""
        rel = path[len(self.path):].strip("/") if path.startswith(self.path) else None
        if rel is None:
            return Location(self.fs, path)
        return self / rel if rel else self

    def __str__(self) -> str:
        return self.shown

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

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


def validate(path: str | Path) -> list[str]:
    """All problems found (empty when the dataset is sound). ``path``: OUT or a format folder,
    local or an fsspec URL."""
    path = Location.of(path)
    folders = [path.at(f) for f in format_folders(path.path, path.fs, unfinished=True)]
    if not folders:
        return [f"{path}: no parquet/ or webdataset/ folder with a {MANIFEST}"]
    problems: list[str] = []
    for folder in folders:
        problems += _validate_folder(folder)
    problems += _compare_subsets(folders)
    stats_path = path.at(stats_file(path.path, path.fs))
    if stats_path.exists():
        problems += _validate_stats(stats_path, folders)
    return problems


def _validate_folder(folder: Location) -> list[str]:
    try:
        manifest = read_manifest(folder.path, folder.fs)
    except FileNotFoundError:
        return [f"{folder / MANIFEST}: missing"]
    except (ValueError, UnicodeDecodeError) as e:
        return [f"{folder / MANIFEST}: not valid JSON ({one_line(e)})"]
    unsound = manifest_problems(manifest)
    if unsound:  # nothing it names is opened
        return [f"{folder / MANIFEST}: {p}" for p in unsound]
    problems: list[str] = []
    seen_keys: set[str] = set()
    offsets: dict[str, list[int]] = {}  # tar path -> sample offsets read from the tar
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            file = folder / shard["path"]
            escape = _escapes(folder, file)
            if escape or not file.exists():
                problems.append(escape or f"{file}: listed in the manifest but missing")
                continue
            size = file.size()
            if size != shard["num_bytes"]:
                problems.append(f"{file}: {size} bytes, manifest says {shard['num_bytes']} (truncated or altered)")
            if file.sha256() != shard["sha256"]:
                problems.append(f"{file}: sha256 differs from the manifest (altered)")
            if manifest["format"] == "parquet":
                problems += _read_parquet(file, shard["num_samples"], seen_keys, manifest)
            else:
                index = folder / shard["index"] if shard.get("index") else None
                if index is not None and _escapes(folder, index):
                    problems.append(_escapes(folder, index))
                    continue
                problems += _read_tar(file, shard["num_samples"], seen_keys, manifest, index,
                                      offsets.setdefault(shard["path"], []))
    if manifest["format"] == "webdataset":
        problems += _validate_trainer_files(folder, manifest, offsets)
    for name, table in manifest.get("tables", {}).items():
        file = folder / table["path"]
        if _escapes(folder, file):
            problems.append(_escapes(folder, file))
        elif not file.exists():
            problems.append(f"{file}: side table {name} listed in the manifest but missing")
        elif file.sha256() != table["sha256"]:
            problems.append(f"{file}: sha256 differs from the manifest (altered)")
        elif pq.ParquetFile(file.open()).metadata.num_rows != table["num_rows"]:
            problems.append(f"{file}: row count differs from the manifest")
    for name, entry in manifest.get("subsets", {}).items():
        files = [entry.get("path"), *([entry["counts"].get("path")] if entry.get("counts") else [])]
        escaped = [_escapes(folder, folder / rel) for rel in files if isinstance(rel, str)]
        problems += [e for e in escaped if e] or subsets.read(folder.fs, folder.path, manifest, name)[1]
    problems += _validate_card(folder)
    return problems


def _compare_subsets(folders: list[Location]) -> list[str]:
    """Both format folders of a build must list the same subsets (one selection serves both)."""
    listed = {}
    for folder in folders:
        try:
            listed[folder] = {n: e.get("sha256") for n, e in (read_manifest(folder.path, folder.fs).get("subsets")
                                                               or {}).items()}
        except (OSError, ValueError, AttributeError):
            return []  # the folder's own check names its manifest
    if len(listed) < 2:
        return []
    (a, sa), (b, sb) = list(listed.items())[:2]
    return [f"{b / MANIFEST}: subset {n!r} differs from {a / MANIFEST}'s (select again to write both)"
            for n in sorted(set(sa) | set(sb)) if sa.get(n) != sb.get(n)]


def _escapes(folder: Location, file: Location) -> str | None:
    """Why a local file must not be read (``layout.escapes``); object stores and http have no links."""
    if not isinstance(file.fs, LocalFileSystem):
        return None
    problem = escapes(folder.path, file.path)
    return problem and problem.replace(file.path, str(file), 1).replace(folder.path, str(folder))


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
        return [f"{file}: unreadable parquet ({one_line(e)})"]
    if n != expected:
        problems.append(f"{file}: {n} rows, manifest says {expected}")
    return problems


def _read_tar(file: Location, expected: int, seen: set[str], manifest: dict, index: Location | None,
              offsets: list[int]) -> list[str]:
    """Problems of one tar; fills ``offsets`` with where each sample's first header starts and then
    where the end blocks start (what Energon's ``.tar.idx`` records), when the tar reads to its end."""
    located: list[list] = []  # [key, [[suffix, data offset, size], ...]], as the member index records it
    starts: list[int] = []
    problems: list[str] = []
    try:
        layout = MemberLayout.from_manifest(manifest)
        with file.open() as f, tarfile.open(fileobj=f, mode="r:") as tar:  # plain tar only, never decompressed
            for key, members in tar_samples(tar):
                located.append([key, [[suffix, m.offset_data, m.size] for suffix, m in members]])
                starts.append(members[0][1].offset)
                for _, m in members:
                    _read_through(tar.extractfile(m))  # every member must read to its end
                suffixes = [suffix for suffix, _ in members]
                wrong = MemberLayout.missing(suffixes)
                if wrong:
                    problems.append(f"{file}: sample {key} lacks {', '.join(wrong)}")
                wrong = layout.unexpected(suffixes)
                if wrong:
                    problems.append(f"{file}: sample {key} has {', '.join(wrong)}")
            offsets.extend([*starts, tar.offset])
    except (tarfile.TarError, OSError, EOFError) as e:
        return [f"{file}: unreadable tar ({one_line(e)})"]
    order = [key for key, _ in located]
    problems = _check_keys(file, order, seen) + problems
    if len(order) != expected:
        problems.append(f"{file}: {len(order)} samples, manifest says {expected}")
    if index is None:
        problems.append(f"{file}: the manifest lists no member index")
    elif not index.exists():
        problems.append(f"{index}: member index missing")
    else:
        try:
            recorded = json.loads(index.read_text())
        except (ValueError, UnicodeDecodeError):
            recorded = None
        if not isinstance(recorded, dict) or recorded.get("samples") != located:
            problems.append(f"{index}: member index does not match {file.name}")
    return problems


def _validate_trainer_files(folder: Location, manifest: dict, offsets: dict[str, list[int]]) -> list[str]:
    """The files timm, open_clip and Energon read beside the tars: each one listed in the manifest,
    present with its size and sha256, and saying what the tars say (a file altered together with its
    sha256 in the manifest is still caught here)."""
    if "trainer_files" not in manifest:
        return [f"{folder / MANIFEST}: lists no trainer files ({', '.join(TRAINER_DOCUMENTS)}, *.tar.idx); "
                "rebuild with this version"]
    tars = {split: [(sh["path"], sh["num_samples"]) for sh in info["shards"]]
            for split, info in manifest["splits"].items()}
    documents = trainer_documents(manifest["builder"], manifest["version"], tars)
    indexes = {sample_offsets(path): path for shards in tars.values() for path, _ in shards}
    listed = {f["path"]: f for f in manifest["trainer_files"]}
    problems = [f"{folder / rel}: not listed in the manifest's trainer_files"
                for rel in [*indexes, *documents] if rel not in listed]
    for rel, entry in listed.items():
        file = folder / rel
        escape = _escapes(folder, file)
        if escape or not file.exists():
            problems.append(escape or f"{file}: listed in the manifest but missing")
            continue
        if file.size() != entry["num_bytes"]:
            problems.append(f"{file}: {file.size()} bytes, manifest says {entry['num_bytes']} (truncated or altered)")
        if file.sha256() != entry["sha256"]:
            problems.append(f"{file}: sha256 differs from the manifest (altered)")
        with file.open() as f:
            data = f.read()
        if rel in documents:
            if _parsed(rel, data) != documents[rel]:
                problems.append(f"{file}: does not match the tars' names and sample counts")
        elif rel in indexes:
            read = offsets.get(indexes[rel])
            if read and decode_offsets(data) != read:  # (an unreadable tar is reported by itself)
                problems.append(f"{file}: sample offsets do not match {indexes[rel]}")
        else:
            problems.append(f"{file}: listed in trainer_files but not a file vldata writes")
    return problems


def _parsed(rel: str, data: bytes):
    """A JSON or YAML document, or None when it does not parse."""
    import yaml

    try:
        return yaml.safe_load(data) if rel.endswith(".yaml") else json.loads(data)
    except (ValueError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _read_through(f) -> None:
    """Read a member to its end in 1 MiB pieces (a tar member is never held whole)."""
    while f.read(1 << 20):
        pass


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
    from vldata.describe.croissant import validate_croissant

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
    try:
        stats = json.loads(stats_path.read_text())
        splits = {split: (s["input_rows"], s["written"], s["failed"], s["filtered"], s["duplicates"])
                  for split, s in stats["splits"].items()}
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as e:
        return [f"{stats_path}: unreadable ({one_line(e)})"]
    manifests = []
    for folder in folders:
        try:
            manifests.append((folder, read_checked_manifest(folder.path, folder.fs)))
        except (FileNotFoundError, ShardError):
            pass  # the folder's own check names its manifest
    problems = []
    for split, (input_rows, written, failed, filtered, duplicates) in splits.items():
        if input_rows != written + failed + filtered + duplicates:
            problems.append(f"{stats_path}: split {split} accounting does not balance")
        for folder, m in manifests:
            s = {"written": written}
            if split in m["splits"] and m["splits"][split]["num_samples"] != s["written"]:
                problems.append(f"{folder / MANIFEST}: split {split} has {m['splits'][split]['num_samples']} "
                                f"samples, stats.json says {s['written']} written")
    return problems
