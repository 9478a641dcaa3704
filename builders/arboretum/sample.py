"""Arboretum's synthetic raw input: two metadata chunk parquets in the real layout whose photo URLs
point at a loopback server, with the real quirks.

Written for the demo and the tests (``ArboretumBuilder.write_sample``); the photos are plain
``vldata.ingest.synthetic`` pictures. Nothing here is used while building real data, and it must not
parse or build records: the columns it writes are the builder's ``REQUIRED`` ones.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vldata.ingest import loopback, synthetic

from . import REQUIRED

# the chunk files' columns, in file order (docs/RAW_FORMATS.md §5.1)
SCHEMA = pa.schema([(name, pa.int64() if name == "photo_id" else pa.string()) for name in REQUIRED])

# real rows of chunk_0_1000_1.parquet (docs/RAW_FORMATS.md §5.1) and a few more of the same shape; two
# share the epithet 'grossa' in different genera, one has no common name
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
        if i % 11 != 9:  # i % 11 == 9: deleted upstream, 404
            (site / path).parent.mkdir(parents=True, exist_ok=True)
            if i % 11 == 5:
                (site / path).write_text("<html>Access Denied</html>")
            else:
                photo = synthetic.blank(rng, (32, 96))
                (site / path).write_bytes(synthetic.encode(photo, fmt, quality=85 if fmt == "JPEG" else None))
        rows.append(dict(zip(SCHEMA.names, (photo_id, *taxon, f"{base}/{path}"))))
    half = (len(rows) + 1) // 2
    raw.mkdir(parents=True, exist_ok=True)
    for name, part in (("chunk_0_1000_1.parquet", rows[:half]), ("chunk_0_1000_2.parquet", rows[half:])):
        pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), raw / name)
    loopback.write_service(raw, port, "site")
