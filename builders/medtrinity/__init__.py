"""MedTrinity-25M — medical images with machine-generated multigranular captions (UCSC-VLAA, 2024).

Raw layout: the gated Hub repository, in either or both of its two shapes.

* ``25M_demo/**/*.parquet``: ``image`` (HF Image struct ``{bytes, path}``), ``id``, ``caption``.
* ``25M_full/**/*.parquet``: metadata only, ``file_name`` and ``caption`` (required), ``id`` and
  ``source`` (kept when present), joined by basename with the image files inside
  ``25M_accessible/**/*.tar.zst`` (zstd-compressed tars, images nested several folders deep).

The layout is detected from those folder names. Splits: 25M_full rows go to ``train``; 25M_demo rows go
to ``demo``, or to ``train`` when the raw folder has no 25M_full. Keys are the upstream ``id`` (so a
demo row whose id is also in 25M_full counts as a ``duplicate_key`` of it), or ``sha1-`` + 16 hex of
sha1 of the id, else of ``source|file_name``, when the id is missing, not key-safe or itself of that
form (hashed keys never equal a literal id).

The tars are streamed, never extracted (``shards``): ``partitions`` streams every shard once for its
member names; each shard becomes one partition whose rows are in the order of their image in the
shard, so ``records`` streams it once, one image at a time, and reads no member whose header size is
over ``image.max_bytes`` (``image_too_large``). Rows whose basename is in no shard fail with
``image_not_accessible``; a truncated shard is noted ``shard_truncated:<name>`` and the rows whose
image lies past the break fail with ``shard_truncated``. Parquet is read in batches (``tables``): a
row that does not decode fails (``row_not_utf8``, ``malformed_row``, or ``unreadable_row_group`` for the
rest of a damaged row group); a caption over ``max_row_bytes`` is ``row_too_large``.

The caption is kept whole as ``text``. No ROI boxes or masks are released as data, so ``roi_bbox`` and
``roi_mask`` stay null (they are never derived from the caption). ``license`` is the configured
licence of the row's ``source`` (``source_licenses``), else ``license``, else null. Raw format:
docs/RAW_FORMATS.md §4. The synthetic sample is in ``sample``.

This module is the dataset's description (Record, Config, how rows and members become records); a
builder does no I/O plumbing, sharding, retries or format code.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from vldata import (
    Builder,
    Config,
    Failed,
    Image,
    Origin,
    Partition,
    Record,
    RowContext,
    StructuralError,
)
from vldata.ingest.tarstream import ContainerBroken, read_member, stream_members
from vldata.layout import valid_key

from .shards import index_shards
from .tables import Unreadable, check_columns, raw_json, row_group_rows, rows_at

DEMO, FULL, ACCESSIBLE = "25M_demo", "25M_full", "25M_accessible"
DEMO_COLUMNS = ("image", "id", "caption")
FULL_COLUMNS = ("file_name", "caption")
FULL_OPTIONAL = ("id", "source")
HASHED = "sha1-"  # the prefix of keys hashed from rows whose id is missing or not key-safe
_HASHED = re.compile(r"^sha1-[0-9a-f]{16}$")


class MedTrinityRecord(Record):
    subset: Literal["25M_demo", "25M_full"] = Field(description="Upstream configuration the row comes from.")
    id: str | None = Field(description="Upstream id, always a string.")
    file_name: str | None = Field(description="Image basename (25M_full); null in 25M_demo.")
    source: str | None = Field(description="Originating dataset as written upstream (e.g. pmc_oa, brats_24).")
    image: Image
    image_mode: str | None = Field(description="PIL mode of the upstream image before the image policy (P, LA, I;16, ...).")
    image_shard: str | None = Field(description="25M_accessible shard the image was read from (25M_full).")
    image_member: str | None = Field(description="Path of the image inside that shard.")
    roi_bbox: list[Annotated[float, pa.float32()]] | None = Field(
        description="Always null: no structured ROI boxes are released (never derived from the caption).")
    roi_mask: bytes | None = Field(description="Always null: no ROI masks are released.")
    license: str | None = Field(description="Licence of the source dataset when configured, else null.")
    raw: str = Field(description="JSON of the original parquet row (the demo image as its path only).")


class MedTrinityConfig(Config):
    license: str | None = Field(default=None, description="Licence for rows whose source has none configured.")
    source_licenses: dict[str, str] = Field(default_factory=dict, description="Licence per upstream source name.")
    rows_per_partition: int = Field(default=1024, gt=0, description="Rows per unit of work for rows with no shard.")
    max_row_bytes: int = Field(default=16 << 20, gt=0, description="Rows with a longer caption are row_too_large.")


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def _text_or_none(v) -> str | None:
    return None if v is None else str(v)


def _row_key(row: dict | Unreadable, ref: Origin) -> str:
    """The id when it is key-safe and not of the hashed form, else ``HASHED`` + 16 hex digits of sha1
    of the id (else of ``source|file_name``, else of the ref): the two never collide."""
    row = {} if isinstance(row, Unreadable) else row
    row_id, file_name = _text_or_none(row.get("id")), _text_or_none(row.get("file_name"))
    if row_id and valid_key(row_id) and not _HASHED.match(row_id):
        return row_id
    basis = row_id if row_id else (f"{_text_or_none(row.get('source'))}|{file_name}" if file_name else str(ref))
    return HASHED + hashlib.sha1(basis.encode()).hexdigest()[:16]


def _mode(data: bytes) -> str | None:
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as im:
            return im.mode
    except Exception:  # noqa: BLE001 — the image policy reports the real problem
        return None


class MedTrinityBuilder(Builder):
    name = "medtrinity"
    version = "1.0.0"
    summary = "MedTrinity-25M (UCSC-VLAA, 2024): medical images with generated multigranular captions"
    Config = MedTrinityConfig
    Record = MedTrinityRecord
    balance_fields = ("source",)

    # ------------------------------------------------------------------ partitions

    def partitions(self, raw: Path) -> list[Partition]:
        demo = _files(raw / DEMO, "*.parquet") if (raw / DEMO).is_dir() else []
        full = _files(raw / FULL, "*.parquet") if (raw / FULL).is_dir() else []
        if not demo and not full:
            raise StructuralError(f"{raw}: neither {DEMO}/*.parquet nor {FULL}/*.parquet found")
        if full and not (raw / ACCESSIBLE).is_dir():
            raise StructuralError(f"{raw / ACCESSIBLE}: required folder not found (the images of {FULL})")
        for path in demo:
            check_columns(path, DEMO_COLUMNS)
        for path in full:
            check_columns(path, FULL_COLUMNS)
        parts = self._full_partitions(raw, full) if full else []
        demo_split = "demo" if full else "train"
        for path in demo:
            meta = pq.ParquetFile(path).metadata
            for rg in range(meta.num_row_groups):
                parts.append(Partition(index=len(parts), split=demo_split, input_rows=meta.row_group(rg).num_rows,
                                       payload={"kind": "demo", "file": str(path), "rel": str(path.relative_to(raw)),
                                                "row_group": rg}))
        return parts

    def _full_partitions(self, raw: Path, files: list[Path]) -> list[Partition]:
        shards = _files(raw / ACCESSIBLE, "*.tar.zst")
        where, truncated, duplicates = index_shards(shards)
        by_shard: dict[int, list[tuple[int, int, int, int]]] = {}
        unmatched: list[tuple[int, int, int]] = []
        for fi, path in enumerate(files):
            for rg in range(pq.ParquetFile(path).num_row_groups):  # an unreadable row fails in records()
                for ri, row in row_group_rows(path, rg, ["file_name"]):
                    name = None if isinstance(row, Unreadable) else row["file_name"]
                    hit = where.get(str(name).rsplit("/", 1)[-1]) if name is not None else None
                    if hit is None:
                        unmatched.append((fi, rg, ri))
                    else:
                        by_shard.setdefault(hit[0], []).append((hit[1], fi, rg, ri))
        common = {"files": [str(p) for p in files], "rels": [str(p.relative_to(raw)) for p in files],
                  "truncated": sorted(shards[i].name for i in truncated)}
        parts: list[Partition] = []
        for si in sorted(by_shard):
            rows = sorted(by_shard[si])
            parts.append(Partition(index=len(parts), split="train", input_rows=len(rows),
                                   payload={**common, "kind": "shard", "shard": str(shards[si]), "rows": rows}))
        size = self.config.rows_per_partition
        for start in range(0, len(unmatched), size):
            chunk = unmatched[start:start + size]
            parts.append(Partition(index=len(parts), split="train", input_rows=len(chunk),
                                   payload={**common, "kind": "unmatched", "rows": chunk}))
        notes = {f"shard_truncated:{shards[si].name}": 1 for si in truncated}
        if duplicates:
            notes["duplicate_basename_in_shards"] = duplicates
        if not shards:
            notes["no_accessible_shards"] = 1
        if notes and parts:
            parts[0] = replace(parts[0], notes=notes)
        return parts

    # ------------------------------------------------------------------ records

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed]:
        p = partition.payload
        if p["kind"] == "demo":
            yield from self._demo(p, ctx)
            return
        rows = self._full_rows(p)
        if p["kind"] == "unmatched":
            hint = f"; truncated shards: {', '.join(p['truncated'])}" if p["truncated"] else ""
            for loc in p["rows"]:
                row, ref, key = rows[loc]
                yield self._record(rows[loc], None, ctx) if isinstance(row, Unreadable) else Failed(
                    key, "image_not_accessible", f"{row.get('file_name')!r} is in no {ACCESSIBLE} shard{hint}", ref)
            return
        yield from self._shard(p, rows, ctx)

    def _full_rows(self, p: dict) -> dict[tuple[int, int, int], tuple[dict | Unreadable, Origin, str]]:
        """The partition's metadata rows: {(file, row group, row): (row, ref, key)}."""
        return {loc: (row, ref, _row_key(row, ref)) for loc, row, ref in rows_at(p["files"], p["rels"], p["rows"])}

    def _shard(self, p: dict, rows: dict, ctx: RowContext) -> Iterator[Record | Failed]:
        shard = Path(p["shard"])
        pending = list(p["rows"])  # (member position, file, row group, row), sorted by position
        i = 0
        try:
            for pos, (member, tar) in enumerate(stream_members(shard)):
                if i < len(pending) and pending[i][0] == pos:
                    cap = self.config.image.max_bytes  # the size from the header, before reading
                    data = read_member(tar, member, shard) if member.size <= cap else Unreadable(
                        "image_too_large", f"{shard.name}:{member.name}: {member.size} bytes, over image.max_bytes={cap}")
                    while i < len(pending) and pending[i][0] == pos:
                        yield self._record(rows[pending[i][1:]], data, ctx, shard.name, member.name)
                        i += 1
        except ContainerBroken as e:
            for loc in pending[i:]:
                _, ref, key = rows[loc[1:]]
                yield Failed(key, "shard_truncated", str(e), ref)
            return
        for loc in pending[i:]:  # cannot happen unless the shard changed since partitions()
            _, ref, key = rows[loc[1:]]
            yield Failed(key, "image_not_accessible", f"{shard.name}: member no longer present", ref)

    def _demo(self, p: dict, ctx: RowContext) -> Iterator[Record | Failed]:
        meta = pq.ParquetFile(p["file"]).metadata
        offset = sum(meta.row_group(i).num_rows for i in range(p["row_group"]))
        for ri, row in row_group_rows(p["file"], p["row_group"]):
            ref = Origin(p["rel"], offset + ri)
            image = None if isinstance(row, Unreadable) else row.get("image")
            data = image.get("bytes") if isinstance(image, dict) else None
            yield self._record((row, ref, _row_key(row, ref)), data, ctx)

    def _record(self, entry: tuple[dict | Unreadable, Origin, str], data: bytes | Unreadable | None, ctx: RowContext,
                shard: str | None = None, member: str | None = None) -> Record | Failed:
        """A 25M_full row with its shard member's bytes, or a 25M_demo row (no shard) with its image."""
        row, ref, key = entry
        for bad in (row, data):
            if isinstance(bad, Unreadable):
                return Failed(key, bad.reason, bad.message, ref)
        caption = _text_or_none(row.get("caption"))
        if not caption:
            return Failed(key, "caption_missing", "empty caption", ref)
        if len(caption) > self.config.max_row_bytes:
            return Failed(key, "row_too_large", f"a caption of {len(caption)} characters", ref)
        if data is not None and len(data) > self.config.image.max_bytes:
            return Failed(key, "image_too_large", f"{len(data)} bytes, over image.max_bytes", ref)
        img = ctx.image(data, "image struct has no bytes")
        if not isinstance(img, Image):
            return Failed(key, img.reason, f"{shard}:{member}: {img.message}" if shard else img.message, ref)
        full = shard is not None
        source = _text_or_none(row.get("source")) if full else None
        return ctx.located(MedTrinityRecord(
            key=key, text=caption, subset=FULL if full else DEMO, id=_text_or_none(row.get("id")),
            file_name=_text_or_none(row.get("file_name")) if full else None, source=source, image=img,
            image_mode=_mode(data), image_shard=shard, image_member=member, roi_bbox=None, roi_mask=None,
            license=self.config.source_licenses.get(source or "", self.config.license) if full else self.config.license,
            raw=raw_json(row)), ref)

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        from .sample import write_sample

        write_sample(raw, n, seed)
