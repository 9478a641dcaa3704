"""Open Images V4-V7 — Flickr images with labels, boxes, relationships, masks, points and narratives (Google).

Raw layout: the official annotation files anywhere under the raw folder, recognised by their upstream
names (RAW_FORMATS §3.1), and the CVDF images, either as ``<split>/<ImageID>.jpg`` folders (directly
under the raw folder or under ``images/``) or as the tarballs ``train_{0..f}.tar.gz``,
``validation.tar.gz``, ``test.tar.gz``, ``challenge2018.tar.gz`` (read as a stream, never extracted;
only the member basename is used).

* image info (required): ``*images*.csv`` / ``image_ids_and_rotation.csv`` (``ImageID`` required;
  ``Subset``, ``License``, ..., ``Rotation`` kept when present). One input row = one record.
* boxes ``*annotations-bbox.csv`` (order ``XMin,XMax,YMin,YMax``; ``XClick*`` when present; ``-1``
  flags kept), human / machine image-level labels ``*human-imagelabels*.csv`` /
  ``*machine-imagelabels*.csv`` (Confidence 0 = verified negative, kept as such), relationships
  ``*annotations-vrd.csv`` (for ``is``, ``label2`` is an attribute MID named from
  ``*attributes-description.csv``), segmentation index ``*object-segmentation.csv`` (mask PNG bytes
  from ``*-masks-<x>.zip`` when given), V7 point labels ``*point-labels.csv`` (``ImageId``), localized
  narratives ``*localized_narratives*.jsonl`` (§3.4; every annotator's narrative, in file order).
* class names: every ``*class-descriptions*.csv``; row 1 is a header iff its first field does not
  start with ``/`` (V4/V5 files have none). ``*classes-trainable*.txt`` (one MID a line) and the
  hierarchy ``*labels*hierarchy.json`` (§3.3; a malformed one stops the build; the older
  ``bbox_hierarchy.json`` visualisation format is not read) feed only the side tables.

Side tables (``tables/<name>.parquet``): ``classes`` (label, display_name, is_boxable from the boxable
class-descriptions files, is_trainable from the trainable-classes file; null when no such file is given)
and ``hierarchy`` (parent, child, kind ``subcategory``/``part``; the root ``/m/0bl9f`` Entity is in no
class file), each written only when its source files are present.

Memory stays bounded by an external grouping: ``partitions`` streams every annotation file once and
appends each row to a spill file keyed by the first ``prefix_chars`` hex digits of its ImageID (in the
engine's scratch folder, which the engine removes when the build completes; ``spill_dir`` overrides
it; named by a digest of the input files and settings). A partition is one (split, prefix);
``records`` reads only its own spill, so it holds the annotations of 1/16^k of the images. Within a
partition, rows whose image is in the split's folder (and rows that fail before any image lookup)
come in image-info order (files sorted by path); rows served by a tarball come next, in the tarball's
member order, so only one image is held at a time; rows whose image is nowhere come last, in
image-info order. A partition streams the tarball of its first hex digit (``train_<x>``, or the whole
``validation``/``test`` tarball), so with tarballs ``prefix_chars=1`` reads each tarball once; larger
values re-read it 16 or 256 times but hold fewer annotations in memory.

``text`` is built from the positive labels' display names (``TEMPLATES``): human positives
(confidence 1) first, else machine labels, else box classes, else ``"a photo"``; ``text_template``
names the template used. Negatives never enter the text.

Annotation rows whose ImageID is in no image-info file are counted as notes
(``<kind>_rows_without_image_info``, in the split of the bucket's first partition); an annotation row
that does not parse is noted as ``malformed_<kind>_row`` (for narratives also a line that is not a
JSON object with a string ``image_id``, noted before grouping).

Not done: the narratives' ``.ogg`` voice recordings (only their path is kept) and their captions as
``text``; the relationship vocabulary and segmentation class lists.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import pyarrow as pa
from pydantic import BaseModel, Field

from vldata import Builder, Config, Failed, Image, Partition, Record, RowContext, StructuralError

F32 = Annotated[float, pa.float32()]
I8 = Annotated[int, pa.int8()]
I32 = Annotated[int, pa.int32()]
I64 = Annotated[int, pa.int64()]

SPLITS = ("train", "validation", "test", "challenge2018")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
TEMPLATES = {
    "human_positive": "a photo of {labels}",
    "machine": "a photo of {labels}",
    "boxes": "a photo of {labels}",
    "none": "a photo",
}
XCLICK = ("XClick1X", "XClick2X", "XClick3X", "XClick4X", "XClick1Y", "XClick2Y", "XClick3Y", "XClick4Y")
FLAGS = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
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


class Label(BaseModel):
    label: str = Field(description="Class MID (/m/...).")
    display_name: str | None = Field(description="Class display name, null when the MID is in no class file.")
    source: str = Field(description="verification, crowdsource-verification, machine, ...")
    confidence: F32 = Field(description="Human: 1 positive, 0 verified negative. Machine: fractional score.")


class Box(BaseModel):
    label: str
    display_name: str | None
    source: str
    confidence: F32
    xmin: F32
    xmax: F32
    ymin: F32
    ymax: F32
    is_occluded: I8 = Field(description="1 yes, 0 no, -1 unknown.")
    is_truncated: I8
    is_group_of: I8
    is_depiction: I8
    is_inside: I8
    xclick: list[F32] | None = Field(description="XClick1X..4X, XClick1Y..4Y in file order; null if absent.")


class Relationship(BaseModel):
    label1: str
    label2: str = Field(description="Class MID, or an attribute MID when relationship is 'is'.")
    display_name1: str | None
    display_name2: str | None = Field(description="Class or attribute display name.")
    box1: list[F32] = Field(description="[xmin, xmax, ymin, ymax]")
    box2: list[F32]
    relationship: str


class Mask(BaseModel):
    mask_path: str
    label: str
    box_id: str
    box: list[F32] = Field(description="[xmin, xmax, ymin, ymax]")
    predicted_iou: F32 | None
    clicks: str | None
    mask_index: I32 | None = Field(description="Index into mask_images of this mask's PNG; null when not given.")


class Point(BaseModel):
    x: F32
    y: F32
    label: str
    display_name: str | None
    estimated_yes_no: str | None
    source: str | None
    yes_votes: I32 | None
    no_votes: I32 | None
    unsure_votes: I32 | None
    text_label: str | None


class Utterance(BaseModel):
    utterance: str
    start_time: F32 = Field(description="Seconds into the voice recording.")
    end_time: F32


class TracePoint(BaseModel):
    x: F32 = Field(description="Normalized image coordinate (may fall slightly outside [0, 1]).")
    y: F32
    t: F32 = Field(description="Seconds into the voice recording.")


class Narrative(BaseModel):
    annotator_id: I32
    caption: str = Field(description="Transcribed narrative, as upstream (may hold newlines).")
    timed_caption: list[Utterance]
    traces: list[list[TracePoint]] = Field(description="Mouse-trace segments, each a list of points in time order.")
    voice_recording: str | None = Field(description="Relative path of the .ogg under the voice-recordings root.")


class OpenImagesRecord(Record):
    image_id: str = Field(description="16 lowercase hex characters, kept as a string (leading zeros matter).")
    split: str
    original_url: str | None
    original_landing_url: str | None
    license: str | None = Field(description="The image's own licence URL (License column).")
    author: str | None
    author_profile_url: str | None
    title: str | None
    original_size: I64 | None
    original_md5_b64: str | None = Field(description="Base64 of the binary MD5, as upstream.")
    thumbnail_300k_url: str | None
    rotation: F32 | None = Field(description="0/90/180/270 degrees CCW to intended orientation; null if nan/blank.")
    image: Image = Field(description="The CVDF JPEG as stored (rotation not applied).")
    image_source: str = Field(description="Folder path or tarball:member the image came from.")
    labels_human: list[Label] = Field(description="Human-verified labels, negatives (confidence 0) included.")
    labels_machine: list[Label]
    boxes: list[Box]
    relationships: list[Relationship]
    masks: list[Mask]
    points: list[Point]
    narratives: list[Narrative] = Field(description="Localized narratives, one per annotator, in file order.")
    mask_images: list[Image] = Field(description="Mask PNGs read from the masks zips (webdataset mask_images_<i>.png).")
    text_template: Literal[tuple(TEMPLATES)] = Field(description="Which entry of TEMPLATES produced `text`.")


class OpenImagesConfig(Config):
    prefix_chars: int = Field(default=2, ge=1, le=3, description="Hex digits of ImageID per partition bucket.")
    spill_dir: str | None = Field(default=None, description=(
        "Where the grouped spill files go, kept for reuse. Default: the engine's scratch folder, removed "
        "when the build completes (the temp dir when partitions() runs outside the engine)."))


# ------------------------------------------------------------------------------------------ helpers

def _kind(name: str) -> str | None:
    n = name.lower()
    if n.endswith(".jsonl"):
        return "narratives" if "localized_narratives" in n else None
    if n.endswith(".json"):
        return "hierarchy" if "labels" in n and n.endswith("hierarchy.json") else None
    if n.endswith(".txt"):
        return "trainable" if "classes-trainable" in n else None
    if not n.endswith(".csv"):
        return None
    if "class-descriptions" in n:
        return "classes"
    if "attributes-description" in n:
        return "attributes"
    if n.endswith("annotations-bbox.csv"):
        return "boxes"
    if "human-imagelabels" in n:
        return "human"
    if "machine-imagelabels" in n:
        return "machine"
    if n.endswith("annotations-vrd.csv"):
        return "vrd"
    if n.endswith("object-segmentation.csv"):
        return "seg"
    if n.endswith("point-labels.csv"):
        return "points"
    if ("images" in n and "imagelabels" not in n) or n.startswith("image_ids"):
        return "info"
    return None


def _input_files(raw: Path) -> dict[str, list[tuple[Path, list[str] | None]]]:
    """The recognised input files by kind, sorted by path, each CSV with required columns paired with
    its header. Checks those columns and the hierarchy JSON (StructuralError)."""
    files: dict[str, list[tuple[Path, list[str] | None]]] = {}
    for path in sorted(p for p in raw.rglob("*") if _kind(p.name) and p.is_file()):
        kind, header = _kind(path.name), None
        if kind in REQUIRED:
            header = _read_header(path)
            missing = [c for c in REQUIRED[kind] if c not in header]
            if missing:
                raise StructuralError(f"{path}: missing required column '{missing[0]}'")
        elif kind == "hierarchy":
            _hierarchy_edges(path)
        files.setdefault(kind, []).append((path, header))
    if not files.get("info"):
        raise StructuralError(f"{raw}: required image-info file (*-images-*.csv) not found")
    return files


def _read_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise StructuralError(f"{path}: empty file, expected a header row")
    header = [h.strip().lstrip("\ufeff") for h in header]
    return ["ImageID" if h == "ImageId" else h for h in header]  # V7 point labels spell it ImageId


def _csv_rows(path: Path, header: list[str]) -> Iterator[tuple[int, dict, bool]]:
    """(row number, {column: value}, whether the column count matched the header) of a CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader, None)
        for line, values in enumerate(reader, start=2):
            if values:
                yield line, dict(zip(header, values)), len(values) == len(header)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | None, bool]]:
    """(line number, object, whether it is an object with a string image_id) of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if text.strip():
                try:
                    obj = json.loads(text)
                except ValueError:
                    obj = None
                yield line, obj, isinstance(obj, dict) and isinstance(obj.get("image_id"), str)


def _names(paths: list[Path]) -> dict[str, str]:
    """MID -> display name from description files, the first file naming a MID wins; a file's first
    row is a header iff its first field does not start with '/'."""
    out: dict[str, str] = {}
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or (i == 0 and not row[0].lstrip("\ufeff").startswith("/")):
                    continue
                if len(row) >= 2:
                    out.setdefault(row[0].strip(), row[1])
    return out


def _hierarchy_edges(path: Path) -> list[tuple[str, str, str]]:
    """(parent, child, kind) edges of a hierarchy JSON (§3.3), depth first in file order, each edge
    once (upstream repeats some subtrees under several parents)."""
    def bad(why: str) -> StructuralError:
        return StructuralError(f"{path}: malformed hierarchy JSON: {why}")

    try:
        root = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(str(e)) from None

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

    walk(root, "$")
    return list(edges)


def _split_of(path: Path) -> str | None:
    n = path.name.lower()
    for s in SPLITS:
        if n.startswith(s) or f"-{s}-" in n or n.startswith(f"oidv6-{s}") or n.startswith(f"oidv7-{s}"):
            return s
    return None


def _ref_order(ref: str) -> tuple[str, int]:
    path, _, line = ref.rpartition(":")
    return path, int(line)


def _bucket(image_id: str, k: int) -> str:
    if _HEX16.match(image_id):
        return image_id[:k]
    return f"{zlib.crc32(image_id.encode()) % (16 ** k):0{k}x}"  # malformed ids still land somewhere


def _f(v: str | None) -> float | None:
    if v is None or v.strip() == "" or v.strip().lower() == "nan":
        return None
    return float(v)


def _i(v: str | None) -> int | None:
    if v is None or v.strip() == "":
        return None
    return int(float(v))


def _s(v: str | None) -> str | None:
    return None if v is None or v == "" else v


# ------------------------------------------------------------------------------------------ builder

class OpenImagesBuilder(Builder):
    name = "open_images"
    version = "1.1.0"
    summary = ("Open Images V4-V7 (Google): Flickr images with labels, boxes, relationships, masks, points "
               "and localized narratives")
    Config = OpenImagesConfig
    Record = OpenImagesRecord
    balance_fields = ("split",)

    def partitions(self, raw: Path) -> list[Partition]:
        raw = Path(raw)
        files = _input_files(raw)
        k = self.config.prefix_chars
        digest = hashlib.sha1(json.dumps(
            [self.version, k, str(raw.resolve())]
            + [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for fs in files.values() for p, _ in fs]).encode()
        ).hexdigest()[:16]
        folder = self.config.spill_dir or self.scratch or tempfile.gettempdir()
        spill = Path(folder) / f"vldata-open_images-{digest}"
        counts, notes = self._spill(raw, files, spill, k)
        images = self._image_sources(raw)
        mask_zips = sorted(raw.rglob("*-masks-*.zip"))
        order = {s: i for i, s in enumerate(SPLITS)}
        parts: list[Partition] = []
        seen: set[str] = set()
        for (split, prefix), n in sorted(counts.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])):
            src = images.get(split, {})
            tars = [t for name, t in src.get("tars", []) if name in (f"{split}_{prefix[0]}", split)]
            zips = [str(z) for z in mask_zips if z.name == f"{split}-masks-{prefix[0]}.zip"]
            parts.append(Partition(index=len(parts), split=split, input_rows=n, payload={
                "spill": str(spill), "prefix": prefix, "split": split, "dir": src.get("dir"), "tars": tars,
                "zips": zips, "count_orphans": prefix not in seen}))
            seen.add(prefix)
        if notes and parts:
            parts[0] = replace(parts[0], notes=notes)
        return parts

    def side_tables(self, raw: Path) -> dict[str, pa.Table]:
        files = _input_files(Path(raw))
        tables: dict[str, pa.Table] = {}
        described = [p for p, _ in files.get("classes", [])]
        trainable_files = [p for p, _ in files.get("trainable", [])]
        if described or trainable_files:
            names = _names(described)
            boxable_files = [p for p in described if "boxable" in p.name.lower()]
            boxable = set(_names(boxable_files)) if boxable_files else None
            trainable = {line.strip() for p in trainable_files
                         for line in p.read_text(encoding="utf-8").splitlines() if line.strip()} or None
            labels = sorted(set(names) | (trainable or set()))
            tables["classes"] = pa.table({
                "label": labels, "display_name": [names.get(m) for m in labels],
                "is_boxable": [None if boxable is None else m in boxable for m in labels],
                "is_trainable": [None if trainable is None else m in trainable for m in labels],
            }, schema=pa.schema([("label", pa.string()), ("display_name", pa.string()),
                                 ("is_boxable", pa.bool_()), ("is_trainable", pa.bool_())]))
        if files.get("hierarchy"):
            edges = list(dict.fromkeys(e for p, _ in files["hierarchy"] for e in _hierarchy_edges(p)))
            tables["hierarchy"] = pa.table([list(c) for c in zip(*edges)] if edges else [[], [], []],
                                           schema=pa.schema([("parent", pa.string()), ("child", pa.string()),
                                                             ("kind", pa.string())]))
        return tables

    @staticmethod
    def _image_sources(raw: Path) -> dict[str, dict]:
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

    def _spill(self, raw: Path, files: dict, spill: Path, k: int) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """One streaming pass over every annotation file: rows appended to per-bucket JSON-lines files.
        Returns the image-info rows per (split, bucket) and notes about unusable lines."""
        done = spill / "DONE"
        if not done.is_file():
            tmp = spill.with_name(spill.name + f".tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "DONE").write_text(json.dumps(self._spill_rows(raw, files, tmp, k), sort_keys=True))
            try:
                os.replace(tmp, spill)
            except OSError:  # another process won the race: use its identical spill
                shutil.rmtree(tmp, ignore_errors=True)
        done = json.loads(done.read_text())
        return {tuple(key.split("/")): n for key, n in done["counts"].items()}, done["notes"]

    @staticmethod
    def _spill_rows(raw: Path, files: dict, tmp: Path, k: int) -> dict:
        names = {"classes": _names([p for p, _ in files.get("classes", [])]),
                 "attributes": _names([p for p, _ in files.get("attributes", [])])}
        (tmp / "classes.json").write_text(json.dumps(names))
        handles: dict[str, io.TextIOBase] = {}

        def out(name: str):
            if name not in handles:
                handles[name] = open(tmp / name, "w", encoding="utf-8")
            return handles[name]

        counts: dict[str, int] = {}
        notes: dict[str, int] = {}
        try:
            for kind in ("info", "boxes", "human", "machine", "vrd", "seg", "points", "narratives"):
                for path, header in files.get(kind, []):
                    rel, file_split = str(path.relative_to(raw)), _split_of(path)
                    rows = _jsonl_rows(path) if kind == "narratives" else _csv_rows(path, header)
                    for line, row, ok in rows:
                        if kind == "narratives" and not ok:
                            notes["malformed_narratives_row"] = notes.get("malformed_narratives_row", 0) + 1
                            continue
                        image_id = (row.get("image_id" if kind == "narratives" else "ImageID") or "").strip()
                        b = _bucket(image_id, k)
                        if kind == "info":
                            split = (row.get("Subset") or "").strip() or file_split or "train"
                            counts[f"{split}/{b}"] = counts.get(f"{split}/{b}", 0) + 1
                            row["__ncols"] = ok
                            out(f"info-{b}.jsonl").write(json.dumps([split, f"{rel}:{line}", row]) + "\n")
                        else:
                            out(f"ann-{b}.jsonl").write(json.dumps([kind, f"{rel}:{line}", image_id, row]) + "\n")
        finally:
            for h in handles.values():
                h.close()
        return {"counts": counts, "notes": notes}

    # ------------------------------------------------------------------ records

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed]:
        p = partition.payload
        spill, prefix, split = Path(p["spill"]), p["prefix"], p["split"]
        names = json.loads((spill / "classes.json").read_text())
        classes, attributes = names["classes"], names["attributes"]
        infos, known = [], set()
        with open(spill / f"info-{prefix}.jsonl", encoding="utf-8") as f:
            for line in f:
                s, ref, row = json.loads(line)
                known.add(row["ImageID"].strip())
                if s == split:
                    infos.append((ref, row))
        wanted = {row["ImageID"].strip() for _, row in infos}
        ann: dict[str, dict[str, list]] = {}
        ann_path = spill / f"ann-{prefix}.jsonl"
        if ann_path.is_file():
            with open(ann_path, encoding="utf-8") as f:
                for line in f:
                    kind, ref, iid, row = json.loads(line)
                    if iid in wanted:
                        ann.setdefault(iid, {}).setdefault(kind, []).append((ref, row))
                    elif p["count_orphans"] and iid not in known:  # counted once per bucket
                        ctx.note(f"{kind}_rows_without_image_info")
        zips = [zipfile.ZipFile(z) for z in p["zips"]]
        folder = Path(p["dir"]) if p["dir"] else None

        def record(ref, row, data, source):
            return self._record(ref, row, split, ann.get(row["ImageID"].strip(), {}), classes, attributes,
                                data, source, zips, ctx)

        try:
            # info order for rows whose image is in the split's folder (or that need no image lookup) ...
            pending: dict[str, list[tuple[str, dict]]] = {}
            for ref, row in infos:
                iid = row["ImageID"].strip()
                path = folder / f"{iid}.jpg" if folder and _HEX16.match(iid) else None
                if path is not None and path.is_file():
                    yield record(ref, row, path.read_bytes(), f"{folder.name}/{iid}.jpg")
                elif p["tars"] and _HEX16.match(iid):
                    pending.setdefault(iid, []).append((ref, row))
                else:
                    yield record(ref, row, None, None)
            # ... then tarball member order (one image in memory at a time), then the ones in no tarball
            for t in p["tars"] if pending else []:
                with tarfile.open(t, mode="r|gz") as tar:
                    for m in tar:
                        base = m.name.rsplit("/", 1)[-1]
                        if m.isfile() and base.endswith(".jpg") and base[:-4] in pending:
                            data = tar.extractfile(m).read()
                            for ref, row in pending.pop(base[:-4]):
                                yield record(ref, row, data, f"{Path(t).name}:{m.name}")
            rest = sorted((ref_row for rows in pending.values() for ref_row in rows), key=lambda rr: _ref_order(rr[0]))
            for ref, row in rest:
                yield record(ref, row, None, None)
        finally:
            for z in zips:
                z.close()

    def _record(self, ref, row, split, ann, classes, attributes, data, source, zips, ctx):
        image_id = row["ImageID"].strip()
        key = image_id if re.match(r"^[A-Za-z0-9_-]+$", image_id or "-/") else \
            hashlib.sha1(image_id.encode()).hexdigest()[:16]
        if not _HEX16.match(image_id):
            return Failed(key, "bad_image_id", f"ImageID {image_id!r} is not 16 lowercase hex characters", ref)
        if not row.pop("__ncols", True):
            return Failed(key, "malformed_row", "wrong number of columns", ref)
        try:
            rotation = _f(row.get("Rotation"))
            if rotation is not None and rotation not in (0.0, 90.0, 180.0, 270.0):
                raise ValueError(row.get("Rotation"))
        except ValueError:
            return Failed(key, "bad_rotation", f"Rotation {row.get('Rotation')!r}", ref)
        try:
            size = _i(row.get("OriginalSize"))
        except ValueError:
            return Failed(key, "malformed_row", f"OriginalSize {row.get('OriginalSize')!r}", ref)
        img = ctx.image(data, f"{image_id}.jpg in no {split} folder or tarball")
        if not isinstance(img, Image):
            return Failed(key, img.reason, img.message, ref)

        def name(mid):
            return classes.get(mid)

        human, machine, boxes, rels, masks, points, narratives, mask_images = [], [], [], [], [], [], [], []
        for kind, rows in sorted(ann.items()):
            for aref, a in rows:
                try:
                    if kind in ("human", "machine"):
                        (human if kind == "human" else machine).append(Label(
                            label=a["LabelName"], display_name=name(a["LabelName"]),
                            source=a.get("Source") or kind, confidence=float(a["Confidence"])))
                    elif kind == "boxes":
                        xclick = None
                        if all(_s(a.get(c)) is not None for c in XCLICK):
                            xclick = [float(a[c]) for c in XCLICK]
                        boxes.append(Box(
                            label=a["LabelName"], display_name=name(a["LabelName"]), source=a.get("Source") or "",
                            confidence=float(a.get("Confidence") or 1),
                            xmin=float(a["XMin"]), xmax=float(a["XMax"]), ymin=float(a["YMin"]), ymax=float(a["YMax"]),
                            **{f: int(a.get(c) or -1) for f, c in zip(
                                ("is_occluded", "is_truncated", "is_group_of", "is_depiction", "is_inside"), FLAGS)},
                            xclick=xclick))
                    elif kind == "vrd":
                        rel = a["RelationshipLabel"]
                        rels.append(Relationship(
                            label1=a["LabelName1"], label2=a["LabelName2"], display_name1=name(a["LabelName1"]),
                            display_name2=(attributes.get(a["LabelName2"]) if rel == "is" else None)
                            or name(a["LabelName2"]),
                            box1=[float(a[c]) for c in ("XMin1", "XMax1", "YMin1", "YMax1")],
                            box2=[float(a[c]) for c in ("XMin2", "XMax2", "YMin2", "YMax2")], relationship=rel))
                    elif kind == "seg":
                        mask = None
                        for z in zips:
                            try:
                                mask = z.read(a["MaskPath"])
                                break
                            except KeyError:
                                continue
                        if zips and mask is None:
                            ctx.note("mask_png_missing")
                        mask_index = None
                        if mask is not None:
                            mimg = ctx.image(mask)
                            if isinstance(mimg, Image):
                                mask_index = len(mask_images)
                                mask_images.append(mimg)
                            else:
                                ctx.note(f"mask_{mimg.reason}")
                        masks.append(Mask(
                            mask_path=a["MaskPath"], label=a["LabelName"], box_id=a["BoxID"],
                            box=[float(a[c]) for c in ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")],
                            predicted_iou=_f(a.get("PredictedIoU")), clicks=_s(a.get("Clicks")),
                            mask_index=mask_index))
                    elif kind == "points":
                        points.append(Point(
                            x=float(a["X"]), y=float(a["Y"]), label=a["Label"], display_name=name(a["Label"]),
                            estimated_yes_no=_s(a.get("EstimatedYesNo")), source=_s(a.get("Source")),
                            yes_votes=_i(a.get("YesVotes")), no_votes=_i(a.get("NoVotes")),
                            unsure_votes=_i(a.get("UnsureVotes")), text_label=_s(a.get("TextLabel"))))
                    elif kind == "narratives":
                        narratives.append(Narrative(
                            annotator_id=a["annotator_id"], caption=a["caption"], timed_caption=a["timed_caption"],
                            traces=a["traces"],
                            voice_recording=a.get("voice_recording") or None))
                except (ValueError, KeyError, TypeError):
                    ctx.note(f"malformed_{kind}_row")
        text, template = _text(human, machine, boxes)
        return OpenImagesRecord(
            key=key, text=text, text_template=template, image_id=image_id, split=split,
            original_url=_s(row.get("OriginalURL")), original_landing_url=_s(row.get("OriginalLandingURL")),
            license=_s(row.get("License")), author=_s(row.get("Author")),
            author_profile_url=_s(row.get("AuthorProfileURL")), title=_s(row.get("Title")), original_size=size,
            original_md5_b64=_s(row.get("OriginalMD5")), thumbnail_300k_url=_s(row.get("Thumbnail300KURL")),
            rotation=rotation, image=img, image_source=source, labels_human=human, labels_machine=machine,
            boxes=boxes, relationships=rels, masks=masks, points=points, narratives=narratives,
            mask_images=mask_images)

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        write_sample(raw, n, seed)


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _text(human: list[Label], machine: list[Label], boxes: list[Box]) -> tuple[str, str]:
    for template, items in (("human_positive", [x for x in human if x.confidence >= 1.0]),
                            ("machine", [x for x in machine if x.confidence >= 0.5]),
                            ("boxes", boxes)):
        names: list[str] = []
        for x in items:
            if x.display_name and x.display_name.lower() not in names:
                names.append(x.display_name.lower())
        if names:
            return TEMPLATES[template].format(labels=_join(names)), template
    return TEMPLATES["none"], "none"


# ------------------------------------------------------------------------------------------ sample

CLASSES = [("/m/0bt9lr", "Dog"), ("/m/018xm", "Ball"), ("/m/08t9c_", "Grass"), ("/m/01g317", "Person"),
           ("/m/0k4j", "Car"), ("/m/014j1m", "Apple"), ("/m/02wvth", 'Fiat 500 "topolino"'),
           ("/m/03hgsf0", "Lemon, lime and bitters"), ("/m/083wq", "Wheel")]
TRAINABLE = ["/m/0bt9lr", "/m/018xm", "/m/08t9c_", "/m/01g317", "/m/014j1m", "/m/0jbk"]  # /m/0jbk: in no class file
HIERARCHY = {"LabelName": "/m/0bl9f", "Subcategory": [
    {"LabelName": "/m/0bt9lr"}, {"LabelName": "/m/018xm"},
    {"LabelName": "/m/0k4j", "Subcategory": [{"LabelName": "/m/02wvth"}], "Part": [{"LabelName": "/m/083wq"}]},
    {"LabelName": "/m/01g317"}]}
ATTRIBUTES = [("/m/02gy9n", "Transparent"), ("/m/083vt", "Wooden")]
INFO_HEADER = ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL", "Author",
               "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL", "Rotation"]
BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", *FLAGS]
LEADING_ZEROS_ID = "000060e3121c7305"
ORPHAN_NARRATIVE_ID = "00000000000000bb"  # a narrated image in no image-info file
NARRATIVE_CAPTIONS = ["In this picture we can see a dog on the grass.\nThe dog is called Zoë and holds a ball.",
                      "A dog with a ball \u2014 on grass."]


def _jpeg(rng: random.Random) -> bytes:
    from PIL import Image as PILImage

    img = PILImage.new("RGB", (rng.randint(24, 64), rng.randint(24, 64)), tuple(rng.randint(0, 255) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _write_csv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)


def _narrative(split: str, image_id: str, annotator: int, caption: str) -> dict:
    """One localized narrative (§3.4) with times and coordinates exact in float32."""
    words = caption.split()
    traces = [[{"x": (s * 5 + i) / 16, "y": i / 32, "t": (s * 4 + i) / 8} for i in range(3 + s)] for s in range(2)]
    traces[0][0]["x"] = -1 / 128  # traces may leave the image a little
    return {"dataset_id": "open_images", "image_id": image_id, "annotator_id": annotator, "caption": caption,
            "timed_caption": [{"utterance": w, "start_time": i / 2, "end_time": i / 2 + 0.375}
                              for i, w in enumerate(words)],
            "traces": traces, "voice_recording": f"open_images_{split}/open_images_{split}_{image_id}_{annotator}.ogg"}


def write_sample(raw: Path, n: int = 12, seed: int = 0, boxes_per_image: int = 2) -> None:
    """Write the real layout: image-info, class, bbox, label, vrd, segmentation (+ mask zip) and V7
    point CSVs, trainable classes, the hierarchy JSON and localized-narratives JSON lines at the raw
    root; validation/test images as ``<split>/<ImageID>.jpg`` folders, train images in
    ``tar/train_<x>.tar.gz``. ``boxes_per_image`` (at least 2) sizes the bbox files for benchmarks.

    Quirks: V4/V5 class file without header, V7 class file with header (a name with a comma and one
    with quotes); a human Confidence 0 negative; -1 sentinels in box flags and XClick of an activemil
    box; XClick columns in the train bbox file only; Rotation as 0.0/90.0/blank/nan; ImageID with
    leading zeros; a validation image file missing; V7 points with ``ImageId``; a Title with comma,
    quotes and Unicode; one malformed info row (ImageID not hex) and one with Rotation ``abc``; a
    narrative for every other image (train narratives in two of the ten upstream files), two from two
    annotators for the leading-zeros image (a newline and non-ASCII in a caption), one for an image in
    no image-info file.
    """
    rng = random.Random(seed)
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "validation": [], "test": []}
    for i in range(n):
        iid = LEADING_ZEROS_ID if i == 0 else f"{rng.getrandbits(64):016x}"
        splits[("train", "train", "validation", "test")[i % 4]].append(iid)
    rotations = ["0.0", "90.0", "", "nan", "0.0", "270.0"]
    _write_csv(raw / "class-descriptions-boxable.csv", None, [list(c) for c in CLASSES[:5]])
    _write_csv(raw / "oidv7-class-descriptions.csv", ["LabelName", "DisplayName"], [list(c) for c in CLASSES])
    _write_csv(raw / "oidv6-attributes-description.csv", None, [list(a) for a in ATTRIBUTES])
    (raw / "oidv7-classes-trainable.txt").write_text("".join(m + "\n" for m in TRAINABLE))
    (raw / "bbox_labels_600_hierarchy.json").write_text(json.dumps(HIERARCHY, indent=1))
    narratives: dict[str, list[dict]] = {}
    tars: dict[str, list[tuple[str, bytes]]] = {}
    for split, ids in splits.items():
        info, human, machine, boxes, vrd, seg, points = [], [], [], [], [], [], []
        for j, iid in enumerate(ids):
            title = 'Dog, "ball" & grass — Zürich' if j == 0 else f"photo {j}"
            info.append([iid, split, f"https://farm.example/{iid}_o.jpg", f"https://www.flickr.com/photos/u/{j}",
                         "https://creativecommons.org/licenses/by/2.0/", "https://www.flickr.com/people/u/",
                         f"Author {j}", title, str(100000 + j), "0Sad+xMj2ttXM1U8meEJ0A==",
                         "" if j % 2 else f"https://c1.example/{iid}_z.jpg", rotations[(j + len(split)) % 6]])
            human += [[iid, "verification", "/m/0bt9lr", "1"], [iid, "verification", "/m/014j1m", "0"],
                      [iid, "crowdsource-verification", "/m/018xm", "1"], [iid, "verification", "/m/08t9c_", "1"]]
            machine.append([iid, "machine", "/m/0k4j", "0.7"])
            flags = ["0", "1", "0", "0", "0"]
            box = [iid, "xclick", "/m/0bt9lr", "1", "0.0125", "0.195312", "0.148438", "0.5875", *flags]
            box2 = [iid, "activemil", "/m/018xm", "1", "0.2", "0.6", "0.3", "0.9", "0", "-1", "0", "-1", "-1"]
            if split == "train":
                box += ["0.148438", "0.0125", "0.059375", "0.195312", "0.148438", "0.357812", "0.5875", "0.325"]
                box2 += ["-1"] * 8
            boxes += [box, box2]
            for e in range(boxes_per_image - 2):
                corner = (e % 8) / 16
                boxes.append([iid, "freeform", CLASSES[e % 5][0], "1", str(corner), str(corner + 0.25),
                              str(corner / 2), str(corner / 2 + 0.5), "0", "0", "0", "0", "0"]
                             + (["-1"] * 8 if split == "train" else []))
            if j % 2 == 0:
                shard = "train_v6_localized_narratives-00000-of-00010" if split == "train" else \
                    f"{split}_localized_narratives"
                narratives.setdefault(shard, []).append(_narrative(split, iid, 10 + j % 7, NARRATIVE_CAPTIONS[0]
                                                                   if iid == LEADING_ZEROS_ID else f"a photo {j}"))
            vrd.append([iid, "/m/0bt9lr", "/m/02gy9n", "0.1", "0.5", "0.2", "0.9", "0.1", "0.5", "0.2", "0.9", "is"])
            seg.append([f"{iid}_m0bt9lr_9a041d52.png", iid, "/m/0bt9lr", "9a041d52", "0.0125", "0.195312",
                        "0.148438", "0.5875", "0.86864", "0.95498 0.65197 1;0.89370 0.56579 0"])
            points.append([iid, "0.5", "0.25", "/m/0bt9lr", "yes", "ih", "3", "0", "1", "dog"])
            jpeg = _jpeg(rng)
            if split == "validation" and j == 1:
                continue  # this image file is missing
            if split == "train":
                tars.setdefault(f"train_{iid[0]}", []).append((f"train/{iid}.jpg", jpeg))
            else:
                (raw / split).mkdir(exist_ok=True)
                (raw / split / f"{iid}.jpg").write_bytes(jpeg)
        if split == "validation":
            info.append(["not-an-image-id", split] + [""] * 10)
        if split == "test":
            info.append([f"{rng.getrandbits(64):016x}", split] + [""] * 9 + ["abc"])
        name = "train-images-boxable-with-rotation.csv" if split == "train" else f"{split}-images-with-rotation.csv"
        _write_csv(raw / name, INFO_HEADER, info)
        bbox_header = BOX_HEADER + (list(XCLICK) if split == "train" else [])
        _write_csv(raw / ("oidv6-train-annotations-bbox.csv" if split == "train" else f"{split}-annotations-bbox.csv"),
                   bbox_header, boxes)
        _write_csv(raw / f"{split}-annotations-human-imagelabels-boxable.csv",
                   ["ImageID", "Source", "LabelName", "Confidence"], human)
        _write_csv(raw / f"{split}-annotations-machine-imagelabels.csv",
                   ["ImageID", "Source", "LabelName", "Confidence"], machine)
        _write_csv(raw / f"oidv6-{split}-annotations-vrd.csv", list(REQUIRED["vrd"]), vrd)
        _write_csv(raw / f"{split}-annotations-object-segmentation.csv",
                   [*REQUIRED["seg"], "PredictedIoU", "Clicks"], seg)
        _write_csv(raw / f"oidv7-{'val' if split == 'validation' else split}-annotations-point-labels.csv",
                   ["ImageId", "X", "Y", "Label", "EstimatedYesNo", "Source", "YesVotes", "NoVotes", "UnsureVotes",
                    "TextLabel"], points)
        if split == "train":
            from PIL import Image as PILImage
            by_zip: dict[str, list] = {}
            for r in seg:
                by_zip.setdefault(r[1][0], []).append(r[0])
            for x, paths in sorted(by_zip.items()):
                (raw / "train-masks").mkdir(exist_ok=True)
                with zipfile.ZipFile(raw / "train-masks" / f"train-masks-{x}.zip", "w") as z:
                    for mp in paths:
                        buf = io.BytesIO()
                        PILImage.new("L", (16, 16), 255).save(buf, format="PNG")
                        z.writestr(zipfile.ZipInfo(mp, (2024, 1, 1, 0, 0, 0)), buf.getvalue())
    narratives["train_v6_localized_narratives-00001-of-00010"] = [
        _narrative("train", LEADING_ZEROS_ID, 2, NARRATIVE_CAPTIONS[1])]
    narratives.setdefault("validation_localized_narratives", []).append(
        _narrative("validation", ORPHAN_NARRATIVE_ID, 3, "no image"))
    for shard, rows in narratives.items():
        with open(raw / f"open_images_{shard}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (raw / "tar").mkdir(exist_ok=True)
    for name, members in sorted(tars.items()):
        with tarfile.open(raw / "tar" / f"{name}.tar.gz", "w:gz") as t:
            for mname, data in members:
                info = tarfile.TarInfo(mname)
                info.size, info.mtime = len(data), 1700000000
                t.addfile(info, io.BytesIO(data))
