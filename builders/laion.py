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

The sample (``vldata sample laion RAW``) is a LAION-400M-shaped and a DataComp-shaped parquet whose
URLs point at ``http://127.0.0.1:<port>``; the port is chosen free when the sample is written and
kept in ``RAW/loopback.json`` with the served files in ``RAW/site``. ``sample_services(raw)`` serves
exactly that while the sample is built (``vldata.ingest.loopback``); real input starts nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, field_validator

from vldata import Builder, Config, Failed, Filtered, Image, Partition, Record, RowContext, StructuralError
from vldata.ingest import image as image_mod
from vldata.ingest import img2dataset, loopback
from vldata.ingest.fetch import FetchPolicy, FetchRequest, FetchResult
from vldata.layout import valid_key

Int16 = Annotated[int, pa.int16()]
Int32 = Annotated[int, pa.int32()]
Float32 = Annotated[float, pa.float32()]

# normalized field -> source column names, by preference (exact name first, then any casing)
COLUMNS: dict[str, tuple[str, ...]] = {
    "url": ("URL", "url"),
    "caption": ("TEXT", "text", "caption"),
    "source_id": ("SAMPLE_ID", "uid", "id"),
    "meta_width": ("WIDTH", "width", "original_width"),
    "meta_height": ("HEIGHT", "height", "original_height"),
    "similarity": ("similarity", "clip_b32_similarity_score", "clip_similarity_vitb32"),
    "similarity_l14": ("clip_l14_similarity_score", "clip_similarity_vitl14"),
    "nsfw_tag": ("NSFW",),
    "punsafe": ("punsafe",),
    "pwatermark": ("pwatermark",),
    "aesthetic": ("aesthetic", "aesthetic_score_laion_v2"),
    "language": ("LANGUAGE", "detected_language", "language"),
    "license": ("LICENSE",),
    "source_hash": ("hash", "sha256", "md5", "image_phash"),
    "md5": ("md5",),
    "sha256": ("sha256",),
    "face_bboxes": ("face_bboxes",),
}
ColumnSet = Literal["laion", "laion_language", "laion_joined", "laion_aesthetic", "datacomp", "coyo", "custom",
                    "img2dataset"]
_HEX = {"md5": re.compile(r"^[0-9a-f]{32}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}


def column_set(names: list[str]) -> str:
    """Which collection's column set a file has (see RAW_FORMATS §1.1)."""
    cols = set(names)
    if img2dataset.is_shard(names):
        return "img2dataset"
    if {"SAMPLE_ID", "URL", "TEXT"} <= cols:  # LAION-400M, laion2B-en; + LANGUAGE: 2B-multi, 1B-nolang
        return "laion_language" if "LANGUAGE" in cols else "laion"
    if {"URL", "TEXT"} <= cols and cols & {"punsafe", "pwatermark"}:
        return "laion_aesthetic" if "aesthetic" in cols else "laion_joined"
    if {"uid", "url", "text"} <= cols:  # DataComp / CommonPool / DFN pools
        return "datacomp"
    if {"id", "url", "text"} <= cols and cols & {"clip_similarity_vitb32", "image_phash"}:
        return "coyo"
    return "custom"


def map_columns(where: str, names: list[str], url_col: str | None, caption_col: str | None,
                exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """normalized field -> source column of one file; StructuralError without a URL column."""
    usable = [n for n in names if n not in exclude or n in ("url", "caption")]
    by_lower: dict[str, str] = {}
    for n in usable:
        by_lower.setdefault(n.lower(), n)
    mapping = {}
    for field_name, candidates in COLUMNS.items():
        found = next((c for c in candidates if c in usable), None) or \
            next((by_lower[c.lower()] for c in candidates if c.lower() in by_lower), None)
        if found is not None:
            mapping[field_name] = found
    for field_name, override in (("url", url_col), ("caption", caption_col)):
        if override is not None:
            if override not in names:
                raise StructuralError(f"{where}: {field_name}_col '{override}' is not a column "
                                      f"(columns: {', '.join(names)})")
            mapping[field_name] = override
    if "url" not in mapping:
        raise StructuralError(f"{where}: no URL column (columns: {', '.join(names)}); "
                              "name it with --set url_col=COLUMN")
    return mapping


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
# Row values


def _text(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _id(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return _text(v)


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _dim(v: Any) -> int | None:
    f = _float(v)
    return int(f) if f is not None and f.is_integer() and 0 < f < 2**31 else None


def _boxes(v: Any) -> list[dict] | None:
    if not isinstance(v, list):
        return None
    out = []
    for box in v:
        if isinstance(box, list) and len(box) == 4 and all(_float(x) is not None for x in box):
            out.append(dict(zip(("x_min", "y_min", "x_max", "y_max"), map(float, box))))
    return out


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


def _fields(row: dict, cols: dict[str, str]) -> dict:
    """The normalized record fields of one source row."""
    def get(name: str) -> Any:
        return row.get(cols[name]) if name in cols else None

    license_ = _text(get("license"))
    return {
        "url": _text(get("url")) or "", "caption": _text(get("caption")), "source_id": _id(get("source_id")),
        "meta_width": _dim(get("meta_width")), "meta_height": _dim(get("meta_height")),
        "similarity": _float(get("similarity")), "similarity_l14": _float(get("similarity_l14")),
        "nsfw_tag": _text(get("nsfw_tag")), "punsafe": _float(get("punsafe")), "pwatermark": _float(get("pwatermark")),
        "aesthetic": _float(get("aesthetic")), "language": _text(get("language")),
        "license": None if license_ == "?" else license_, "source_hash": _id(get("source_hash")),
        "face_bboxes": _boxes(get("face_bboxes")),
        "raw": json.dumps({k: _json_safe(v) for k, v in row.items()}, ensure_ascii=False, default=str),
    }


@dataclass
class _Pending:
    """A row that passed the metadata filters and waits for its image."""

    key: str
    ref: str
    row: int
    fields: dict
    request: FetchRequest


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
        raw = Path(raw)
        files = [raw] if raw.is_file() else sorted(p for p in raw.rglob("*.parquet")
                                                   if not any(part.startswith(".") for part in p.relative_to(raw).parts))
        if not files:
            raise StructuralError(f"{raw}: no parquet files (metadata or img2dataset shards) found")
        root = raw.parent if raw.is_file() else raw
        rerun = self._rerun_keys()
        parts: list[Partition] = []
        for file_index, path in enumerate(files):
            rel = str(path.relative_to(root))
            try:
                pf = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as e:
                raise StructuralError(f"{path}: not a readable parquet file ({e})") from None
            names = pf.schema_arrow.names
            kind = column_set(names)
            exclude = img2dataset.COLUMNS if kind == "img2dataset" else ()
            cols = map_columns(str(path), names, self.config.url_col, self.config.caption_col, exclude)
            common = {"path": str(path), "rel": rel, "file_index": file_index, "cols": cols, "column_set": kind}
            if kind == "img2dataset":
                payload = {**common, "images": img2dataset.image_store(path, names), "keys": None}
                n = pf.metadata.num_rows
                if rerun is not None:
                    keys = {str(k) for k in pq.read_table(path, columns=["key"]).column("key").to_pylist()} & rerun
                    payload["keys"], n = sorted(keys), len(keys)
                notes = {} if img2dataset.has_stats(path) else {"img2dataset_shard_without_stats": 1}
                if n:
                    parts.append(Partition(len(parts), "train", payload, n, notes))
                continue
            first_row = 0
            for rg in range(pf.num_row_groups):
                group_rows = pf.metadata.row_group(rg).num_rows
                for start in range(0, group_rows, self.config.rows_per_partition):
                    stop = min(group_rows, start + self.config.rows_per_partition)
                    rows = None
                    if rerun is not None:
                        rows = [r for r in range(start, stop) if _meta_key(file_index, first_row + r) in rerun]
                        if not rows:
                            continue
                    payload = {**common, "row_group": rg, "first_row": first_row, "start": start, "stop": stop,
                               "rows": rows}
                    parts.append(Partition(len(parts), "train", payload, stop - start if rows is None else len(rows)))
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

    def _read_rows(self, p: dict, n: int) -> list[tuple[int, dict]]:
        """(row in file, row dict) of a metadata partition; memory is one partition's rows."""
        pf = pq.ParquetFile(p["path"])
        size = self.config.rows_per_partition
        wanted = None if p["rows"] is None else set(p["rows"])
        out: list[tuple[int, dict]] = []
        for i, batch in enumerate(pf.iter_batches(batch_size=size, row_groups=[p["row_group"]], use_threads=False)):
            offset = i * size
            if offset + batch.num_rows <= p["start"]:
                continue
            for j, row in enumerate(batch.to_pylist()):
                r = offset + j
                if p["start"] <= r < p["stop"] and (wanted is None or r in wanted):
                    out.append((p["first_row"] + r, row))
            if offset + batch.num_rows >= p["stop"]:
                break
        return out[:n]

    def _metadata_records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed | Filtered]:
        p, cfg = partition.payload, self.config
        plans: list[_Pending | Filtered] = []
        for row_no, row in self._read_rows(p, partition.input_rows):
            key, ref = _meta_key(p["file_index"], row_no), f"{p['rel']}:{row_no}"
            fields = _fields(row, p["cols"])
            excluded = self._excluded(fields, fields["meta_width"], fields["meta_height"])
            if excluded:
                plans.append(Filtered(key, excluded[0], excluded[1], ref))
                continue
            checksums = {}
            if cfg.verify_checksums:
                for name in ("md5", "sha256"):
                    value = _text(row.get(p["cols"][name])) if name in p["cols"] else None
                    if value and _HEX[name].match(value.lower()):
                        checksums[name] = value.lower()
                    elif value:
                        ctx.note(f"{name}_malformed")
            plans.append(_Pending(key, ref, row_no, fields, FetchRequest(fields["url"] or None, **checksums)))
        results = ctx.fetch_many((pl.request for pl in plans if isinstance(pl, _Pending)), cfg.fetch, cfg.mirror)
        for plan in plans:
            yield self._finish(plan, next(results), p, ctx) if isinstance(plan, _Pending) else plan

    def _finish(self, plan: _Pending, result: FetchResult, p: dict, ctx: RowContext) -> Record | Failed | Filtered:
        if not result.ok:
            return Failed(plan.key, result.reason, result.message, plan.ref)
        return self._record(plan.key, plan.ref, plan.row, plan.fields, result.data, p, ctx,
                            fetched_from=result.source, http_status=result.status, final_url=result.final_url,
                            download_sha256=result.sha256)

    def _record(self, key: str, ref: str, row_no: int, fields: dict, data: bytes, p: dict, ctx: RowContext,
                **fetch_fields: Any) -> Record | Failed | Filtered:
        original = fetch_fields.pop("original", None) or image_mod.dimensions(data) or (None, None)
        img = ctx.image(data)
        if not isinstance(img, Image):
            return Failed(key, img.reason, f"{fields['url'][:200]}: {img.message}", ref)
        excluded = self._excluded(fields, *original)
        if excluded:
            return Filtered(key, excluded[0], excluded[1], ref)
        blurred = False
        if self.config.blur_faces and fields["face_bboxes"]:
            boxes = [(b["x_min"], b["y_min"], b["x_max"], b["y_max"]) for b in fields["face_bboxes"]]
            img = image_mod.blur_boxes(img, boxes, self.config.image)
            blurred = True
        return LaionRecord(key=key, text=fields["caption"] or "", image=img, column_set=p["column_set"],
                           source_file=p["rel"], source_row=row_no, original_width=original[0],
                           original_height=original[1], faces_blurred=blurred,
                           **{"exif": None, "download_sha256": None, **fields, **fetch_fields})

    def _excluded(self, f: dict, width: int | None, height: int | None) -> tuple[str, str] | None:
        """(filter, message) of the first configured filter that drops the row; unknown values pass."""
        c = self.config
        checks = (
            ("languages", c.languages is not None and f["language"] is not None and f["language"] not in c.languages,
             f"language {f['language']} not in {c.languages}"),
            ("nsfw_tags", c.nsfw_tags is not None and f["nsfw_tag"] is not None and f["nsfw_tag"] not in c.nsfw_tags,
             f"NSFW tag {f['nsfw_tag']} not in {c.nsfw_tags}"),
            ("min_similarity", _below(f["similarity"], c.min_similarity), f"similarity {f['similarity']} < {c.min_similarity}"),
            ("max_punsafe", _below(c.max_punsafe, f["punsafe"]), f"punsafe {f['punsafe']} > {c.max_punsafe}"),
            ("max_pwatermark", _below(c.max_pwatermark, f["pwatermark"]), f"pwatermark {f['pwatermark']} > {c.max_pwatermark}"),
            ("min_image_size", width is not None and height is not None and _below(min(width, height), c.min_image_size),
             f"{width}x{height} is smaller than {c.min_image_size}"),
            ("max_aspect_ratio", bool(width and height) and _below(c.max_aspect_ratio, max(width / height, height / width)),
             f"{width}x{height} has an aspect ratio above {c.max_aspect_ratio}"),
        )
        return next(((name, message) for name, drop, message in checks if drop), None)

    def _img2dataset_records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed | Filtered]:
        p = partition.payload
        table = pq.read_table(p["path"])
        rows = img2dataset.rows_in_key_order(table)
        if p["keys"] is not None:
            wanted = set(p["keys"])
            rows = [(i, r) for i, r in rows if str(r["key"]) in wanted]
        with img2dataset.ShardImages(p["images"], table) as images:
            for row_no, row in rows[:partition.input_rows]:
                yield self._img2dataset_row(str(row["key"]), f"{p['rel']}:{row_no}", row_no, row, images, p, ctx)

    def _img2dataset_row(self, key: str, ref: str, row_no: int, row: dict, images: img2dataset.ShardImages,
                         p: dict, ctx: RowContext) -> Record | Failed | Filtered:
        if not valid_key(key):
            return Failed(re.sub(r"[^A-Za-z0-9_-]", "_", key) or "invalid", "invalid_key",
                          f"img2dataset key {key!r} is not [A-Za-z0-9_-]", ref)
        fields = _fields(row, p["cols"])
        original = (_dim(row.get("original_width")), _dim(row.get("original_height")))
        excluded = self._excluded(fields, fields["meta_width"] or original[0], fields["meta_height"] or original[1])
        if excluded:
            return Filtered(key, excluded[0], excluded[1], ref)
        if row.get("status") != "success":
            message = row.get("error_message") or str(row.get("status"))
            return Failed(key, img2dataset.failure_reason(row.get("status"), message), message, ref)
        data = images.get(key)
        if data is None:
            return Failed(key, "image_missing", f"{key}: success in {p['rel']} but no image in the shard", ref)
        return self._record(key, ref, row_no, fields, data, p, ctx, fetched_from="img2dataset", http_status=None,
                            final_url=None, original=original, download_sha256=_text(row.get("sha256")),
                            exif=_text(row.get("exif")))

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        write_sample(raw, n, seed)


def _meta_key(file_index: int, row: int) -> str:
    return f"{file_index:05d}_{row:09d}"


def _below(value: float | None, bound: float | None) -> bool:
    return value is not None and bound is not None and value < bound


# ------------------------------------------------------------------------------------------
# Sample generator: a LAION-400M-shaped and a DataComp-shaped parquet served from 127.0.0.1

_CAPTIONS = ["a red bus on a street", "Olive oil infused with Tuscany herbs", "vintage poster of a lighthouse",
             "Portrait d'une femme au chapeau", "two dogs playing in the snow", "木の上の猫", "a bowl of ramen",
             "close-up of a sunflower", "<b>Sale!</b> leather boots &amp; bags", "aerial view of a harbour"]
_LICENSES = ["?", "?", "?", "https://creativecommons.org/licenses/by/4.0/", "https://creativecommons.org/licenses/by-sa/2.0/"]


def _picture(rng: random.Random, fmt: str) -> tuple[bytes, int, int]:
    from PIL import Image as PILImage
    from PIL import ImageDraw

    w, h = rng.randint(40, 160), rng.randint(40, 160)
    img = PILImage.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.randint(0, w), rng.randint(0, h)
        draw.rectangle((x, y, x + rng.randint(5, 40), y + rng.randint(5, 40)), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue(), w, h


def write_sample(raw: Path, n: int = 24, seed: int = 0) -> None:
    """Write ``raw/laion400m/part-00000-<uuid>-c000.snappy.parquet`` and ``raw/datacomp/<uid>.parquet``
    (``n`` rows each) with the files they point at under ``raw/site`` and ``raw/loopback.json``.

    Quirks reproduced: URLs that 404, an HTML page and a truncated JPEG at image URLs, an opted-out
    image (X-Robots-Tag: noai), a redirect, a redirect to file://, file:// and ftp:// URLs, a URL
    repeated in another row, the same image under two URLs, null and HTML-entity captions, LICENSE
    '?', NSFW tags, and in the DataComp file one sha256 that does not match and face boxes.
    """
    rng = random.Random(seed)
    raw = Path(raw)
    site = raw / "site"
    (site / "img").mkdir(parents=True, exist_ok=True)
    port = loopback.free_port()
    base = f"http://127.0.0.1:{port}"
    good: list[tuple[str, bytes, int, int]] = []
    for i in range(2 * max(4, n)):  # the first half for the LAION file, the second for the DataComp one
        fmt = ("JPEG", "JPEG", "PNG", "WEBP")[i % 4]
        data, w, h = _picture(rng, fmt)
        name = f"img/{i:04d}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
        (site / name).write_bytes(data)
        good.append((f"{base}/{name}", data, w, h))
    (site / "img" / "page.jpg").write_text("<!doctype html><html><body>Image not found</body></html>")
    (site / "img" / "cut.jpg").write_bytes(good[0][1][: len(good[0][1]) // 2])
    (site / "img" / "opted-out.jpg").write_bytes(good[1][1])
    (site / "img" / "copy.jpg").write_bytes(good[1][1])  # the same bytes as another URL
    routes = {"/img/opted-out.jpg": {"headers": {"X-Robots-Tag": "noai"}},
              "/img/moved.jpg": {"status": 302, "headers": {"Location": "/img/0002.png"}},
              "/img/to-file.jpg": {"status": 302, "headers": {"Location": "file:///etc/passwd"}}}
    specials = [f"{base}/img/missing.jpg", f"{base}/img/page.jpg", f"{base}/img/cut.jpg", f"{base}/img/opted-out.jpg",
                f"{base}/img/moved.jpg", f"{base}/img/to-file.jpg", "file:///etc/passwd", "ftp://127.0.0.1/img/0001.jpg",
                f"{base}/img/copy.jpg"]

    def url_of(i: int) -> tuple[str, bytes | None, int | None, int | None]:
        if i % 2 == 0 and 0 < i // 2 <= len(specials):  # rows 2, 4, ... 18
            return specials[i // 2 - 1], None, rng.randint(100, 900), rng.randint(100, 900)
        if i == n - 1 and n > 2:
            return good[0]  # the first row's URL again
        return good[i % max(4, n)]

    laion = []
    for i in range(n):
        url, _, w, h = url_of(i)
        laion.append({"SAMPLE_ID": 1000 + i * 7, "URL": url, "TEXT": None if i == 5 else rng.choice(_CAPTIONS),
                      "HEIGHT": h, "WIDTH": w, "LICENSE": rng.choice(_LICENSES),
                      "NSFW": rng.choice(["UNLIKELY"] * 6 + ["UNSURE", "NSFW"]),
                      "similarity": round(rng.uniform(0.28, 0.42), 6)})
    laion_schema = pa.schema([("SAMPLE_ID", pa.int64()), ("URL", pa.string()), ("TEXT", pa.string()),
                              ("HEIGHT", pa.int32()), ("WIDTH", pa.int32()), ("LICENSE", pa.string()),
                              ("NSFW", pa.string()), ("similarity", pa.float64())])
    folder = raw / "laion400m"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-00000-{uuid.UUID(int=rng.getrandbits(128))}-c000.snappy.parquet"
    pq.write_table(pa.Table.from_pylist(laion, schema=laion_schema), folder / name, compression="snappy")

    datacomp = []
    for i in range(n):
        url, data, w, h = good[max(4, n) + i] if i % 8 != 7 else good[i // 2]  # some URLs also in the LAION file
        if i % 7 == 6:
            url = f"{base}/img/gone-{i}.jpg"
        sha = hashlib.sha256(data).hexdigest()
        if i == 2:
            sha = hashlib.sha256(b"another image").hexdigest()  # the image changed since the metadata was made
        faces = [[0.2, 0.1, 0.5, 0.6]] if i % 3 == 0 else []
        datacomp.append({"uid": rng.randbytes(16).hex(), "url": url, "text": rng.choice(_CAPTIONS),
                         "original_width": w, "original_height": h,
                         "clip_b32_similarity_score": round(rng.uniform(0.15, 0.4), 4),
                         "clip_l14_similarity_score": round(rng.uniform(0.15, 0.4), 4),
                         "face_bboxes": faces, "sha256": sha})
    dc_schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                           ("original_width", pa.int64()), ("original_height", pa.int64()),
                           ("clip_b32_similarity_score", pa.float32()), ("clip_l14_similarity_score", pa.float32()),
                           ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string())])
    (raw / "datacomp").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(datacomp, schema=dc_schema), raw / "datacomp" / f"{rng.randbytes(16).hex()}.parquet")
    loopback.write_service(raw, port, "site", routes)
