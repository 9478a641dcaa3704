"""LAION-style web image-text collections: LAION-400M, LAION-5B (2B-en, 2B-multi, 1B-nolang, the
"joined" and aesthetic files), DataComp/CommonPool, COYO-700M and DFN.

Raw input: metadata parquet files with one (image URL, alt-text) row each, in any folder layout
(every ``*.parquet`` under RAW, sorted by path), or img2dataset output folders (``NNNNN.parquet``
with ``key``/``status``/``error_message`` columns next to ``NNNNN.tar``, a parquet image column, or
a ``NNNNN/`` folder of files). The collections name their columns differently (``URL``/``TEXT`` vs
``url``/``text``, ``similarity`` vs ``clip_b32_similarity_score``...): each file's column set is
detected from its schema (``COLUMNS``, ``column_set``), and ``url_col``/``caption_col`` override
the choice. A file without a usable URL column stops the build before any work.

One record per row that downloaded (vldata.ingest.fetch: timeouts, retries, politeness, only http/https)
and decoded: the typed normalized fields, every source column in ``raw`` (JSON, original names),
and the image. Rows dropped by a configured filter (``min_similarity``, ``max_punsafe``,
``max_pwatermark``, ``min_image_size``, ``max_aspect_ratio``, ``languages``, ``nsfw_tags``) are
``filtered`` with the setting's name as reason; duplicates by URL and by image sha256 are dropped by
the engine (``dedup``). Keys: ``FFFFF_RRRRRRRRR`` (file index in sorted order, row in file) for
metadata rows, img2dataset's own key for img2dataset rows, so ``rerun=OUT/build/failures.parquet``
rebuilds exactly the rows that failed. img2dataset rows are read in key order (its files are in
completion order); its failures become failures with its error message, without any network.

The sample (``vldata sample laion RAW``, written by ``sample``) is a LAION-400M-shaped and a
DataComp-shaped parquet whose URLs point at ``http://127.0.0.1:<port>``, kept in ``RAW/loopback.json``;
``sample_services(raw)`` serves it while the sample is built (``vldata.ingest.loopback``).

Damage (``parquet_rows``, ``vldata.ingest.img2dataset``): an unreadable footer is a StructuralError;
a damaged page, a non-UTF-8 string, a damaged tar or an oversized member fails only its rows.

This module turns raw rows into records: partitions, the Record, the Config and each row's outcome.
Column detection and value parsing are in ``columns``, reading rows in ``rows``. It does no I/O
plumbing (downloads go through ``RowContext.fetch_in_order``), sharding, retries or format code.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, field_validator

from vldata import (Builder, Config, Failed, Filtered, Image, Origin, Partition, Pending, Record, RowContext,
                    StructuralError)
from vldata.ingest import image as image_mod
from vldata.ingest import img2dataset, loopback
from vldata.ingest.rawfiles import raw_files
from vldata.ingest.fetch import FetchPolicy, FetchRequest, FetchResult
from vldata.layout import safe_key, valid_key

from . import columns, rows
from .columns import COLUMNS, ColumnSet, column_set, map_columns
from vldata.ingest.parquet_rows import Unreadable, group_sizes, open_parquet

__all__ = ["COLUMNS", "LaionBuilder", "LaionConfig", "LaionRecord", "column_set", "map_columns"]

Int16 = Annotated[int, pa.int16()]
Int32 = Annotated[int, pa.int32()]
Float32 = Annotated[float, pa.float32()]


# ------------------------------------------------------------------------------------------
# Record and config


class FaceBox(BaseModel):
    """A DataComp face box, in fractions of the image width and height."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


class LaionRecord(Record):
    image: Image = Field(description="The downloaded image, after the configured image policy (resize, encode).")
    url: str = Field(description="Image URL as in the metadata.")
    caption: str | None = Field(description="Alt-text / caption (TEXT, text or caption); null when empty.")
    column_set: ColumnSet = Field(description="Detected column set of the source file: laion (LAION-400M, "
                                  "laion2B-en), laion_language (laion2B-multi, laion1B-nolang), laion_joined, "
                                  "laion_aesthetic, datacomp (DataComp/CommonPool/DFN), coyo, custom, img2dataset.")
    source_file: str = Field(description="Metadata file, relative to the raw folder.")
    source_row: int = Field(description="Row in the source file (img2dataset: row of its shard parquet).")
    source_id: str | None = Field(description="SAMPLE_ID, uid or id of the metadata row, as a string.")
    uid: str | None = Field(description="DataComp / CommonPool / DFN uid: the 128-bit identifier as 32 lower-case "
                            "hex characters; null when the metadata has none.")
    meta_width: Int32 | None = Field(description="Image width recorded in the metadata (WIDTH, width, original_width).")
    meta_height: Int32 | None = Field(description="Image height recorded in the metadata.")
    original_width: Int32 | None = Field(description="Width of the downloaded image before resizing.")
    original_height: Int32 | None = Field(description="Height of the downloaded image before resizing.")
    similarity: float | None = Field(description="CLIP ViT-B/32 image-text cosine similarity (similarity, "
                                     "clip_b32_similarity_score, clip_similarity_vitb32).")
    similarity_l14: float | None = Field(description="CLIP ViT-L/14 similarity (DataComp, COYO).")
    nsfw_tag: str | None = Field(description="LAION's CLIP-based NSFW tag: UNLIKELY, UNSURE or NSFW.")
    punsafe: Float32 | None = Field(description="Probability that the image is unsafe (LAION-5B joined).")
    pwatermark: Float32 | None = Field(description="Probability that the image has a watermark (LAION-5B joined).")
    aesthetic: Float32 | None = Field(description="LAION aesthetic score (aesthetic, aesthetic_score_laion_v2).")
    language: str | None = Field(description="Detected language of the caption (LANGUAGE, detected_language).")
    license: str | None = Field(description="Licence the page declared (LICENSE); '?' becomes null.")
    source_hash: str | None = Field(description="Hash carried by the metadata (LAION hash, DataComp sha256, "
                                    "md5, COYO image_phash), as a string.")
    face_bboxes: list[FaceBox] | None = Field(description="DataComp face boxes (face_bboxes), fractions of the "
                                              "image size.")
    faces_blurred: bool = Field(description="True when the face boxes were blurred in `image` (blur_faces).")
    fetched_from: Literal["http", "mirror", "img2dataset"] = Field(description="Where the image bytes came from.")
    http_status: Int16 | None = Field(description="HTTP status of the final response (null unless fetched_from=http).")
    final_url: str | None = Field(description="URL after redirects (null unless fetched_from=http).")
    download_sha256: str | None = Field(description="sha256 of the bytes as downloaded, before any re-encoding.")
    exif: str | None = Field(description="EXIF tags as a JSON string, as img2dataset extracted them.")
    raw: str = Field(description="JSON of the original row with its original column names.")


def _split_list(value: Any) -> Any:
    """``--set languages=en,de`` -> ["en", "de"]; an empty string is an empty list."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class LaionConfig(Config):
    url_col: str | None = Field(None, description="Column holding the URL (default: detected).")
    caption_col: str | None = Field(None, description="Column holding the caption (default: detected).")
    rows_per_partition: int = Field(default=10_000, gt=0, description="Rows per unit of work.")
    fetch: FetchPolicy = FetchPolicy()
    mirror: str | None = Field(None, description="Folder of earlier downloads, DIR/<host>/<path>, read before the network.")
    verify_checksums: bool = Field(True, description="Check md5/sha256 columns against the downloaded bytes.")
    dedup: list[Literal["url", "image"]] = Field(["url", "image"], description="Drop repeated URLs / image sha256.")
    min_similarity: float | None = None
    max_punsafe: float | None = None
    max_pwatermark: float | None = None
    min_image_size: int | None = Field(None, gt=0, description="Minimum of width and height, metadata or downloaded.")
    max_aspect_ratio: float | None = Field(None, ge=1, description="Maximum of width/height and height/width.")
    languages: list[str] | None = Field(None, description="Keep only these language codes (rows with one).")
    nsfw_tags: list[str] | None = Field(None, description="Keep only these NSFW tags, e.g. UNLIKELY,UNSURE.")
    blur_faces: bool = Field(False, description="Blur DataComp face_bboxes in the stored image.")
    rerun: str | None = Field(None, description="failures.parquet (or output folder) of an earlier build of the same "
                              "raw input: build only the rows that failed there.")

    _lists = field_validator("dedup", "languages", "nsfw_tags", mode="before")(_split_list)


# ------------------------------------------------------------------------------------------
# The builder


class LaionBuilder(Builder):
    name = "laion"
    version = "1.0.0"
    summary = ("LAION-style web image-text pairs (LAION-400M/5B, DataComp, COYO, DFN) from URL metadata "
               "parquet or img2dataset output")
    Config = LaionConfig
    Record = LaionRecord

    def dedup_on(self) -> dict[str, str]:
        columns = {"url": "url", "image": "image_info.sha256"}
        return {name: columns[name] for name in self.config.dedup}

    def sample_services(self, raw: Path):
        return loopback.serve_sample(raw)

    # ---- partitions

    def partitions(self, raw: Path) -> list[Partition]:
        root, files = raw_files(raw, "*.parquet")
        if not files:
            raise StructuralError(f"{raw}: no parquet files (metadata or img2dataset shards) found")
        rerun = self._rerun_keys()
        parts: list[Partition] = []
        for file_index, path in enumerate(files):
            rel = str(path.relative_to(root))
            pf = open_parquet(path)
            names = pf.schema_arrow.names
            kind = column_set(names)
            exclude = img2dataset.COLUMNS if kind == "img2dataset" else ()
            cols = map_columns(str(path), names, self.config.url_col, self.config.caption_col, exclude)
            common = {"path": str(path), "rel": rel, "file_index": file_index, "cols": cols, "column_set": kind}
            if kind == "img2dataset":
                payload = {**common, "images": img2dataset.image_store(path, names), "keys": None, "names": names}
                n = pf.metadata.num_rows
                if rerun is not None:
                    keys = rows.shard_keys(str(path)) & rerun
                    payload["keys"], n = sorted(keys), len(keys)
                note = img2dataset.stats_note(path)
                notes = {note: 1} if note else {}
                if n:
                    parts.append(Partition(len(parts), "train", payload, n, notes))
                continue
            first_row = 0
            for rg, group_rows in enumerate(group_sizes(pf)):
                for start in range(0, group_rows, self.config.rows_per_partition):
                    stop = min(group_rows, start + self.config.rows_per_partition)
                    subset = None
                    if rerun is not None:
                        subset = [r for r in range(start, stop) if _meta_key(file_index, first_row + r) in rerun]
                        if not subset:
                            continue
                    payload = {**common, "row_group": rg, "first_row": first_row, "start": start, "stop": stop,
                               "rows": subset}
                    n = stop - start if subset is None else len(subset)
                    parts.append(Partition(len(parts), "train", payload, n))
                first_row += group_rows
        return parts

    def _rerun_keys(self) -> set[str] | None:
        if self.config.rerun is None:
            return None
        path = Path(self.config.rerun)
        if path.is_dir():
            path = path / "build" / "failures.parquet"
        if not path.is_file():
            raise StructuralError(f"rerun: {path} not found (give a failures.parquet or a build output folder)")
        table = pq.read_table(path, columns=["key", "outcome"])
        return {k for k, o in zip(table.column("key").to_pylist(), table.column("outcome").to_pylist()) if o == "failed"}

    # ---- records

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed | Filtered]:
        if partition.payload["column_set"] == "img2dataset":
            yield from self._img2dataset_records(partition, ctx)
        else:
            yield from self._metadata_records(partition, ctx)

    def _metadata_records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed | Filtered]:
        p, cfg = partition.payload, self.config
        plans: list[Pending | Filtered] = []
        for row_no, row in rows.metadata_rows(p):
            key = _meta_key(p["file_index"], row_no)
            if isinstance(row, Unreadable):
                plans.append(Failed(key, row.reason, row.message, Origin(p["rel"], row_no)))
                continue
            values = columns.fields(row, p["cols"])
            ref = Origin(p["rel"], row_no, values["url"] or None)
            dropped = columns.excluded(cfg, values, values["meta_width"], values["meta_height"])
            if dropped:
                plans.append(Filtered(key, *dropped, ref))
                continue
            sums: dict[str, str] = {}
            if cfg.verify_checksums:
                sums, malformed = columns.checksums(row, p["cols"])
                for name in malformed:
                    ctx.note(f"{name}_malformed")
            finish = partial(self._fetched, key, ref, row_no, values, p, ctx)
            plans.append(Pending(FetchRequest(values["url"] or None, **sums), finish))
        yield from ctx.fetch_in_order(plans, cfg.fetch, cfg.mirror)

    def _fetched(self, key: str, ref: Origin, row_no: int, values: dict, p: dict, ctx: RowContext,
                 result: FetchResult) -> Record | Failed | Filtered:
        if not result.ok:
            return Failed(key, result.reason, result.message, ref)
        return self._record(key, ref, row_no, values, result.data, p, ctx, fetched_from=result.source,
                            http_status=result.status, final_url=result.final_url, download_sha256=result.sha256)

    def _record(self, key: str, ref: Origin, row_no: int, values: dict, data: bytes, p: dict, ctx: RowContext,
                **fetch_fields: Any) -> Record | Failed | Filtered:
        original = fetch_fields.pop("original", None) or image_mod.dimensions(data) or (None, None)
        img = ctx.image(data)
        if not isinstance(img, Image):
            return Failed(key, img.reason, f"{values['url'][:200]}: {img.message}", ref)
        dropped = columns.excluded(self.config, values, *original)
        if dropped:
            return Filtered(key, *dropped, ref)
        blurred = False
        if self.config.blur_faces and values["face_bboxes"]:
            boxes = [(b["x_min"], b["y_min"], b["x_max"], b["y_max"]) for b in values["face_bboxes"]]
            img = image_mod.blur_boxes(img, boxes, self.config.image)
            blurred = True
        return ctx.located(LaionRecord(key=key, text=values["caption"] or "", image=img, column_set=p["column_set"],
                                       source_file=p["rel"], source_row=row_no, original_width=original[0],
                                       original_height=original[1], faces_blurred=blurred,
                                       **{"exif": None, "download_sha256": None, **values, **fetch_fields}), ref)

    def _img2dataset_records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed | Filtered]:
        """Readable rows in key order, then the unreadable ones; with ``keys`` (rerun) only those keys,
        a key whose row no longer reads failing."""
        p = partition.payload
        readable, unreadable, column = rows.shard_rows(p["path"], p["names"], p["images"])
        wanted = None if p["keys"] is None else set(p["keys"])
        with img2dataset.ShardImages(p["images"], column, self.config.fetch.max_bytes) as images:
            for row_no, row in readable:
                if wanted is None or str(row["key"]) in wanted:
                    yield self._img2dataset_row(str(row["key"]), row_no, row, images, p, ctx)
        if wanted is None:
            for row_no, bad in unreadable:
                yield Failed(rows.unreadable_key(p["rel"], row_no), bad.reason, bad.message, Origin(p["rel"], row_no))
        else:
            for key in sorted(wanted - {str(row["key"]) for _, row in readable}):
                yield Failed(key, "unreadable_row_group", f"{p['rel']}: the row of key {key} does not decode",
                             Origin(p["rel"]))

    def _img2dataset_row(self, key: str, row_no: int, row: dict, images: img2dataset.ShardImages,
                         p: dict, ctx: RowContext) -> Record | Failed | Filtered:
        values = columns.fields(row, p["cols"])
        ref = Origin(p["rel"], row_no, values["url"] or None)
        if not valid_key(key):
            return Failed(safe_key(key), "invalid_key",
                          f"img2dataset key {key!r} is not [A-Za-z0-9_-]", ref)
        original = (columns.dim(row.get("original_width")), columns.dim(row.get("original_height")))
        dropped = columns.excluded(self.config, values, values["meta_width"] or original[0],
                                   values["meta_height"] or original[1])
        if dropped:
            return Filtered(key, *dropped, ref)
        if row.get("status") != "success":
            message = row.get("error_message") or str(row.get("status"))
            return Failed(key, img2dataset.failure_reason(row.get("status"), message), message, ref)
        data = images.get(key)
        if data is None:
            return Failed(key, "image_missing", f"{key}: success in {p['rel']} but no image in the shard", ref)
        if isinstance(data, img2dataset.MemberFailure):
            return Failed(key, data.reason, data.message, ref)
        return self._record(key, ref, row_no, values, data, p, ctx, fetched_from="img2dataset", http_status=None,
                            final_url=None, original=original, download_sha256=columns.text(row.get("sha256")),
                            exif=columns.text(row.get("exif")))

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        from .sample import write_sample

        write_sample(raw, n, seed)


def _meta_key(file_index: int, row: int) -> str:
    return f"{file_index:05d}_{row:09d}"
