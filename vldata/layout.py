"""The output contract as data: the names and shapes of what a build writes, in one place.

Everything another program relies on when it reads a build is decided here: the format folder names
and the manifest's file name, the shard, member-index, values and side-table file names, the sample
key rule, how a record's fields become the members of a webdataset sample (and back), how to find the
format folders of OUT, how to read a manifest, how files are replaced atomically, where the local
cache is, how the members of plain webdataset tars (written by anyone) become a sample, and what the
files for trainers beside our tars hold (timm's ``_info.json``, open_clip's ``sizes.json``,
Megatron-Energon's ``.nv-meta/`` and ``<shard>.tar.idx``). The writer, the reader, ``validate`` and
``inspect`` all use these definitions, so the contract is typed once.

A leaf module: it imports nothing from vldata but ``errors`` and knows no dataset, no Record class
and no pyarrow; a Record's member layout is derived from the Record by ``describe.schema``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST = "vldata.json"
MANIFEST_VERSION = 1
FORMATS = ("parquet", "webdataset")  # the order in which a build writes them
READ_PREFERENCE = ("webdataset", "parquet")  # which one ``open(OUT)`` reads when OUT holds both
BUILD_DIR = "build"
STATS = "stats.json"  # in BUILD_DIR
FAILURES = "failures.parquet"  # in BUILD_DIR
PLAN = "plan.json"  # in BUILD_DIR
CARD_FILES = ("README.md", "croissant.json")  # beside the manifest in every format folder

KEY_PATTERN = r"^[A-Za-z0-9_-]+$"
_KEY_RE = re.compile(KEY_PATTERN)
IMAGE_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}  # sniffed format -> member suffix
IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS.values())
# The primary image is always ``KEY.jpg``, whatever its format (kept as it came: JPEG, PNG or WebP,
# never re-encoded; ``KEY.json`` records it as ``<primary>_info.format``). Why one suffix: a webdataset
# folder's columns on the Hub (the viewer, ``datasets``) are its member suffixes, so a primary named
# by its format becomes up to three image columns, each empty where the others are filled, and
# ``datasets`` cannot even infer the features when the first samples differ; scripts written for
# img2dataset output (``to_tuple("jpg", "txt")``) would drop every PNG. Every reader we target finds
# the format in the bytes (Pillow, webdataset's decoders, ``datasets.Image``, timm, open_clip,
# Energon, vldata). Other image fields are columns of their own and keep their format's suffix.
PRIMARY_MEMBER = "jpg"
MAX_SAMPLE_BYTES = 1 << 30  # one sample's members, read in one request: more is a broken index, not data


def valid_key(key: str) -> bool:
    """A sample key: non-empty, only ``[A-Za-z0-9_-]`` (safe in tar member names and URLs)."""
    return bool(_KEY_RE.match(key))


def safe_key(text: str) -> str:
    """``text`` with every character a key may not hold replaced by ``_`` (``"invalid"`` when empty)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "invalid"


# --------------------------------------------------------------------------------------------
# File names inside a format folder (all relative to it)


def parquet_shard(split: str, i: int, n: int) -> str:
    return f"data/{split}-{i:05d}-of-{n:05d}.parquet"


def tar_shard(split: str, i: int) -> str:
    return f"{split}-{i:06d}.tar"


def member_index(tar: str) -> str:
    """The member index beside a tar: byte offset and size of every member, by sample."""
    return tar.removesuffix(".tar") + ".idx.json"


MEMBER_INDEX_FORMAT = "vldata-tar-index-1"


# --------------------------------------------------------------------------------------------
# Files for trainers, beside the tars of a webdataset folder: what timm, open_clip and
# Megatron-Energon read instead of counting samples (or running ``energon prepare``) themselves

TIMM_INFO = "_info.json"  # timm's ``wds/`` reader: splits.<split>.{name, num_samples, filenames, shard_lengths}
OPEN_CLIP_SIZES = "sizes.json"  # open_clip's get_dataset_size: {tar basename: samples}
ENERGON_DIR = ".nv-meta"  # Megatron-Energon's dataset folder, beside the tars
ENERGON_INFO = f"{ENERGON_DIR}/.info.json"  # {"shard_counts": {tar: samples}}
ENERGON_SPLIT = f"{ENERGON_DIR}/split.yaml"  # {"split_parts": {split: [tar, ...]}}
ENERGON_DATASET = f"{ENERGON_DIR}/dataset.yaml"  # sample type and field map
ENERGON_VAL_ALIAS = ("val", "validation")  # Energon's get_val_dataset reads split part "val"
# A captioning sample: the primary image (``KEY.jpg``; png and webp too, as plain tars name them) and
# the main text. Energon decodes the image by its bytes, whatever the suffix.
ENERGON_DATASET_DOC = {"sample_type": {"__module__": "megatron.energon", "__class__": "CaptioningSample"},
                       "field_map": {"image": "jpg,png,webp", "caption": "txt"}}
TRAINER_DOCUMENTS = (TIMM_INFO, OPEN_CLIP_SIZES, ENERGON_INFO, ENERGON_SPLIT, ENERGON_DATASET)


def sample_offsets(tar: str) -> str:
    """Energon's index beside a tar (``<shard>.tar.idx``): the byte offset of each sample's first
    header, then the offset where the archive's end blocks start, as little-endian uint64."""
    return tar + ".idx"


def encode_offsets(offsets: list[int]) -> bytes:
    return struct.pack(f"<{len(offsets)}Q", *offsets)


def decode_offsets(data: bytes) -> list[int] | None:
    """The offsets of a ``.tar.idx`` file, or None when its length is not a whole number of uint64."""
    if len(data) % 8:
        return None
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


def trainer_documents(name: str, version: str, splits: dict[str, list[tuple[str, int]]]) -> dict[str, Any]:
    """The content of each of ``TRAINER_DOCUMENTS`` (JSON/YAML-ready objects) for a webdataset folder
    whose ``splits`` are {split: [(tar path, samples), ...]} in shard order. Paths are relative to
    the folder, which is what each client resolves them against (timm joins ``filenames`` to its
    root; open_clip looks for ``sizes.json`` beside the first tar and keys it by basename; Energon
    joins split parts and shard counts to the folder holding ``.nv-meta``). The writer writes these
    and ``validate`` compares the files with them, so both follow one definition."""
    shards = [(path, n) for tars in splits.values() for path, n in tars]
    # Energon cannot open a tar without members (it has no header to read): a split with no samples
    # keeps its empty tar in the counts but lists no part
    parts = {split: [path for path, n in tars if n] for split, tars in splits.items()}
    alias, source = ENERGON_VAL_ALIAS
    if source in parts and alias not in parts:
        parts[alias] = parts[source]
    return {
        TIMM_INFO: {"name": name, "version": version, "splits": {
            split: {"name": split, "num_samples": sum(n for _, n in tars), "filenames": [p for p, _ in tars],
                    "shard_lengths": [n for _, n in tars]} for split, tars in splits.items()}},
        OPEN_CLIP_SIZES: {PurePosixPath(path).name: n for path, n in shards},
        ENERGON_INFO: {"shard_counts": dict(shards)},
        ENERGON_SPLIT: {"split_parts": parts},
        ENERGON_DATASET: ENERGON_DATASET_DOC,
    }


def data_files(fmt: str, split: str) -> str:
    """The glob that selects one split's shards (the card's ``configs`` entry)."""
    return f"data/{split}-*.parquet" if fmt == "parquet" else f"{split}-*.tar"


def values_file(split: str) -> str:
    return f"values/{split}.parquet"


def table_file(name: str) -> str:
    return f"tables/{name}.parquet"


def inside(rel: str) -> bool:
    """Whether a path from a manifest is relative and stays inside its folder."""
    p = PurePosixPath(rel)
    return bool(rel) and "\\" not in rel and not p.is_absolute() and ".." not in p.parts and ":" not in p.parts[0]


# --------------------------------------------------------------------------------------------
# Finding and reading format folders (local paths or any fsspec filesystem)


def _local_fs():
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem()


def format_folders(root: str | Path, fs=None, unfinished: bool = False,
                   order: tuple[str, ...] = FORMATS) -> list[str]:
    """The format folders of OUT (``root`` itself when it is one), in ``order``. A folder counts when
    it has a manifest; with ``unfinished``, also when it merely exists (so that a caller can say the
    manifest is missing). Works over http too, where folders cannot be listed."""
    fs = fs or _local_fs()
    root = str(root).rstrip("/") or "/"
    if fs.exists(f"{root}/{MANIFEST}"):
        return [root]
    return [f"{root}/{f}" for f in order
            if fs.exists(f"{root}/{f}/{MANIFEST}") or (unfinished and fs.isdir(f"{root}/{f}"))]


def read_manifest(folder: str | Path, fs=None) -> dict:
    fs = fs or _local_fs()
    with fs.open(f"{str(folder).rstrip('/')}/{MANIFEST}", "rb") as f:
        return json.load(f)


def manifest_problems(manifest: Any) -> list[str]:
    """What makes a manifest unusable or unsafe, as short phrases (empty when it is sound): a format
    folder downloaded from anywhere is untrusted, so every path must stay inside the folder and every
    count must be a non-negative integer before a reader trusts it."""
    if not isinstance(manifest, dict):
        return ["not a JSON object"]
    problems = []
    if manifest.get("format") not in FORMATS:
        problems.append(f"format {manifest.get('format')!r} is not one of {', '.join(FORMATS)}")
    for name, kind in (("builder", str), ("version", str), ("primary_image", str), ("features", dict)):
        if not isinstance(manifest.get(name), kind):
            problems.append(f"{name!r} is not a {kind.__name__}")
    if isinstance(manifest.get("features"), dict) and not isinstance(manifest["features"].get("json", {}), dict):
        problems.append("'features.json' is not an object")
    members = manifest.get("image_members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        problems.append("'image_members' is not a list of member suffixes")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        return problems + ["no 'splits' object"]

    def path(rel: Any, what: str) -> None:
        if not isinstance(rel, str) or not inside(rel):
            problems.append(f"{what} path {rel!r} points outside the folder")

    def count(value: Any, what: str) -> None:
        if type(value) is not int or value < 0:
            problems.append(f"{what} {value!r} is not a count")

    for split, info in splits.items():
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list) or not all(isinstance(sh, dict) for sh in shards):
            problems.append(f"split {split!r} has no list of shards")
            continue
        if not isinstance(split, str) or not valid_key(split):
            problems.append(f"split name {split!r} is not a file stem")
        count(info.get("num_samples"), f"split {split!r} num_samples")
        if info.get("num_samples") != sum(sh.get("num_samples") for sh in shards if type(sh.get("num_samples")) is int):
            problems.append(f"split {split!r} num_samples is not the sum of its shards'")
        count(info.get("num_bytes"), f"split {split!r} num_bytes")
        for sh in shards:
            path(sh.get("path"), "shard")
            count(sh.get("num_samples"), f"shard {sh.get('path')!r} num_samples")
            count(sh.get("num_bytes"), f"shard {sh.get('path')!r} num_bytes")
            if "index" in sh:
                path(sh["index"], "member index")
            for n in sh.get("row_groups") or []:
                count(n, f"shard {sh.get('path')!r} row group size")
        if isinstance(info.get("values"), dict):
            path(info["values"].get("path"), "values")
    files = manifest.get("trainer_files", [])
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        problems.append("'trainer_files' is not a list of files")
    else:
        for f in files:
            path(f.get("path"), "trainer file")
            count(f.get("num_bytes"), f"trainer file {f.get('path')!r} num_bytes")
            if not isinstance(f.get("sha256"), str):
                problems.append(f"trainer file {f.get('path')!r} has no sha256")
    if "plain" in manifest:
        problems += _plain_problems(manifest["plain"])
    chosen = manifest.get("subsets", {})
    if not isinstance(chosen, dict) or not all(isinstance(e, dict) for e in chosen.values()):
        problems.append("'subsets' is not an object of subsets")
    else:
        for name, entry in chosen.items():
            path(entry.get("path"), f"subset {name!r}")
            if entry.get("counts") is not None:
                path(entry["counts"].get("path") if isinstance(entry["counts"], dict) else None,
                     f"subset {name!r} counts")
    tables = manifest.get("tables") or {}
    if not isinstance(tables, dict):
        return problems + ["'tables' is not an object"]
    for name, table in tables.items():
        path(table.get("path") if isinstance(table, dict) else None, f"table {name!r}")
    return problems


def _plain_problems(plain: Any) -> list[str]:
    """What makes the ``plain`` section (the member choice of tars vldata did not write) unusable."""
    if not isinstance(plain, dict):
        return ["'plain' is not an object"]
    problems = []
    images = plain.get("image")
    if not isinstance(images, list) or not images or not all(isinstance(m, str) and m for m in images):
        problems.append("'plain.image' is not a list of member suffixes")
    if not isinstance(plain.get("text"), str) or not plain.get("text"):
        problems.append("'plain.text' is not a member suffix")
    for name in ("source", "root"):
        if not isinstance(plain.get(name), str):
            problems.append(f"'plain.{name}' is not a string")
    excluded = plain.get("excluded", [])
    if not isinstance(excluded, list) or not all(
            isinstance(e, dict) and isinstance(e.get("path"), str) and inside(e["path"]) for e in excluded):
        problems.append("'plain.excluded' is not a list of tars inside the folder")
    return problems


def read_checked_manifest(root: str | Path, fs=None) -> dict:
    """The manifest of a format folder, refused with a ``ShardError`` naming it when it is not JSON or
    not sound (``manifest_problems``). What every reader of a build calls before trusting a path."""
    from vldata.errors import ShardError

    where = f"{str(root).rstrip('/')}/{MANIFEST}"
    try:
        manifest = read_manifest(root, fs)
    except (ValueError, UnicodeDecodeError) as e:
        raise ShardError(f"{where}: unreadable manifest ({type(e).__name__})") from None
    problems = manifest_problems(manifest)
    if problems:
        raise ShardError(f"{where}: {problems[0]}")
    return manifest


def escapes(folder: str | Path, path: str | Path) -> str | None:
    """Why a local file under ``folder`` must not be read, or None: a link that leads outside the
    folder, or something that is not a regular file (a device never ends). In a Hugging Face cache
    snapshot (``.../datasets--ORG--NAME/snapshots/REV/``) every file is a link into the repo's
    ``blobs/``: links there are inside too."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    if not any(real.startswith(r.rstrip(os.sep) + os.sep) for r in (root, *_hub_blobs(root))):
        return f"{path}: leads outside {folder}"
    if os.path.exists(real) and not os.path.isfile(real):
        return f"{path}: not a regular file"
    return None


def _hub_blobs(root: str) -> list[str]:
    """The ``blobs/`` folder of the Hugging Face cache repo whose snapshot holds ``root`` (or [])."""
    for folder in (Path(root), *Path(root).parents):
        blobs = folder.parent.parent / "blobs"
        if folder.parent.name == "snapshots" and blobs.is_dir():
            return [str(blobs)]
    return []


def cache_dir() -> Path:
    """The local cache: ``$VLDATA_CACHE``, else ``~/.cache/vldata`` (mirrored raw input, remote
    builds' work folders, member indexes of plain tars)."""
    return Path(os.environ.get("VLDATA_CACHE") or Path.home() / ".cache" / "vldata")


def cache_slot(kind: str, url: str) -> Path:
    """The cache folder for one URL (or pattern) of one kind: ``cache_dir()/kind/<sha256 of url>``."""
    return cache_dir() / kind / hashlib.sha256(url.encode()).hexdigest()[:16]


def stats_file(root: str | Path, fs=None) -> str:
    """OUT/build/stats.json, for OUT or for one of its format folders (a folder with a manifest)."""
    fs = fs or _local_fs()
    root = str(root).rstrip("/") or "/"
    out = root.rsplit("/", 1)[0] if fs.exists(f"{root}/{MANIFEST}") else root
    return f"{out}/{BUILD_DIR}/{STATS}"


# --------------------------------------------------------------------------------------------
# Writing files


def atomic_write(path: Path, data: bytes | str, fsync: bool = False) -> None:
    """Replace ``path`` with ``data`` in one step: readers see the old file or the new one, never a
    part. The temporary name carries the pid: an orphaned worker may still be writing its own."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def stream_sha256(f) -> str:
    """sha256 of what remains in the binary file object ``f`` (local or fsspec), read in 1 MiB chunks."""
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f)


# --------------------------------------------------------------------------------------------
# Webdataset members


@dataclass(frozen=True)
class MemberLayout:
    """How a record's fields become the members of its webdataset sample, and back.

    ``KEY.jpg`` is the primary image (field ``primary``, whatever its format: see ``PRIMARY_MEMBER``),
    ``KEY.<field>.<ext>`` another image field, ``KEY.<field>_<i>.<ext>`` item i of a list of images,
    ``KEY.txt`` the main text, ``KEY.<suffix>.txt`` an extra text member (``texts``: suffix -> field)
    and ``KEY.json`` every other field. Every suffix is lower case: webdataset and open_clip lower-case
    suffixes when they read and ``datasets`` does not, so a capital would name a member differently
    in different readers (``describe.schema.member_layout`` refuses a Record that would write one). The
    writer builds it from the Record; readers build it from a manifest (``from_manifest``), which
    gives the same images and lists.
    """

    primary: str = "image"
    images: tuple[str, ...] = ("image",)  # every image field (the primary too), in declaration order
    image_lists: tuple[str, ...] = ()  # those of ``images`` that are lists of images
    texts: tuple[tuple[str, str], ...] = ()  # (member suffix, field)
    declared: frozenset[str] = frozenset()  # every member suffix a folder holds (read from a manifest)

    # -- writing: a parquet-shaped row (image fields as {bytes, path} plus F_info) -> members

    def members(self, row: dict[str, Any], json_member: bytes) -> dict[str, bytes]:
        """Members of one sample in the order they are written: image fields in declaration order
        (a missing image has no member), txt, text members, json."""
        out: dict[str, bytes] = {}
        for name in self.images:
            value, info = row.get(name), row.get(f"{name}_info")
            if value is None:
                continue
            if name in self.image_lists:
                for i, (img, inf) in enumerate(zip(value, info)):
                    out[f"{name}_{i}.{IMAGE_EXTENSIONS[inf['format']]}"] = img["bytes"]
            else:
                suffix = PRIMARY_MEMBER if name == self.primary else f"{name}.{IMAGE_EXTENSIONS[info['format']]}"
                out[suffix] = value["bytes"]
        out["txt"] = row["text"].encode("utf-8")
        for suffix, name in self.texts:
            if row.get(name) is not None:
                out[f"{suffix}.txt"] = row[name].encode("utf-8")
        out["json"] = json_member
        return out

    # -- reading: members -> the sample dict every Source returns

    def sample(self, key: str, members: Iterable[tuple[str, bytes]]) -> dict[str, Any]:
        """``key``, ``text``, ``image`` (primary bytes), other images under their field name (lists in
        order), extra text members under ``<suffix>.txt`` and the fields of ``.json``."""
        sample: dict[str, Any] = {"key": key}
        lists: dict[str, dict[int, bytes]] = {}
        for suffix, data in members:
            if self.declared and suffix not in self.declared:
                continue  # a member the build did not write (``KEY.pyd``...) never becomes a field
            stem, _, ext = suffix.rpartition(".")
            if suffix == "txt":
                sample["text"] = data.decode("utf-8")
            elif suffix == "json":
                sample.update(json.loads(data))
            elif ext == "txt":
                sample[suffix] = data.decode("utf-8")
            elif not stem and ext in IMAGE_SUFFIXES:
                sample.setdefault("image", data)  # a second primary image is reported by validate
            elif ext in IMAGE_SUFFIXES:
                base, _, num = stem.rpartition("_")
                if base in self.image_lists and num.isdigit():
                    lists.setdefault(base, {})[int(num)] = data
                else:
                    sample[stem] = data
            else:
                sample[suffix] = data
        for base, items in lists.items():
            sample[base] = [items[i] for i in sorted(items)]
        return sample

    @staticmethod
    def missing(suffixes: Iterable[str]) -> list[str]:
        """What a sample with these member suffixes lacks of the required ones."""
        have = set(suffixes)
        missing = [m for m in ("txt", "json") if m not in have]
        if not have & IMAGE_SUFFIXES:
            missing.append("primary image")
        return missing

    def unexpected(self, suffixes: list[str]) -> list[str]:
        """Members a sample should not have: undeclared ones, repeated ones, a second primary image."""
        out = [f"undeclared member .{s}" for s in suffixes if self.declared and s not in self.declared]
        out += [f"member .{s} twice" for s in sorted({s for s in suffixes if suffixes.count(s) > 1})]
        if len([s for s in suffixes if s in IMAGE_SUFFIXES]) > 1:
            out.append("more than one primary image")
        return out

    @staticmethod
    def primary_member(members: dict[str, bytes]) -> bytes | None:
        return next((data for suffix, data in members.items() if suffix in IMAGE_SUFFIXES), None)

    @classmethod
    def from_manifest(cls, manifest: dict) -> MemberLayout:
        """The layout of a webdataset folder, from its manifest's features (the ``.json`` member
        describes every image field by its ``F_info``; text members are the ``<suffix>.txt`` features)."""
        images, lists = [], []
        for name, feature in manifest.get("features", {}).get("json", {}).items():
            is_list = isinstance(feature, dict) and feature.get("_type") in ("List", "Sequence")
            item = feature.get("feature") if is_list else feature
            if name.endswith("_info") and isinstance(item, dict) and {"format", "sha256"} <= set(item):
                images.append(name.removesuffix("_info"))
                if is_list:
                    lists.append(images[-1])
        features = manifest.get("features", {})
        declared = {"txt", "json", *manifest.get("image_members", []), *(n for n in features if n.endswith(".txt"))}
        # text members are read by their suffix alone
        return cls(manifest.get("primary_image", "image"), tuple(images), tuple(lists), declared=frozenset(declared))


PLAIN_IMAGES = ("jpg", "jpeg", "png", "webp")  # a plain tar's primary image: the first of these present
PLAIN_TEXT = "txt"
_PLAIN_RESERVED = frozenset({"key", "image", "text", "source"})  # never taken from a .json member


@dataclass(frozen=True)
class PlainLayout:
    """How the members of a webdataset tar that vldata did not write (img2dataset, DataComp, anything
    from ``webdataset.TarWriter``) become the sample dict every Source returns.

    ``image`` is the first of ``images`` (member suffixes, in order of preference) that the sample has,
    ``text`` the ``text`` member, ``json`` members are decoded and their fields merged (never over
    ``key``, ``image``, ``text``, ``source`` or a member's own field), ``cls`` is an int, and every
    other member is bytes under its suffix. Suffixes are matched case-insensitively.
    """

    images: tuple[str, ...] = PLAIN_IMAGES
    text: str = PLAIN_TEXT

    def primary(self, suffixes: Iterable[str]) -> str | None:
        """The suffix of the primary image among a sample's member suffixes, or None."""
        have = {s.lower() for s in suffixes}
        return next((s for s in self.images if s in have), None)

    def sample(self, key: str, members: Iterable[tuple[str, bytes]]) -> dict[str, Any]:
        members = [(suffix.lower(), data) for suffix, data in members]
        primary = self.primary(s for s, _ in members)
        sample: dict[str, Any] = {"key": key, "image": None, "text": None}
        decoded: list[Any] = []
        for suffix, data in members:
            if suffix == primary and sample["image"] is None:
                sample["image"] = data
            elif suffix == self.text:
                sample["text"] = data.decode("utf-8")
            elif suffix == "json":
                decoded.append(json.loads(data))
            elif suffix == "cls":
                sample["cls"] = int(data.decode("utf-8").strip())
            else:
                sample[suffix] = data
        for fields in decoded:
            if not isinstance(fields, dict):
                sample.setdefault("json", fields)
                continue
            for name, value in fields.items():
                if name not in _PLAIN_RESERVED:
                    sample.setdefault(name, value)
        return sample

    @classmethod
    def from_manifest(cls, manifest: dict) -> PlainLayout:
        plain = manifest.get("plain") or {}
        return cls(tuple(plain.get("image") or PLAIN_IMAGES), plain.get("text") or PLAIN_TEXT)


def tar_samples(tar) -> Iterable[tuple[str, list[tuple[str, Any]]]]:
    """Group the members of an open ``tarfile.TarFile`` by sample: (key, [(suffix, TarInfo), ...]).
    A sample's members are contiguous; the key is the member name up to its first dot."""
    key, members = None, []
    for member in tar:
        if not member.isfile():
            continue
        k, _, suffix = member.name.rsplit("/", 1)[-1].partition(".")
        if k != key:
            if key is not None:
                yield key, members
            key, members = k, []
        members.append((suffix, member))
    if key is not None:
        yield key, members
