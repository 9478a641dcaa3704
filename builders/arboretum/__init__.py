"""Arboretum (baskargroup, 2024): iNaturalist photos with taxonomy and common names, for CLIP-style
biodiversity models.

Raw input: the metadata parquet "chunk" files (every ``*.parquet`` under RAW, sorted by path) with
the columns ``photo_id, scientificName, kingdom, phylum, class, order, family, genus, species,
common_name, photo_url`` (``species`` is the epithet only); ``taxonRank`` and a licence column
(``license``, ``license_code`` or ``photo_license``) are optional. A file missing a required column
or whose footer does not read stops the build before any work; a damaged page or a string that is not
UTF-8 fails only the rows it touches (``builders.laion.parquet_rows``), as does a ``photo_id`` that is
not a positive integer (``invalid_photo_id``). Images are downloaded from ``photo_url`` (vldata.ingest.fetch) or read
from ``images_dir`` laid out as arbor_process ``GetImages`` writes it (``<dir>/<chunk
stem>/<photo_id>.jpg``, or flat ``<dir>/<photo_id>.jpg``); the format is sniffed from the bytes,
since URL extensions and the ``.jpg`` names lie.

One record per photo, keyed by ``photo_id``, with the ten arbor_process/BioCLIP text types
(``texts.TEXT_TYPES``, exact templates of docs/RAW_FORMATS.md §5.2) as fields ``text_<type>``,
written as the webdataset members ``KEY.<type>.txt`` (``KEY.com.txt``, ``KEY.taxontag_com.txt``...) so BioCLIP and
Arboretum training code reads the tars unchanged; ``text`` (``KEY.txt``) is the ``taxon`` text,
the training default ``--text_type``. Deviations, only where arbor_process would print ``None``:
without a common name ``com``/``common_name`` use the scientific name (BioCLIP's fallback) and the
``*_com`` texts drop their "with common name" clause (``sci_com`` = ``sci``); missing ranks are left
out of the rank sequences. Rare/cap balancing (arbor_process ``rare_threshold`` /
``cap_threshold``) is keyed by ``scientificName``, not the epithet, and the cap is exact and
independent of the workers: the first ``cap_threshold`` rows of a species in input order are kept
(counted before download, so a kept row whose photo then fails is not replaced).

The sample (``vldata sample arboretum RAW``, written by ``sample``) is two chunk parquets whose URLs
point at ``http://127.0.0.1:<port>`` (``vldata.ingest.loopback``, as the laion sample).

This module turns raw rows into records: partitions, balancing, the Record, the Config and each
row's outcome. It does no I/O plumbing (downloads go through ``RowContext.fetch_in_order``),
sharding, retries or format code.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, create_model

from vldata import (Builder, Config, Failed, Filtered, Image, Origin, Partition, Pending, Record, RowContext,
                    StructuralError)
from vldata.ingest import loopback
from vldata.ingest.image import too_large
from vldata.ingest.rawfiles import raw_files
from vldata.ingest.fetch import FetchPolicy, FetchRequest, FetchResult
from vldata.layout import safe_key

from vldata.ingest.parquet_rows import Unreadable, group_sizes, open_parquet, read_rows

from .texts import FIELDS, MEMBERS, RANKS, TEXT_TYPES, texts

__all__ = ["RANKS", "REQUIRED", "TEXT_TYPES", "ArboretumBuilder", "ArboretumConfig", "ArboretumRecord", "texts"]

REQUIRED = ("photo_id", "scientificName", *RANKS, "common_name", "photo_url")
LICENSE_COLUMNS = ("license", "license_code", "photo_license")


class _PhotoRecord(Record):
    """The Record's fields before the ten texts (``ArboretumRecord`` adds them from ``TEXT_TYPES``)."""

    text_members: ClassVar[dict[str, str]] = MEMBERS

    image: Image = Field(description="The photo, format sniffed from the bytes.")
    photo_id: int = Field(description="iNaturalist photo id (also the image file stem).")
    photo_url: str = Field(description="iNaturalist Open Data URL as in the metadata (extension unreliable).")
    scientific_name: str = Field(description="scientificName: the binomial, the class key.")
    kingdom: str | None
    phylum: str | None
    class_: str | None = Field(description="The `class` rank (renamed: `class` is a Python keyword).")
    order: str | None
    family: str | None
    genus: str | None
    species_epithet: str | None = Field(description="The raw `species` column: the specific epithet only.")
    common_name: str | None = Field(description="English common name; null when missing (the texts then use "
                                    "the scientific name).")
    taxon_rank: str | None = Field(description="taxonRank (BioTrove releases); null when absent.")
    license: str | None = Field(description="Per-photo licence when the metadata has one; null otherwise.")
    chunk: str = Field(description="Source parquet stem (e.g. processed_chunks_0001).")


ArboretumRecord = create_model("ArboretumRecord", __base__=_PhotoRecord, __module__=__name__, **FIELDS)


class ArboretumConfig(Config):
    images_dir: str | None = Field(None, description="Folder of downloaded photos (<chunk>/<photo_id>.jpg or "
                                   "<photo_id>.jpg), read instead of photo_url.")
    rows_per_partition: int = Field(default=2_000, gt=0, description="Rows per unit of work.")
    fetch: FetchPolicy = FetchPolicy()
    rare_threshold: int | None = Field(None, ge=1, description="Drop species (scientificName) with fewer rows "
                                       "than this (arbor_process default 10).")
    cap_threshold: int | None = Field(None, ge=1, description="Keep at most this many rows per species "
                                      "(scientificName), the first in input order (arbor_process default 1000).")


def _text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    s = str(v).strip()
    return None if s in ("", "None", "nan") else s


def _photo_id(v: Any) -> int | None:
    """The key: a positive integer below 2**63 (digits are read exactly, not through a float)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
        n = int(v.strip()) if len(v.strip()) < 20 else 0
    elif isinstance(v, int):
        n = v
    else:
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            return None
        n = int(f) if math.isfinite(f) and f.is_integer() else 0
    return n if 0 < n < 2**63 else None


class ArboretumBuilder(Builder):
    name = "arboretum"
    version = "1.0.0"
    summary = "Arboretum iNaturalist photos with taxonomy, common names and the ten BioCLIP text types"
    Config = ArboretumConfig
    Record = ArboretumRecord
    balance_fields = ("scientific_name",)

    def sample_services(self, raw: Path):
        return loopback.serve_sample(raw)

    # ---- partitions

    def partitions(self, raw: Path) -> list[Partition]:
        root, files = raw_files(raw, "*.parquet")
        if not files:
            raise StructuralError(f"{raw}: no Arboretum metadata parquet files found")
        if self.config.images_dir is not None and not Path(self.config.images_dir).is_dir():
            raise StructuralError(f"images_dir: {self.config.images_dir} is not a folder")
        spans: list[tuple[dict, int, int, list[str | None]]] = []  # (payload, start, stop, scientific names)
        for path in files:
            pf = open_parquet(path)
            names = pf.schema_arrow.names
            missing = [c for c in REQUIRED if c not in names]
            if missing:
                raise StructuralError(f"{path}: missing column {', '.join(missing)} (columns: {', '.join(names)})")
            common = {"path": str(path), "rel": str(path.relative_to(root)), "chunk": path.stem,
                      "taxon_rank": "taxonRank" if "taxonRank" in names else None,
                      "license": next((c for c in LICENSE_COLUMNS if c in names), None)}
            first_row = 0
            for rg, group_rows in enumerate(group_sizes(pf)):  # a partition never spans row groups
                sci = self._names(str(path), rg, 0, group_rows) if self._balancing() else [None] * group_rows
                for start in range(0, group_rows, self.config.rows_per_partition):
                    stop = min(group_rows, start + self.config.rows_per_partition)
                    spans.append(({**common, "row_group": rg, "first_row": first_row}, start, stop, sci[start:stop]))
                first_row += group_rows
        totals = Counter(n for *_, names in spans for n in names)
        kept: Counter = Counter()  # rows of each species kept before the span, for the exact cap
        parts = []
        for common, start, stop, names in spans:
            present = set(names)
            payload = {**common, "start": start, "stop": stop,
                       "rare": sorted(n for n in present - {None} if self._is_rare(totals[n])),
                       "kept_before": {n: kept[n] for n in sorted(present - {None}) if self._is_capped(totals[n])}}
            parts.append(Partition(len(parts), "train", payload, stop - start))
            kept.update(n for n in names if n)
        return parts

    def _balancing(self) -> bool:
        return self.config.rare_threshold is not None or self.config.cap_threshold is not None

    @staticmethod
    def _names(path: str, rg: int, start: int, stop: int) -> list[str | None]:
        """The scientific names of rows ``start..stop-1`` of a row group (None where unreadable): the
        balancing key, read alone so that ``partitions`` and ``records`` see the same names."""
        return [None if isinstance(row, Unreadable) else _text(row["scientificName"])
                for _, row in read_rows(path, rg, start, stop, ["scientificName"])]

    def _is_rare(self, count: int) -> bool:
        return self.config.rare_threshold is not None and count < self.config.rare_threshold

    def _is_capped(self, count: int) -> bool:
        return self.config.cap_threshold is not None and count > self.config.cap_threshold

    # ---- records

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed | Filtered]:
        p, cfg = partition.payload, self.config
        rare, kept = set(p["rare"]), dict(p["kept_before"])
        span = (p["path"], p["row_group"], p["start"], p["stop"])
        names = self._names(*span) if self._balancing() else [None] * (p["stop"] - p["start"])
        plans = (self._plan(row, p["first_row"] + r, p, rare, kept, ctx, names[r - p["start"]])
                 for r, row in read_rows(*span))
        if cfg.images_dir is None:
            yield from ctx.fetch_in_order(plans, cfg.fetch)
        else:
            yield from plans  # local photos: each row's outcome is complete, read as it is planned

    def _plan(self, row: dict | Unreadable, row_no: int, p: dict, rare: set[str], kept: dict[str, int],
              ctx: RowContext, sci: str | None = None) -> Record | Pending | Failed | Filtered:
        """The row's outcome, or its download to wait for. Balancing comes first and needs only the
        scientific name (``sci``, read as ``partitions`` read it), so ``partitions`` can count the rows
        before each partition the same way."""
        url = None if isinstance(row, Unreadable) else _text(row.get("photo_url"))
        ref = Origin(p["rel"], row_no, url)
        photo_id = None if isinstance(row, Unreadable) else _photo_id(row.get("photo_id"))
        key = str(photo_id) if photo_id is not None else safe_key(f"{p['chunk']}_row{row_no}")
        if not isinstance(row, Unreadable) and not self._balancing():
            sci = _text(row.get("scientificName"))
        if sci in rare:
            return Filtered(key, "rare_threshold", f"{sci} has fewer than {self.config.rare_threshold} rows", ref)
        if sci in kept:
            if kept[sci] >= self.config.cap_threshold:
                return Filtered(key, "cap_threshold", f"{sci} already has {self.config.cap_threshold} rows", ref)
            kept[sci] += 1
        if isinstance(row, Unreadable):
            return Failed(key, row.reason, row.message, ref)
        if photo_id is None:
            return Failed(key, "invalid_photo_id", f"photo_id {row.get('photo_id')!r} is not a positive integer", ref)
        if sci is None:
            return Failed(key, "missing_scientific_name", "scientificName is empty", ref)
        if url is None and self.config.images_dir is None:
            return Failed(key, "missing_url", "photo_url is empty", ref)
        ranks = {r: _text(row.get(r)) for r in RANKS}
        common = _text(row.get("common_name"))
        fields = {"photo_id": photo_id, "photo_url": url or "", "scientific_name": sci,
                  **{("class_" if r == "class" else r): ranks[r] for r in RANKS if r != "species"},
                  "species_epithet": ranks["species"], "common_name": common,
                  "taxon_rank": _text(row.get(p["taxon_rank"])) if p["taxon_rank"] else None,
                  "license": _text(row.get(p["license"])) if p["license"] else None,
                  "chunk": p["chunk"], **{f"text_{t}": v for t, v in texts(sci, ranks, common).items()}}
        if self.config.images_dir is not None:
            return self._record(key, ref, fields, ctx, self._local(photo_id, p["chunk"]))
        return Pending(FetchRequest(url), partial(self._record, key, ref, fields, ctx))

    def _record(self, key: str, ref: Origin, fields: dict, ctx: RowContext, result: FetchResult) -> Record | Failed:
        if not result.ok:
            return Failed(key, result.reason, result.message, ref)
        img = ctx.image(result.data)
        if not isinstance(img, Image):
            return Failed(key, img.reason, f"{fields['photo_url'][:200]}: {img.message}", ref)
        return ctx.located(ArboretumRecord(key=key, text=fields["text_taxon"], image=img, **fields), ref)

    def _local(self, photo_id: int, chunk: str) -> FetchResult:
        """The photo from ``images_dir``, as a download's result."""
        folder = Path(self.config.images_dir)
        for path in (folder / chunk / f"{photo_id}.jpg", folder / f"{photo_id}.jpg"):
            if path.is_file():
                big = too_large(path.name, path.stat().st_size, self.config.image)
                if big:
                    return FetchResult(str(path), reason=big.reason, message=big.message)
                return FetchResult(str(path), data=path.read_bytes())
        return FetchResult(None, reason="image_missing",
                           message=f"{photo_id}.jpg not in {folder} (or its {chunk}/ folder)")

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        from .sample import write_sample

        write_sample(raw, n, seed)
