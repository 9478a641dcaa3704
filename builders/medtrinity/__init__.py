"""MedTrinity-25M — medical images with machine-generated multigranular captions (UCSC-VLAA, 2024).

Raw layout: the gated Hub repository, in either or both of its two shapes.

* ``25M_demo/**/*.parquet``: ``image`` (HF Image struct ``{bytes, path}``), ``id``, ``caption``.
* ``25M_full/**/*.parquet``: metadata only, ``file_name`` and ``caption`` (required), ``id`` and
  ``source`` (kept when present), joined by basename with the image files inside
  ``25M_accessible/**/*.tar.zst`` (zstd-compressed tars, images nested several folders deep).

The layout is detected from those folder names. Splits: 25M_full rows go to ``train``; 25M_demo rows go
to ``demo``, or to ``train`` when the raw folder has no 25M_full. Keys are the upstream ``id`` (so a
demo row whose id is also in 25M_full counts as a ``duplicate_key`` of it), or ``sha1`` of
``source|file_name`` when the id is missing or not key-safe.

The tars are streamed, never extracted (``shards``). ``partitions`` streams every shard once for its
member names (an index basename -> (shard, position)); each shard then becomes one partition whose
rows are ordered by the position of their image in the shard, so ``records`` streams the shard once
and holds one image at a time. Rows whose basename is in no shard
fail with ``image_not_accessible``; a truncated shard is noted as ``shard_truncated:<name>`` and the
rows whose image lies past the break fail with ``shard_truncated``; the other shards build.

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
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from vldata import Builder, Config, Failed, Image, Partition, Record, RowContext, StructuralError
from vldata.layout import valid_key

from .shards import ShardTruncated, read_member, stream_members

DEMO, FULL, ACCESSIBLE = "25M_demo", "25M_full", "25M_accessible"
DEMO_COLUMNS = ("image", "id", "caption")
FULL_COLUMNS = ("file_name", "caption")
FULL_OPTIONAL = ("id", "source")


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


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def _check_columns(path: Path, required: tuple[str, ...]) -> list[str]:
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as e:  # noqa: BLE001 — any unreadable parquet footer is structural
        raise StructuralError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    missing = [c for c in required if c not in names]
    if missing:
        raise StructuralError(f"{path}: missing required column '{missing[0]}'"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return names


def _text_or_none(v) -> str | None:
    return None if v is None else str(v)


def _key(row_id: str | None, source: str | None, file_name: str | None, fallback: str) -> str:
    if row_id and valid_key(row_id):
        return row_id
    basis = row_id if row_id else (f"{source}|{file_name}" if file_name else fallback)
    return hashlib.sha1(basis.encode()).hexdigest()[:16]


def _mode(data: bytes) -> str | None:
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as im:
            return im.mode
    except Exception:  # noqa: BLE001 — the image policy reports the real problem
        return None


def _raw_json(row: dict) -> str:
    row = dict(row)
    if isinstance(row.get("image"), dict):
        row["image"] = {"path": row["image"].get("path")}
    return json.dumps(row, ensure_ascii=False, sort_keys=True, default=str)


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
            _check_columns(path, DEMO_COLUMNS)
        for path in full:
            _check_columns(path, FULL_COLUMNS)
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
        where: dict[str, tuple[int, int]] = {}  # basename -> (shard, member position); first shard wins
        truncated: dict[int, str] = {}
        duplicates = 0
        for si, shard in enumerate(shards):
            pos = 0
            try:
                for member, _ in stream_members(shard):
                    base = member.name.rsplit("/", 1)[-1]
                    if base in where:
                        duplicates += 1
                    else:
                        where[base] = (si, pos)
                    pos += 1
            except ShardTruncated as e:
                truncated[si] = str(e)
        by_shard: dict[int, list[tuple[int, int, int, int]]] = {}
        unmatched: list[tuple[int, int, int]] = []
        for fi, path in enumerate(files):
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                names = pf.read_row_group(rg, columns=["file_name"]).column(0).to_pylist()
                for ri, name in enumerate(names):
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
                yield Failed(key, "image_not_accessible",
                             f"{row.get('file_name')!r} is in no {ACCESSIBLE} shard{hint}", ref)
            return
        yield from self._shard(p, rows, ctx)

    def _full_rows(self, p: dict) -> dict[tuple[int, int, int], tuple[dict, str, str]]:
        """The partition's metadata rows, read by row group: {(file, row group, row): (row, ref, key)}."""
        wanted: dict[tuple[int, int], set[int]] = {}
        for loc in p["rows"]:
            fi, rg, ri = loc[-3:]
            wanted.setdefault((fi, rg), set()).add(ri)
        out = {}
        for (fi, rg), indices in sorted(wanted.items()):
            pf = pq.ParquetFile(p["files"][fi])
            offset = sum(pf.metadata.row_group(i).num_rows for i in range(rg))
            table = pf.read_row_group(rg)
            order = sorted(indices)
            for ri, row in zip(order, table.take(order).to_pylist()):
                row_id = _text_or_none(row.get("id"))
                key = _key(row_id, _text_or_none(row.get("source")), _text_or_none(row.get("file_name")),
                           f"{p['rels'][fi]}:{offset + ri}")
                out[(fi, rg, ri)] = (row, f"{p['rels'][fi]}:{offset + ri}", key)
        return out

    def _shard(self, p: dict, rows: dict, ctx: RowContext) -> Iterator[Record | Failed]:
        shard = Path(p["shard"])
        pending = list(p["rows"])  # (member position, file, row group, row), sorted by position
        i = 0
        try:
            for pos, (member, tar) in enumerate(stream_members(shard)):
                if i < len(pending) and pending[i][0] == pos:
                    data = read_member(tar, member, shard)
                    while i < len(pending) and pending[i][0] == pos:
                        yield self._record(rows[pending[i][1:]], data, ctx, shard.name, member.name)
                        i += 1
        except ShardTruncated as e:
            for loc in pending[i:]:
                _, ref, key = rows[loc[1:]]
                yield Failed(key, "shard_truncated", str(e), ref)
            return
        for loc in pending[i:]:  # cannot happen unless the shard changed since partitions()
            _, ref, key = rows[loc[1:]]
            yield Failed(key, "image_not_accessible", f"{shard.name}: member no longer present", ref)

    def _demo(self, p: dict, ctx: RowContext) -> Iterator[Record | Failed]:
        pf = pq.ParquetFile(p["file"])
        offset = sum(pf.metadata.row_group(i).num_rows for i in range(p["row_group"]))
        for ri, row in enumerate(pf.read_row_group(p["row_group"]).to_pylist()):
            ref = f"{p['rel']}:{offset + ri}"
            image = row.get("image")
            data = image.get("bytes") if isinstance(image, dict) else None
            yield self._record((row, ref, _key(_text_or_none(row.get("id")), None, None, ref)), data, ctx)

    def _record(self, entry: tuple[dict, str, str], data: bytes | None, ctx: RowContext, shard: str | None = None,
                member: str | None = None) -> Record | Failed:
        """A 25M_full row with its shard member's bytes, or a 25M_demo row (no shard) with its image."""
        row, ref, key = entry
        caption = _text_or_none(row.get("caption"))
        if not caption:
            return Failed(key, "caption_missing", "empty caption", ref)
        img = ctx.image(data, "image struct has no bytes")
        if not isinstance(img, Image):
            return Failed(key, img.reason, f"{shard}:{member}: {img.message}" if shard else img.message, ref)
        full = shard is not None
        source = _text_or_none(row.get("source")) if full else None
        return MedTrinityRecord(
            key=key, text=caption, subset=FULL if full else DEMO, id=_text_or_none(row.get("id")),
            file_name=_text_or_none(row.get("file_name")) if full else None, source=source, image=img,
            image_mode=_mode(data), image_shard=shard, image_member=member, roi_bbox=None, roi_mask=None,
            license=self.config.source_licenses.get(source or "", self.config.license) if full else self.config.license,
            raw=_raw_json(row))

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        from .sample import write_sample

        write_sample(raw, n, seed)
