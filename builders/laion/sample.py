"""LAION's synthetic raw input: a LAION-400M-shaped and a DataComp-shaped metadata parquet whose URLs
point at a loopback server, with the real quirks.

Written for the demo and the tests (``LaionBuilder.write_sample``); the blank picture and its encoding
come from ``vldata.ingest.synthetic``, the rectangles are drawn here. Nothing here is used while
building real data, and it must not parse or build records. Its output is pinned byte for byte by
tests/test_golden_shards.py: keep the order of every ``rng`` draw.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import ImageDraw

from vldata.ingest import loopback, synthetic

_CAPTIONS = ["a red bus on a street", "Olive oil infused with Tuscany herbs", "vintage poster of a lighthouse",
             "Portrait d'une femme au chapeau", "two dogs playing in the snow", "木の上の猫", "a bowl of ramen",
             "close-up of a sunflower", "<b>Sale!</b> leather boots &amp; bags", "aerial view of a harbour"]
_LICENSES = ["?", "?", "?", "https://creativecommons.org/licenses/by/4.0/", "https://creativecommons.org/licenses/by-sa/2.0/"]
# the two files' columns in file order (docs/RAW_FORMATS.md §1.1)
LAION400M = pa.schema([("SAMPLE_ID", pa.int64()), ("URL", pa.string()), ("TEXT", pa.string()), ("HEIGHT", pa.int32()),
                       ("WIDTH", pa.int32()), ("LICENSE", pa.string()), ("NSFW", pa.string()),
                       ("similarity", pa.float64())])
DATACOMP = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                      ("original_width", pa.int64()), ("original_height", pa.int64()),
                      ("clip_b32_similarity_score", pa.float32()), ("clip_l14_similarity_score", pa.float32()),
                      ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string())])


def _picture(rng: random.Random, fmt: str) -> tuple[bytes, int, int]:
    img = synthetic.blank(rng, (40, 160))
    w, h = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.randint(0, w), rng.randint(0, h)
        draw.rectangle((x, y, x + rng.randint(5, 40), y + rng.randint(5, 40)), fill=synthetic.colour(rng))
    return synthetic.encode(img, fmt, quality=90 if fmt in ("JPEG", "WEBP") else None), w, h


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
    folder = raw / "laion400m"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-00000-{uuid.UUID(int=rng.getrandbits(128))}-c000.snappy.parquet"
    pq.write_table(pa.Table.from_pylist(laion, schema=LAION400M), folder / name, compression="snappy")

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
    (raw / "datacomp").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(datacomp, schema=DATACOMP),
                   raw / "datacomp" / f"{rng.randbytes(16).hex()}.parquet")
    loopback.write_service(raw, port, "site", routes)
