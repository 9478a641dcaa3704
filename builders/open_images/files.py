"""Open Images' raw files: recognising them by their upstream names, reading their rows, grouping the
annotation rows by image (the spill), and finding each image in the split folders or tarballs.

Files are recognised by name anywhere under the raw folder (docs/RAW_FORMATS.md §3.1), sorted by path;
CSVs with required columns have them checked (an unreadable header is a StructuralError too), and the
hierarchy JSON (§3.3) is parsed up front, so a bad one stops the build before any row is read. Rows
are read through ``containers`` (bounded, bad bytes become a row's reason); the class files also
give the ``classes`` side table.

The spill keeps memory bounded: one streaming pass over every image-info and annotation file appends
each row to a JSON-lines file keyed by the first ``k`` hex digits of its ImageID (malformed ids land
in a bucket by CRC), together with the class and attribute names. It is written to a temporary
folder and renamed into place with a ``DONE`` file, so a concurrent or interrupted pass never leaves
a half spill. ``read_bucket`` reads back one bucket's rows for one split.

Images: a split's folder (``<split>/`` or ``images/<split>/``, ``<ImageID>.jpg``) is looked up first,
in image-info order; the rest are served from the split's tarballs in member order (one image held at
a time, none over the byte cap read; a tarball is left once nothing waits for it), and those in no
tarball come last, in image-info order.

It must not build Records or decide what a row means (the builder in ``__init__`` does), and does no
sharding, retries or format code.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

from vldata import StructuralError

from vldata.ingest.tarstream import ContainerBroken, read_member, stream_members

from .containers import BadRow, csv_rows, jsonl_rows, text_lines

SPLITS = ("train", "validation", "test", "challenge2018")
REQUIRED = {
    "info": ("ImageID",),
    "boxes": ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"),
    "human": ("ImageID", "LabelName", "Confidence"),
    "machine": ("ImageID", "LabelName", "Confidence"),
    "vrd": ("ImageID", "LabelName1", "LabelName2", "XMin1", "XMax1", "YMin1", "YMax1",
            "XMin2", "XMax2", "YMin2", "YMax2", "RelationshipLabel"),
    "seg": ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax"),
    "points": ("ImageID", "X", "Y", "Label"),
}
HIERARCHY_MAX_BYTES = 64 << 20  # upstream's is about 100 KB
ANNOTATIONS = ("boxes", "human", "machine", "vrd", "seg", "points", "narratives")  # spilled in this order
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
# a file's kind from its lower-cased name: the first pattern that matches wins
_KINDS = (
    ("narratives", r"localized_narratives.*\.jsonl$"),
    ("hierarchy", r"labels.*hierarchy\.json$"),  # not the older bbox_hierarchy.json visualisation format
    ("trainable", r"classes-trainable.*\.txt$"),
    ("classes", r"class-descriptions.*\.csv$"),
    ("attributes", r"attributes-description.*\.csv$"),
    ("boxes", r"annotations-bbox\.csv$"),
    ("human", r"human-imagelabels.*\.csv$"),
    ("machine", r"machine-imagelabels.*\.csv$"),
    ("vrd", r"annotations-vrd\.csv$"),
    ("seg", r"object-segmentation\.csv$"),
    ("points", r"point-labels\.csv$"),
    ("info", r"^(?!.*imagelabels).*images.*\.csv$|^image_ids.*\.csv$"),  # image-info
)


def is_image_id(image_id: str) -> bool:
    """16 lowercase hex characters, as every upstream ImageID."""
    return bool(_HEX16.match(image_id))


def _kind(name: str) -> str | None:
    n = name.lower()
    return next((kind for kind, pattern in _KINDS if re.search(pattern, n)), None)


def input_files(raw: Path, max_bytes: int) -> dict[str, list[tuple[Path, list[str] | None]]]:
    """The recognised input files by kind, sorted by path, each CSV with required columns paired with
    its header (rows of at most ``max_bytes``). Checks those columns and the hierarchy JSON
    (StructuralError)."""
    files: dict[str, list[tuple[Path, list[str] | None]]] = {}
    for path in sorted(p for p in raw.rglob("*") if _kind(p.name) and p.is_file()):
        kind, header = _kind(path.name), None
        if kind in REQUIRED:
            header = _read_header(path, max_bytes)
            missing = [c for c in REQUIRED[kind] if c not in header]
            if missing:
                raise StructuralError(f"{path}: missing required column '{missing[0]}'")
        elif kind == "hierarchy":
            hierarchy_edges(path)
        files.setdefault(kind, []).append((path, header))
    if not files.get("info"):
        raise StructuralError(f"{raw}: required image-info file (*-images-*.csv) not found")
    return files


def _read_header(path: Path, max_bytes: int) -> list[str]:
    try:
        header = next((values for _, values in csv_rows(path, max_bytes)), None)
    except OSError as e:
        raise StructuralError(f"{path}: not readable ({type(e).__name__}: {e})") from None
    if isinstance(header, BadRow):
        raise StructuralError(f"{path}: unreadable header row ({header.reason}: {header.message})")
    if not header:
        raise StructuralError(f"{path}: empty file, expected a header row")
    header = [h.strip().lstrip("\ufeff") for h in header]
    return ["ImageID" if h == "ImageId" else h for h in header]  # V7 point labels spell it ImageId


def _csv_rows(path: Path, header: list[str], max_bytes: int) -> Iterator[tuple[int, dict | BadRow, bool]]:
    """(row number, {column: value} or BadRow, whether the column count matched the header) of a CSV's
    non-blank rows after the header."""
    for line, values in csv_rows(path, max_bytes):
        if line > 1 and values:
            if isinstance(values, BadRow):
                yield line, values, False
            else:
                yield line, dict(zip(header, values)), len(values) == len(header)


def _jsonl_rows(path: Path, max_bytes: int) -> Iterator[tuple[int, dict | BadRow, bool]]:
    """(line number, object or BadRow, whether it is an object with a string image_id) of a JSON-lines
    file."""
    for line, obj in jsonl_rows(path, max_bytes):
        yield line, obj, isinstance(obj, dict) and isinstance(obj.get("image_id"), str)


def class_names(paths: list[Path], max_bytes: int, notes: dict[str, int] | None = None) -> dict[str, str]:
    """MID -> display name from description files, the first file naming a MID wins; a file's first
    row is a header iff its first field does not start with '/'. Unreadable rows are skipped (counted
    in ``notes`` as ``malformed_class_row``)."""
    out: dict[str, str] = {}
    for path in paths:
        for i, row in csv_rows(path, max_bytes):
            if isinstance(row, BadRow):
                if notes is not None:
                    notes["malformed_class_row"] = notes.get("malformed_class_row", 0) + 1
                continue
            if not row or (i == 1 and not row[0].lstrip("\ufeff").startswith("/")):
                continue
            if len(row) >= 2:
                out.setdefault(row[0].strip(), row[1])
    return out


def classes_table(described: list[Path], trainable_files: list[Path], max_bytes: int) -> pa.Table:
    """The ``classes`` side table: label, display_name, is_boxable (from the boxable class files),
    is_trainable (from the trainable-classes files, one MID a line); null where no such file is given."""
    names = class_names(described, max_bytes)
    boxable_files = [p for p in described if "boxable" in p.name.lower()]
    boxable = set(class_names(boxable_files, max_bytes)) if boxable_files else None
    trainable = {line for p in trainable_files for line in text_lines(p, max_bytes)} or None
    labels = sorted(set(names) | (trainable or set()))
    return pa.table({
        "label": labels, "display_name": [names.get(m) for m in labels],
        "is_boxable": [None if boxable is None else m in boxable for m in labels],
        "is_trainable": [None if trainable is None else m in trainable for m in labels],
    }, schema=pa.schema([("label", pa.string()), ("display_name", pa.string()),
                         ("is_boxable", pa.bool_()), ("is_trainable", pa.bool_())]))


def hierarchy_edges(path: Path) -> list[tuple[str, str, str]]:
    """(parent, child, kind) edges of a hierarchy JSON (docs/RAW_FORMATS.md §3.3), depth first in file
    order, each edge once (upstream repeats some subtrees under several parents)."""
    def bad(why: str) -> StructuralError:
        return StructuralError(f"{path}: malformed hierarchy JSON: {why}")

    if path.stat().st_size > HIERARCHY_MAX_BYTES:
        raise bad(f"{path.stat().st_size} bytes, over {HIERARCHY_MAX_BYTES}")
    try:
        root = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise bad(str(e)[:200] or type(e).__name__) from None

    def label(node, where: str) -> str:
        if not isinstance(node, dict) or not isinstance(node.get("LabelName"), str):
            raise bad(f"no LabelName at {where}")
        return node["LabelName"]

    edges: dict[tuple[str, str, str], None] = {}

    def walk(node, where: str) -> None:
        parent = label(node, where)
        for key in ("Subcategory", "Part"):
            children = node.get(key, [])
            if not isinstance(children, list):
                raise bad(f"{where}.{key} is not a list")
            for i, child in enumerate(children):
                edges.setdefault((parent, label(child, f"{where}.{key}[{i}]"), key.lower()))
                walk(child, f"{where}.{key}[{i}]")

    try:
        walk(root, "$")
    except RecursionError:
        raise bad("nested too deeply") from None
    return list(edges)


def _split_of(path: Path) -> str | None:
    n = path.name.lower()
    for s in SPLITS:
        if n.startswith(s) or f"-{s}-" in n or n.startswith(f"oidv6-{s}") or n.startswith(f"oidv7-{s}"):
            return s
    return None


def _bucket(image_id: str, k: int) -> str:
    if is_image_id(image_id):
        return image_id[:k]
    return f"{zlib.crc32(image_id.encode()) % (16 ** k):0{k}x}"  # malformed ids still land somewhere


# ------------------------------------------------------------------------------------------ the spill

def spill(raw: Path, files: dict, folder: Path, k: int,
          max_bytes: int) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Group every row into ``folder`` (reused when complete). Returns the image-info rows per
    (split, bucket) and notes about unusable lines. An image-info row that cannot be read (over
    ``max_bytes``, not UTF-8, refused by csv) or names no known split is spilled with its reason
    (``__bad``) so that the builder fails it; an unreadable annotation row is noted
    (``malformed_<kind>_row``, ``<kind>_row_too_large``)."""
    done = folder / "DONE"
    if not done.is_file():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "DONE").write_text(json.dumps(_spill_rows(raw, files, tmp, k, max_bytes), sort_keys=True))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race: use its identical spill
            shutil.rmtree(tmp, ignore_errors=True)
    done = json.loads(done.read_text())
    return {tuple(key.split("/")): n for key, n in done["counts"].items()}, done["notes"]


def _spill_rows(raw: Path, files: dict, tmp: Path, k: int, max_bytes: int) -> dict:
    counts: dict[str, int] = {}
    notes: dict[str, int] = {}
    names = {"classes": class_names([p for p, _ in files.get("classes", [])], max_bytes, notes),
             "attributes": class_names([p for p, _ in files.get("attributes", [])], max_bytes, notes)}
    (tmp / "classes.json").write_text(json.dumps(names))
    handles: dict[str, io.TextIOBase] = {}

    def out(name: str):
        if name not in handles:
            handles[name] = open(tmp / name, "w", encoding="utf-8")
        return handles[name]

    def noted(what: str) -> None:
        notes[what] = notes.get(what, 0) + 1

    try:
        for kind in ("info", *ANNOTATIONS):
            for path, header in files.get(kind, []):
                rel, file_split = str(path.relative_to(raw)), _split_of(path)
                rows = _jsonl_rows(path, max_bytes) if kind == "narratives" else _csv_rows(path, header, max_bytes)
                for line, row, ok in rows:
                    if kind == "info":
                        row, split = _info_row(row, file_split or "train")
                        b = _bucket(row["ImageID"].strip() or f"{rel}:{line}", k)
                        counts[f"{split}/{b}"] = counts.get(f"{split}/{b}", 0) + 1
                        row["__ncols"] = ok
                        out(f"info-{b}.jsonl").write(json.dumps([split, f"{rel}:{line}", row]) + "\n")
                    elif isinstance(row, BadRow) and row.reason == "row_too_large":
                        noted(f"{kind}_row_too_large")
                    elif kind == "narratives" and not ok or isinstance(row, BadRow):
                        noted(f"malformed_{kind}_row")
                    else:
                        image_id = (row.get("image_id" if kind == "narratives" else "ImageID") or "").strip()
                        out(f"ann-{_bucket(image_id, k)}.jsonl").write(
                            json.dumps([kind, f"{rel}:{line}", image_id, row]) + "\n")
    finally:
        for h in handles.values():
            h.close()
    return {"counts": counts, "notes": notes}


def _info_row(row: dict | BadRow, file_split: str) -> tuple[dict, str]:
    """An image-info row as spilled, and its split: ``Subset`` when it names one, else the file's."""
    if isinstance(row, BadRow):
        return {"ImageID": "", "__bad": [row.reason, row.message]}, file_split
    row.setdefault("ImageID", "")  # a short row of a file whose ImageID is not the first column
    subset = (row.get("Subset") or "").strip()
    if subset and subset not in SPLITS:
        row["__bad"] = ["bad_subset", f"Subset {subset[:200]!r} is none of {', '.join(SPLITS)}"]
        return row, file_split
    return row, subset or file_split


def read_bucket(folder: Path, prefix: str, split: str, note: Callable[[str], None] | None):
    """One bucket of the spill for one split: (class names, attribute names, the split's image-info
    rows as (ref, row) in file order, {ImageID: {kind: [(ref, row), ...]}}). With ``note``, annotation
    rows whose ImageID is in no image-info file are noted as ``<kind>_rows_without_image_info``."""
    names = json.loads((folder / "classes.json").read_text())
    infos, known = [], set()
    with open(folder / f"info-{prefix}.jsonl", encoding="utf-8") as f:
        for line in f:
            s, ref, row = json.loads(line)
            known.add(row["ImageID"].strip())
            if s == split:
                infos.append((ref, row))
    wanted = {row["ImageID"].strip() for _, row in infos}
    ann: dict[str, dict[str, list]] = {}
    ann_path = folder / f"ann-{prefix}.jsonl"
    if ann_path.is_file():
        with open(ann_path, encoding="utf-8") as f:
            for line in f:
                kind, ref, iid, row = json.loads(line)
                if iid in wanted:
                    ann.setdefault(iid, {}).setdefault(kind, []).append((ref, row))
                elif note and iid not in known:
                    note(f"{kind}_rows_without_image_info")
    return names["classes"], names["attributes"], infos, ann


# ------------------------------------------------------------------------------------------ images

def image_sources(raw: Path) -> dict[str, dict]:
    """Per split: its image folder (``dir``) and its tarballs (``tars``: [(name, path)])."""
    out: dict[str, dict] = {}
    for s in SPLITS:
        for d in (raw / s, raw / "images" / s):
            if d.is_dir():
                out.setdefault(s, {})["dir"] = str(d)
                break
    for t in sorted(raw.rglob("*.tar.gz")):
        name = t.name[:-len(".tar.gz")]
        split = name.split("_")[0] if name.split("_")[0] in SPLITS else None
        if split:
            out.setdefault(split, {}).setdefault("tars", []).append((name, str(t)))
    return out


def ref_location(ref: str) -> tuple[str, int]:
    """(file, line) of a spilled ref ``file:line``."""
    path, _, line = ref.rpartition(":")
    return path, int(line)


def with_images(infos: list[tuple[str, dict]], folder: Path | None, tars: list[str], max_bytes: int,
                note: Callable[[str], None]) -> Iterator[tuple[str, dict, bytes | BadRow | None, str | None]]:
    """(ref, row, image bytes or None or a BadRow, where the image came from) of every image-info row,
    in the order described above; rows whose ImageID is malformed get no image lookup. An image over
    ``max_bytes`` (its file or member size) is ``BadRow('image_too_large')`` and is not read. A
    tarball that breaks off is noted ``tarball_truncated:<name>``; the rows still waiting for an image
    then get ``BadRow('tarball_truncated')`` (their image may lie past the break)."""
    pending: dict[str, list[tuple[str, dict]]] = {}
    for ref, row in infos:
        iid = row["ImageID"].strip()
        path = folder / f"{iid}.jpg" if folder and is_image_id(iid) and not row.get("__bad") else None
        if path is not None and path.is_file():
            size = path.stat().st_size
            data = path.read_bytes() if size <= max_bytes else _too_large(f"{folder.name}/{iid}.jpg", size, max_bytes)
            yield ref, row, data, f"{folder.name}/{iid}.jpg"
        elif tars and is_image_id(iid) and not row.get("__bad"):
            pending.setdefault(iid, []).append((ref, row))
        else:
            yield ref, row, None, None
    broken = None
    for t in tars:
        if not pending:
            break
        try:
            for m, tar in stream_members(Path(t)):
                base = m.name.rsplit("/", 1)[-1]
                if base.endswith(".jpg") and base[:-4] in pending:
                    source = f"{Path(t).name}:{m.name}"
                    data = read_member(tar, m, Path(t)) if m.size <= max_bytes else \
                        _too_large(source, m.size, max_bytes)
                    for ref, row in pending.pop(base[:-4]):
                        yield ref, row, data, source
                    if not pending:
                        break
        except ContainerBroken as e:
            note(f"tarball_truncated:{Path(t).name}")
            broken = BadRow("tarball_truncated", f"{e}; the image may lie past the break")
    for ref, row in sorted((rr for rows in pending.values() for rr in rows), key=lambda rr: ref_location(rr[0])):
        yield ref, row, broken, None


def _too_large(where: str, size: int, max_bytes: int) -> BadRow:
    return BadRow("image_too_large", f"{where}: {size} bytes, over image.max_bytes={max_bytes}")
