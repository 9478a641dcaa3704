"""Helpers for the synthetic raw inputs that builders' ``sample.py`` modules write.

Every builder ships a generator of a small raw input in its dataset's real layout (for the demo and
the tests). What those generators share lives here: a seeded blank picture, encoding a picture in a
given format and pixel mode (16-bit, palette, RGBA, ...), and writing CSV/TSV tables exactly as the
upstream files are written. The drawing that makes each dataset's pictures look like its own stays
in its sample module. Nothing here is used while building real data.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from collections.abc import Iterable
from pathlib import Path

from PIL import Image as PILImage


def blank(rng: random.Random, sizes: tuple[int, int], colors: tuple[int, int] = (0, 255)) -> PILImage.Image:
    """An RGB picture of random width and height in ``sizes`` (inclusive), filled with a random colour
    whose channels lie in ``colors``; draws width, height, then the three channels from ``rng``."""
    w, h = rng.randint(*sizes), rng.randint(*sizes)
    return PILImage.new("RGB", (w, h), tuple(rng.randint(*colors) for _ in range(3)))


def colour(rng: random.Random, lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
    return tuple(rng.randint(lo, hi) for _ in range(3))  # type: ignore[return-value]


def encode(img: PILImage.Image, fmt: str = "PNG", mode: str = "RGB", quality: int | None = None) -> bytes:
    """``img`` converted to ``mode`` and saved as ``fmt``. ``I;16`` spreads 8-bit grey over 16 bits
    (as a medical scanner's PNG), ``P`` is an adaptive 16-colour palette; ``quality`` is for lossy
    formats."""
    if mode == "I;16":
        img = img.convert("L").convert("I").point(lambda v: v * 257).convert("I;16")
    elif mode == "P":
        img = img.convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16)
    elif mode != img.mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if quality is not None else {}))
    return buf.getvalue()


def write_csv(path: Path, header: list[str] | None, rows: Iterable[list], delimiter: str = ",",
              compress: bool = False) -> None:
    """A CSV (or TSV with ``delimiter="\\t"``) with ``\\n`` line ends, quoting only where needed, as
    the upstream files are written; gzipped when ``compress``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    w = csv.writer(text, delimiter=delimiter, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    data = text.getvalue().encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)  # mtime 0: the same bytes every run
