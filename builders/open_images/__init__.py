"""Open Images V4-V7 — Flickr images with labels, boxes, relationships, masks, points and narratives (Google).

Raw layout: the official annotation files anywhere under the raw folder, recognised by their upstream
names (docs/RAW_FORMATS.md §3.1), and the CVDF images, either as ``<split>/<ImageID>.jpg`` folders
(directly under the raw folder or under ``images/``) or as the tarballs ``train_{0..f}.tar.gz``,
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

Memory stays bounded by an external grouping (``files``): ``partitions`` streams every annotation file
once into spill files keyed by the first ``prefix_chars`` hex digits of the ImageID (in the engine's
scratch folder, which the engine removes when the build completes; ``spill_dir`` overrides it; named by
a digest of the input files and settings). A partition is one (split, prefix); ``records`` reads only
its own spill, so it holds the annotations of 1/16^k of the images, and yields folder images in
image-info order, then tarball images in member order (one image held at a time), then the rest. A
partition streams the tarball of its first hex digit (``train_<x>``, or the whole ``validation``/``test``
tarball), so with tarballs ``prefix_chars=1`` reads each tarball once; larger values re-read it 16 or
256 times but hold fewer annotations in memory.

``text`` is built from the positive labels' display names (``TEMPLATES``): human positives
(confidence 1) first, else machine labels, else box classes, else ``"a photo"``; ``text_template``
names the template used. Negatives never enter the text.

Annotation rows whose ImageID is in no image-info file are counted as notes
(``<kind>_rows_without_image_info``, in the split of the bucket's first partition); an annotation row
that does not parse is noted as ``malformed_<kind>_row`` (for narratives also a line that is not a
JSON object with a string ``image_id``, noted before grouping), one over ``max_row_bytes`` as
``<kind>_row_too_large``. Hostile input (``containers``) costs only its own rows: an image-info row
over ``max_row_bytes``, not UTF-8, refused by csv or naming an unknown ``Subset`` fails
(``row_too_large``, ``row_not_utf8``, ``malformed_row``, ``bad_subset``); an image over
``image.max_bytes`` is not read (``image_too_large``); a broken tarball is noted
``tarball_truncated:<name>`` and the rows still waiting for it fail ``tarball_truncated``; a masks zip
that does not open is noted ``masks_zip_unreadable:<name>``.

Not done: the narratives' ``.ogg`` voice recordings (only their path is kept) and their captions as
``text``; the relationship vocabulary and segmentation class lists.

This module is the dataset's description: its Record, Config and how an image-info row with its
annotations and image becomes a record. Recognising and reading the raw files, the spill and the image
lookup are in ``files`` (reading containers in bounded memory in ``containers``), the annotation
structs and their parsing in ``annotations``, the synthetic sample in ``sample``. A builder does no I/O plumbing, sharding, retries or format code.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from vldata import Builder, Config, Failed, Image, Origin, Partition, Record, RowContext
from vldata.layout import valid_key

from .annotations import (
    F32,
    I64,
    Box,
    Label,
    Mask,
    Narrative,
    Point,
    Relationship,
    annotations,
    opt_float,
    opt_int,
    opt_str,
)
from .containers import BadRow, open_zips
from .files import (
    SPLITS,
    classes_table,
    hierarchy_edges,
    image_sources,
    input_files,
    is_image_id,
    read_bucket,
    ref_location,
    spill,
    with_images,
)

TEMPLATES = {
    "human_positive": "a photo of {labels}",
    "machine": "a photo of {labels}",
    "boxes": "a photo of {labels}",
    "none": "a photo",
}


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
    max_row_bytes: int = Field(default=16 << 20, gt=0, description="Longer CSV/JSON-lines rows are row_too_large.")


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
        found = input_files(raw, self.config.max_row_bytes)
        k = self.config.prefix_chars
        digest = hashlib.sha1(json.dumps(
            [self.version, "spill-2", k, self.config.max_row_bytes, str(raw.resolve())]
            + [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for fs in found.values() for p, _ in fs]).encode()
        ).hexdigest()[:16]
        folder = Path(self.config.spill_dir or self.scratch or tempfile.gettempdir()) / f"vldata-open_images-{digest}"
        counts, notes = spill(raw, found, folder, k, self.config.max_row_bytes)
        images = image_sources(raw)
        mask_zips = sorted(raw.rglob("*-masks-*.zip"))
        order = {s: i for i, s in enumerate(SPLITS)}
        parts: list[Partition] = []
        seen: set[str] = set()
        for (split, prefix), n in sorted(counts.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])):
            src = images.get(split, {})
            tars = [t for name, t in src.get("tars", []) if name in (f"{split}_{prefix[0]}", split)]
            zips = [str(z) for z in mask_zips if z.name == f"{split}-masks-{prefix[0]}.zip"]
            parts.append(Partition(index=len(parts), split=split, input_rows=n, payload={
                "spill": str(folder), "prefix": prefix, "split": split, "dir": src.get("dir"), "tars": tars,
                "zips": zips, "count_orphans": prefix not in seen}))
            seen.add(prefix)
        if notes and parts:
            parts[0] = replace(parts[0], notes=notes)
        return parts

    def side_tables(self, raw: Path) -> dict[str, pa.Table]:
        cap = self.config.max_row_bytes
        files = input_files(Path(raw), cap)
        tables: dict[str, pa.Table] = {}
        described = [p for p, _ in files.get("classes", [])]
        trainable_files = [p for p, _ in files.get("trainable", [])]
        if described or trainable_files:
            tables["classes"] = classes_table(described, trainable_files, cap)
        if files.get("hierarchy"):
            edges = list(dict.fromkeys(e for p, _ in files["hierarchy"] for e in hierarchy_edges(p)))
            tables["hierarchy"] = pa.table([list(c) for c in zip(*edges)] if edges else [[], [], []],
                                           schema=pa.schema([("parent", pa.string()), ("child", pa.string()),
                                                             ("kind", pa.string())]))
        return tables

    # ------------------------------------------------------------------ records

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed]:
        p = partition.payload
        split = p["split"]
        classes, attributes, infos, ann = read_bucket(
            Path(p["spill"]), p["prefix"], split, ctx.note if p["count_orphans"] else None)  # orphans once per bucket
        zips = open_zips(p["zips"], ctx.note)
        try:
            for ref, row, data, source in with_images(infos, Path(p["dir"]) if p["dir"] else None, p["tars"],
                                                      self.config.image.max_bytes, ctx.note):
                yield self._record(ref, row, split, ann.get(row["ImageID"].strip(), {}), classes, attributes,
                                   data, source, zips, ctx)
        finally:
            for z in zips:
                z.close()

    def _record(self, ref, row, split, ann, classes, attributes, data, source, zips, ctx):
        image_id = row["ImageID"].strip()
        key = image_id if valid_key(image_id) else hashlib.sha1((image_id or ref).encode()).hexdigest()[:16]
        origin = Origin(*ref_location(ref), opt_str(row.get("OriginalURL")))
        if row.get("__bad"):  # unreadable bytes, or no known split (files._info_row)
            return Failed(key, row["__bad"][0], row["__bad"][1], origin)
        if not is_image_id(image_id):
            return Failed(key, "bad_image_id", f"ImageID {image_id!r} is not 16 lowercase hex characters", origin)
        if not row.pop("__ncols", True):
            return Failed(key, "malformed_row", "wrong number of columns", origin)
        try:
            rotation = opt_float(row.get("Rotation"))
            if rotation is not None and rotation not in (0.0, 90.0, 180.0, 270.0):
                raise ValueError(row.get("Rotation"))
        except ValueError:
            return Failed(key, "bad_rotation", f"Rotation {row.get('Rotation')!r}", origin)
        try:
            size = opt_int(row.get("OriginalSize"), 64)
        except ValueError:
            return Failed(key, "malformed_row", f"OriginalSize {row.get('OriginalSize')!r}", origin)
        if isinstance(data, BadRow):
            return Failed(key, data.reason, data.message, origin)
        img = ctx.image(data, f"{image_id}.jpg in no {split} folder or tarball")
        if not isinstance(img, Image):
            return Failed(key, img.reason, img.message, origin)
        fields = annotations(ann, classes, attributes, zips, ctx)
        text, template = _text(fields["labels_human"], fields["labels_machine"], fields["boxes"])
        return ctx.located(OpenImagesRecord(
            key=key, text=text, text_template=template, image_id=image_id, split=split,
            original_url=opt_str(row.get("OriginalURL")), original_landing_url=opt_str(row.get("OriginalLandingURL")),
            license=opt_str(row.get("License")), author=opt_str(row.get("Author")),
            author_profile_url=opt_str(row.get("AuthorProfileURL")), title=opt_str(row.get("Title")),
            original_size=size, original_md5_b64=opt_str(row.get("OriginalMD5")),
            thumbnail_300k_url=opt_str(row.get("Thumbnail300KURL")), rotation=rotation, image=img,
            image_source=source, **fields), origin)

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        from .sample import write_sample

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
