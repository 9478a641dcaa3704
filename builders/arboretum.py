"""Arboretum (baskargroup, 2024): iNaturalist photos with taxonomy and common names, for CLIP-style
biodiversity models.

Raw input: the metadata parquet "chunk" files (every ``*.parquet`` under RAW, sorted by path) with
the columns ``photo_id, scientificName, kingdom, phylum, class, order, family, genus, species,
common_name, photo_url`` (``species`` is the epithet only); ``taxonRank`` and a licence column
(``license``, ``license_code`` or ``photo_license``) are optional. A file missing a required column
stops the build before any work. Images are downloaded from ``photo_url`` (vldata.ingest.fetch) or read
from ``images_dir`` laid out as arbor_process ``GetImages`` writes it (``<dir>/<chunk
stem>/<photo_id>.jpg``, or flat ``<dir>/<photo_id>.jpg``); the format is sniffed from the bytes,
since URL extensions and the ``.jpg`` names lie.

One record per photo, keyed by ``photo_id``, with the ten arbor_process/BioCLIP text types
(``TEXT_TYPES``, exact templates of RAW_FORMATS §5.2) as fields ``text_<type>``, written as the
webdataset members ``KEY.<type>.txt`` (``KEY.com.txt``, ``KEY.taxonTag_com.txt``...) so BioCLIP and
Arboretum training code reads the tars unchanged; ``text`` (``KEY.txt``) is the ``taxon`` text,
the training default ``--text_type``. Deviations, only where arbor_process would print ``None``:
without a common name ``com``/``common_name`` use the scientific name (BioCLIP's fallback) and the
``*_com`` texts drop their "with common name" clause (``sci_com`` = ``sci``); missing ranks are left
out of the rank sequences. Rare/cap balancing (arbor_process ``rare_threshold`` /
``cap_threshold``) is keyed by ``scientificName``, not the epithet, and the cap is exact and
independent of the workers: the first ``cap_threshold`` rows of a species in input order are kept
(counted before download, so a kept row whose photo then fails is not replaced).

The sample (``vldata sample arboretum RAW``) is two chunk parquets whose URLs point at
``http://127.0.0.1:<port>`` (``vldata.ingest.loopback``, as the laion sample).
"""

from __future__ import annotations

import io
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from vldata import Builder, Config, Failed, Filtered, Image, Partition, Record, RowContext, StructuralError
from vldata.ingest import loopback
from vldata.ingest.fetch import FetchPolicy, FetchRequest

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
REQUIRED = ("photo_id", "scientificName", *RANKS, "common_name", "photo_url")
LICENSE_COLUMNS = ("license", "license_code", "photo_license")

TEXT_TYPES = ("com", "common_name", "sci", "sci_com", "scientific_name", "taxon", "taxonTag", "taxonTag_com",
              "taxon_com", "taxonomic_name")  # arbor_process gen_img_txt_pair / BioCLIP make_wds


def texts(scientific_name: str, ranks: dict[str, str | None], common_name: str | None) -> dict[str, str]:
    """The ten texts of one photo, with the arbor_process templates. Where arbor_process would write
    ``None``: without a common name, ``com``/``common_name`` use the scientific name (BioCLIP's
    fallback) and the ``*_com`` texts end without their "with common name" clause; missing ranks are
    left out of the rank sequences."""
    common = common_name or scientific_name
    seq = " ".join(ranks[r] for r in RANKS if ranks.get(r))
    tags = " ".join(f"{r} {ranks[r]}" for r in RANKS if ranks.get(r))
    with_common = f" with common name {common_name}." if common_name else "."
    return {
        "com": f"a photo of {common}.", "common_name": f"{common}.",
        "sci": f"a photo of {scientific_name}.", "sci_com": f"a photo of {scientific_name}{with_common}",
        "scientific_name": f"{scientific_name}.",
        "taxon": f"a photo of {seq}.", "taxonTag": f"a photo of {tags}.",
        "taxonTag_com": f"a photo of {tags}{with_common}", "taxon_com": f"a photo of {seq}{with_common}",
        "taxonomic_name": f"{seq}.",
    }


class ArboretumRecord(Record):
    # KEY.<type>.txt members, named exactly as arbor_process / BioCLIP write them
    text_members: ClassVar[dict[str, str]] = {t: f"text_{t}" for t in TEXT_TYPES}

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
    text_com: str = Field(description="KEY.com.txt: a photo of {common_name}.")
    text_common_name: str = Field(description="KEY.common_name.txt: {common_name}.")
    text_sci: str = Field(description="KEY.sci.txt: a photo of {scientificName}.")
    text_sci_com: str = Field(description="KEY.sci_com.txt: a photo of {scientificName} with common name "
                              "{common_name}.")
    text_scientific_name: str = Field(description="KEY.scientific_name.txt: {scientificName}.")
    text_taxon: str = Field(description="KEY.taxon.txt: a photo of {kingdom} {phylum} {class} {order} {family} "
                            "{genus} {species}.")
    text_taxonTag: str = Field(description="KEY.taxonTag.txt: a photo of kingdom {kingdom} phylum {phylum} class "
                               "{class} order {order} family {family} genus {genus} species {species}.")
    text_taxonTag_com: str = Field(description="KEY.taxonTag_com.txt: the taxonTag text + "
                                   "' with common name {common_name}.'")
    text_taxon_com: str = Field(description="KEY.taxon_com.txt: the taxon text + ' with common name {common_name}.'")
    text_taxonomic_name: str = Field(description="KEY.taxonomic_name.txt: {kingdom} {phylum} {class} {order} "
                                     "{family} {genus} {species}.")


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
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f.is_integer() and 0 < f < 2**63 else None


@dataclass
class _Pending:
    """A row whose record waits for its image."""

    key: str
    ref: str
    fields: dict


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
        raw = Path(raw)
        files = [raw] if raw.is_file() else sorted(p for p in raw.rglob("*.parquet")
                                                   if not any(s.startswith(".") for s in p.relative_to(raw).parts))
        if not files:
            raise StructuralError(f"{raw}: no Arboretum metadata parquet files found")
        root = raw.parent if raw.is_file() else raw
        if self.config.images_dir is not None and not Path(self.config.images_dir).is_dir():
            raise StructuralError(f"images_dir: {self.config.images_dir} is not a folder")
        spans: list[tuple[dict, int, int, list[str | None]]] = []  # (payload, start, stop, scientific names)
        for path in files:
            try:
                pf = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as e:
                raise StructuralError(f"{path}: not a readable parquet file ({e})") from None
            names = pf.schema_arrow.names
            missing = [c for c in REQUIRED if c not in names]
            if missing:
                raise StructuralError(f"{path}: missing column {', '.join(missing)} (columns: {', '.join(names)})")
            common = {"path": str(path), "rel": str(path.relative_to(root)), "chunk": path.stem,
                      "taxon_rank": "taxonRank" if "taxonRank" in names else None,
                      "license": next((c for c in LICENSE_COLUMNS if c in names), None)}
            balancing = self.config.rare_threshold is not None or self.config.cap_threshold is not None
            first_row = 0
            for rg in range(pf.num_row_groups):  # a partition never spans row groups: one is read at a time
                group_rows = pf.metadata.row_group(rg).num_rows
                sci = [_text(v) for v in pf.read_row_group(rg, columns=["scientificName"]).column(0).to_pylist()] \
                    if balancing else [None] * group_rows
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

    def _is_rare(self, count: int) -> bool:
        return self.config.rare_threshold is not None and count < self.config.rare_threshold

    def _is_capped(self, count: int) -> bool:
        return self.config.cap_threshold is not None and count > self.config.cap_threshold

    # ---- records

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed | Filtered]:
        p, cfg = partition.payload, self.config
        table = pq.ParquetFile(p["path"]).read_row_group(p["row_group"]).slice(p["start"], p["stop"] - p["start"])
        rare, kept = set(p["rare"]), dict(p["kept_before"])
        first = p["first_row"] + p["start"]
        plans = [self._plan(row, first + i, p, rare, kept) for i, row in enumerate(table.to_pylist())]
        pending = [pl for pl in plans if isinstance(pl, _Pending)]
        if cfg.images_dir is None:
            fetched = ctx.fetch_many((FetchRequest(pl.fields["photo_url"]) for pl in pending), cfg.fetch)
            images = ((r.data, r.reason, r.message) for r in fetched)
        else:
            images = (self._local(pl.fields["photo_id"], p["chunk"]) for pl in pending)
        for plan in plans:
            if not isinstance(plan, _Pending):
                yield plan
                continue
            data, reason, message = next(images)
            img = ctx.image(data) if data is not None else None
            if img is None:
                yield Failed(plan.key, reason, message, plan.ref)
            elif not isinstance(img, Image):
                yield Failed(plan.key, img.reason, f"{plan.fields['photo_url'][:200]}: {img.message}", plan.ref)
            else:
                yield ArboretumRecord(key=plan.key, text=plan.fields["text_taxon"], image=img, **plan.fields)

    def _plan(self, row: dict, row_no: int, p: dict, rare: set[str],
              kept: dict[str, int]) -> _Pending | Failed | Filtered:
        """The row's fields, or why it gets no image fetched. Balancing comes first and needs only the
        scientific name, so ``partitions`` can count the rows before each partition the same way."""
        ref = f"{p['rel']}:{row_no}"
        photo_id = _photo_id(row.get("photo_id"))
        key = str(photo_id) if photo_id is not None else re.sub(r"[^A-Za-z0-9_-]", "_", f"{p['chunk']}_row{row_no}")
        sci = _text(row.get("scientificName"))
        if sci in rare:
            return Filtered(key, "rare_threshold", f"{sci} has fewer than {self.config.rare_threshold} rows", ref)
        if sci in kept:
            if kept[sci] >= self.config.cap_threshold:
                return Filtered(key, "cap_threshold", f"{sci} already has {self.config.cap_threshold} rows", ref)
            kept[sci] += 1
        if photo_id is None:
            return Failed(key, "invalid_photo_id", f"photo_id {row.get('photo_id')!r} is not a positive integer", ref)
        if sci is None:
            return Failed(key, "missing_scientific_name", "scientificName is empty", ref)
        url = _text(row.get("photo_url"))
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
        return _Pending(key, ref, fields)

    def _local(self, photo_id: int, chunk: str) -> tuple[bytes | None, str, str]:
        folder = Path(self.config.images_dir)
        for path in (folder / chunk / f"{photo_id}.jpg", folder / f"{photo_id}.jpg"):
            if path.is_file():
                return path.read_bytes(), "", ""
        return None, "image_missing", f"{photo_id}.jpg not in {folder} (or its {chunk}/ folder)"

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        write_sample(raw, n, seed)


# ------------------------------------------------------------------------------------------
# Sample generator: two chunk parquets in the real layout, photos served from 127.0.0.1

SCHEMA = pa.schema([("photo_id", pa.int64()), ("scientificName", pa.string()), ("kingdom", pa.string()),
                    ("phylum", pa.string()), ("class", pa.string()), ("order", pa.string()),
                    ("family", pa.string()), ("genus", pa.string()), ("species", pa.string()),
                    ("common_name", pa.string()), ("photo_url", pa.string())])

# real rows of chunk_0_1000_1.parquet (RAW_FORMATS §5.1) and a few more of the same shape; two share
# the epithet 'grossa' in different genera, one has no common name
TAXA = [  # scientificName, kingdom, phylum, class, order, family, genus, species, common_name
    ("Steatoda grossa", "Animalia", "Arthropoda", "Arachnida", "Araneae", "Theridiidae", "Steatoda", "grossa",
     "False Black Widow"),
    ("Uroctonus mordax", "Animalia", "Arthropoda", "Arachnida", "Scorpiones", "Vaejovidae", "Uroctonus", "mordax",
     "Western Forest Scorpion"),
    ("Neoscona crucifera", "Animalia", "Arthropoda", "Arachnida", "Araneae", "Araneidae", "Neoscona", "crucifera",
     "Hentz's Orbweaver"),
    ("Eurema grossa", "Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Pieridae", "Eurema", "grossa", None),
    ("Amanita muscaria", "Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita",
     "muscaria", "Fly Agaric"),
    ("Quercus alba", "Plantae", "Tracheophyta", "Magnoliopsida", "Fagales", "Fagaceae", "Quercus", "alba", "White Oak"),
]


def _photo(rng: random.Random, fmt: str) -> bytes:
    from PIL import Image as PILImage

    img = PILImage.new("RGB", (rng.randint(32, 96), rng.randint(32, 96)), tuple(rng.randint(0, 255) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_sample(raw: Path, n: int = 24, seed: int = 0) -> None:
    """Write ``raw/chunk_0_1000_1.parquet`` and ``raw/chunk_0_1000_2.parquet`` (``n`` rows in all) with
    the photos under ``raw/site/photos/<photo_id>/medium.<ext>`` and ``raw/loopback.json``.

    Quirks reproduced: epithet-only ``species`` (one epithet in two genera), missing common names, a
    PNG behind a ``.jpg`` URL, ``JPG``/``jpeg`` extensions, a photo deleted upstream (404) and a URL
    that serves a non-image page.
    """
    rng = random.Random(seed)
    raw = Path(raw)
    site = raw / "site"
    port = loopback.free_port()
    base = f"http://127.0.0.1:{port}"
    rows = []
    for i in range(n):
        photo_id = 22295 + i * 322 + rng.randint(0, 300)
        taxon = TAXA[i % len(TAXA)]
        ext = ("jpg", "JPG", "jpg", "jpeg", "png")[i % 5]
        fmt = "PNG" if ext == "png" or i % 7 == 2 else "JPEG"  # i % 7 == 2: a PNG behind a .jpg URL
        path = f"photos/{photo_id}/medium.{ext}"
        if i % 11 == 5:
            (site / path).parent.mkdir(parents=True, exist_ok=True)
            (site / path).write_text("<html>Access Denied</html>")
        elif i % 11 != 9:  # i % 11 == 9: deleted upstream, 404
            (site / path).parent.mkdir(parents=True, exist_ok=True)
            (site / path).write_bytes(_photo(rng, fmt))
        rows.append(dict(zip(SCHEMA.names, (photo_id, *taxon, f"{base}/{path}"))))
    half = (len(rows) + 1) // 2
    raw.mkdir(parents=True, exist_ok=True)
    for name, part in (("chunk_0_1000_1.parquet", rows[:half]), ("chunk_0_1000_2.parquet", rows[half:])):
        pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), raw / name)
    loopback.write_service(raw, port, "site")
