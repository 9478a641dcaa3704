"""Optimized parquet (page index, content-defined chunking, images PLAIN and uncompressed) against
the parquet vldata wrote before (``pq.ParquetWriter(path, schema)``: snappy and dictionary everywhere).

Usage: python bench/parquet_optimized.py [--n 3000] [--shard-size 16MB] [--samples 20] [--workdir DIR]

Builds (once, cached in --workdir) N synthetic photo-like JPEGs with a caption, a URL and tags;
the same rows again with one more field (``license``); and the same rows without the first one (every
later row moves up one place, as when rows are added or removed upstream). "before" rewrites every
shard of these builds with the old defaults, row group for row group, so both variants hold the same
rows in the same row groups. Prints per variant:
- the parquet bytes of the first build;
- one random sample of it read over HTTP (``vldata.open`` through the range server of tests/fakes, a
  fresh Source each time, so manifest, footer and row group are fetched): median time and bytes sent;
- for each re-build, how many of its parquet bytes are already in the first build, counted two ways:
  identical pages (page headers walked from each column chunk's first page, header + data hashed;
  footers count as changed) and identical Xet-like chunks (a gear-hash content-defined chunking of
  the whole files, 64 KiB on average, 8-128 KiB, the way the Hub's Xet storage cuts files; its own
  gear table differs, its statistics do not), both across all files of the build, as Xet
  deduplicates across files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from fakes.range_server import RangeServer  # noqa: E402
from loader import PhotoBuilder, photo  # noqa: E402

import vldata  # noqa: E402
from vldata import Filtered, Image, Record  # noqa: E402
from vldata.layout import file_sha256  # noqa: E402
from vldata.write.engine import run_build  # noqa: E402

LICENSES = ["CC BY 4.0", "CC BY-SA 4.0", "CC0 1.0 Universal", "CC BY-NC 4.0"]


class Captioned(Record):
    image: Image
    url: str
    tags: list[str]


class Licensed(Captioned):
    license: str  # the field added for the re-build


class CaptionedBuilder(PhotoBuilder):
    """``change``: None (the first build), "field" (every row gets a ``license``) or "row" (the first
    row is left out: every later row moves up by one)."""

    name, version = "bench_parquet", "0.1.0"

    def __init__(self, n: int, short: tuple[int, int], photos: Path, change: str | None = None):
        super().__init__(n, short)
        self.photos, self.change = photos, change

    def record_type(self) -> type[Record]:
        return Licensed if self.change == "field" else Captioned

    def records(self, partition, ctx):
        start, end = partition.payload
        for i in range(start, end):
            if self.change == "row" and i == 0:
                yield Filtered(f"img{i:07d}", "bench_dropped", "left out to shift every later row", "row 0")
                continue
            rng = np.random.default_rng(i)
            short = int(rng.integers(*self.short))
            cached = self.photos / f"{i:07d}.jpg"  # generated once for all the builds
            if not cached.exists():
                cached.write_bytes(photo(np.random.default_rng([i, 1]), short))
            data = cached.read_bytes()
            tags = [f"tag{int(t)}" for t in rng.integers(0, 500, int(rng.integers(1, 6)))]
            fields = {"key": f"img{i:07d}", "text": f"a synthetic photo number {i} showing {' and '.join(tags)}",
                      "image": ctx.image(data), "url": f"https://example.org/photos/{i // 1000}/{i:07d}.jpg", "tags": tags}
            if self.change == "field":
                fields["license"] = LICENSES[i % len(LICENSES)]
            yield self.record_type()(**fields)


def build(workdir: Path, n: int, shard_bytes: int, change: str | None, shuffled: bool) -> Path:
    """A build (parquet only) in the default shuffled order (seed 0) or in input order."""
    out = workdir / f"{change or 'first'}_{'shuffled' if shuffled else 'ordered'}_{n}_{shard_bytes}"
    if not (out / "parquet" / "vldata.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        photos = workdir / f"photos_{n}"
        photos.mkdir(exist_ok=True)
        run_build(CaptionedBuilder(n, (256, 513), photos, change), workdir, out, formats=("parquet",), workers=2,
                  shard_bytes={"parquet": shard_bytes}, shuffle=0 if shuffled else None)
    return out / "parquet"


def rewrite_old_way(folder: Path, dest: Path) -> Path:
    """A copy of the parquet folder ``folder`` whose shards are written as vldata wrote them before:
    ``pq.ParquetWriter(path, schema)``, one ``write_table`` per row group; the manifest follows."""
    if (dest / "vldata.json").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(folder, dest)
    manifest = json.loads((dest / "vldata.json").read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            path = dest / shard["path"]
            src = pq.ParquetFile(folder / shard["path"])
            with pq.ParquetWriter(path, src.schema_arrow) as writer:
                for g in range(src.num_row_groups):
                    table = src.read_row_group(g)
                    writer.write_table(table, row_group_size=max(1, table.num_rows))
            shard["num_bytes"], shard["sha256"] = path.stat().st_size, file_sha256(path)
    (dest / "vldata.json").write_text(json.dumps(manifest, indent=1))
    return dest


def shards(folder: Path) -> list[Path]:
    return sorted((folder / "data").glob("*.parquet"))


def parquet_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in shards(folder))


# ------------------------------------------------------------------------------------------
# Random reads over HTTP


def random_reads(srv: RangeServer, rels: dict[str, str], samples: int, seed: int = 0) -> dict[str, tuple]:
    """{label: (median seconds, median bytes sent)} to read one random sample through a fresh Source
    of each folder in ``rels``; the folders take turns on the same indices, so that a busy machine
    slows them alike."""
    n = len(vldata.open(srv.url(next(iter(rels.values()))), format="parquet"))
    times, sent = {k: [] for k in rels}, {k: [] for k in rels}
    for i in np.random.default_rng(seed).integers(0, n, samples):
        for label, rel in rels.items():
            srv.reset()
            t0 = time.perf_counter()
            sample = vldata.open(srv.url(rel), format="parquet")[int(i)]
            times[label].append(time.perf_counter() - t0)
            sent[label].append(srv.bytes_sent)
            assert sample["image"]
    return {k: (statistics.median(times[k]), statistics.median(sent[k])) for k in rels}


# ------------------------------------------------------------------------------------------
# What a re-upload would find already stored


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def _skip(buf: bytes, pos: int, ttype: int) -> int:
    """Skip one Thrift compact-protocol value of type ``ttype`` starting at ``pos``."""
    if ttype in (1, 2):  # booleans in a struct carry their value in the type
        return pos
    if ttype == 3:
        return pos + 1
    if ttype in (4, 5, 6):
        return _varint(buf, pos)[1]
    if ttype == 7:
        return pos + 8
    if ttype == 8:
        n, pos = _varint(buf, pos)
        return pos + n
    if ttype in (9, 10):
        head = buf[pos]
        pos += 1
        size, etype = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        for _ in range(size):
            pos = pos + 1 if etype in (1, 2) else _skip(buf, pos, etype)
        return pos
    if ttype == 11:
        size, pos = _varint(buf, pos)
        if size:
            kv = buf[pos]
            pos += 1
            for _ in range(size):
                pos = _skip(buf, _skip(buf, pos, kv >> 4), kv & 0x0F)
        return pos
    if ttype == 12:
        return _struct(buf, pos)[1]
    raise ValueError(f"thrift type {ttype}")


def _struct(buf: bytes, pos: int) -> tuple[dict[int, int], int]:
    """The integer fields of a compact-protocol struct at ``pos`` and where it ends."""
    fields, last = {}, 0
    while True:
        head = buf[pos]
        pos += 1
        if head == 0:
            return fields, pos
        delta, ttype = head >> 4, head & 0x0F
        if delta:
            fid = last + delta
        else:
            raw, pos = _varint(buf, pos)
            fid = (raw >> 1) ^ -(raw & 1)
        last = fid
        if ttype == 5:
            raw, pos = _varint(buf, pos)
            fields[fid] = (raw >> 1) ^ -(raw & 1)
        else:
            pos = _skip(buf, pos, ttype)


def pages(path: Path) -> list[bytes]:
    """Every page (header + data) of every column chunk of a parquet file, walked through the page
    headers from each chunk's first page (PageHeader field 3 is the compressed page size)."""
    data = path.read_bytes()
    md = pq.ParquetFile(path).metadata
    out = []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            pos = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            end = pos + col.total_compressed_size
            while pos < end:
                header, body = _struct(data, pos)
                out.append(data[pos:body + header[3]])
                pos = body + header[3]
    return out


_GEAR = np.random.default_rng(20250611).integers(0, 2**63, 256, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_MASK = np.uint64(0xFFFF) << np.uint64(48)  # 16 top bits: a boundary every 64 KiB on average
_MIN, _MAX = 8 << 10, 128 << 10


def xet_chunks(data: bytes, block: int = 8 << 20) -> list[bytes]:
    """Content-defined chunks of ``data`` with a gear hash over 64 bytes (h = (h << 1) + gear[b]),
    cut where its top 16 bits are zero, at least 8 KiB and at most 128 KiB apart."""
    arr = np.frombuffer(data, dtype=np.uint8)
    candidates = []
    for start in range(0, len(arr), block):
        lo = max(0, start - 63)
        h = _GEAR[arr[lo:start + block]]
        step = 1
        while step < 64:  # h_i = sum over k < 64 of gear[b_(i-k)] << k, by doubling the window
            h[step:] += h[:-step] << np.uint64(step)
            step *= 2
        cut = np.flatnonzero((h[start - lo:] & _MASK) == 0) + start
        candidates.append(cut)
    candidates = np.concatenate(candidates) if candidates else np.array([], dtype=np.int64)
    out, begin = [], 0
    while begin < len(data):
        k = np.searchsorted(candidates, begin + _MIN - 1)
        end = int(candidates[k]) + 1 if k < len(candidates) else len(data)
        end = min(end, begin + _MAX, len(data))
        out.append(data[begin:end])
        begin = end
    return out


def kept_bytes(old: Path, new: Path, split) -> int:
    """Bytes of ``new``'s pieces (``split(file)``) that are also among ``old``'s pieces."""
    known = {hashlib.blake2b(p, digest_size=16).digest() for f in shards(old) for p in split(f)}
    return sum(len(p) for f in shards(new) for p in split(f) if hashlib.blake2b(p, digest_size=16).digest() in known)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--shard-size", default="16MB", help="parquet shard size (payload), as --parquet-shard-size")
    ap.add_argument("--samples", type=int, default=20, help="random samples read over HTTP per variant")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vldata-bench-parquet")
    args = ap.parse_args()
    from vldata.cli import parse_size

    shard_bytes = parse_size(args.shard_size)
    args.workdir.mkdir(parents=True, exist_ok=True)
    # (first build, re-build): one more field; the first row left out, shuffled and in input order
    pairs = {"field": ((None, True), ("field", True)), "row": ((None, True), ("row", True)),
             "row, ordered": ((None, False), ("row", False))}
    builds = {b: build(args.workdir, args.n, shard_bytes, *b) for pair in pairs.values() for b in pair}
    variants = {"after": builds,
                "before": {b: rewrite_old_way(folder, folder.parent / "parquet_old") for b, folder in builds.items()}}
    rows = {}
    with RangeServer(args.workdir) as srv:
        reads = random_reads(srv, {k: str(v[(None, True)].relative_to(args.workdir)) for k, v in variants.items()},
                             args.samples)
        for label, v in variants.items():
            kept = [(kept_bytes(v[a], v[b], pages), kept_bytes(v[a], v[b], lambda f: xet_chunks(f.read_bytes())),
                     parquet_bytes(v[b])) for a, b in pairs.values()]
            rows[label] = (parquet_bytes(v[(None, True)]), *reads[label], kept)
    for (change, shuffled), folder in builds.items():
        print(f"{change or 'first'} build, {'shuffled' if shuffled else 'input order'}: rows per row group, per shard: "
              f"{row_groups(folder)}")
    print("| parquet | MB | one random sample over HTTP: ms (median) | MB sent | re-build with one more field | "
          "re-build without the first row | the same, --shuffle none |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label in ("before", "after"):
        size, t, sent, kept = rows[label]
        cells = [f"{p / total:.1%} / {c / total:.1%} of {total / 1e6:.1f} MB" for p, c, total in kept]
        print(f"| {label} | {size / 1e6:.1f} | {t * 1e3:.0f} | {sent / 1e6:.1f} | {' | '.join(cells)} |")
    print("re-build cells: bytes of the re-build already in the first build, as identical pages / identical Xet-like chunks")


def row_groups(folder: Path) -> list[list[int]]:
    out = []
    for f in shards(folder):
        md = pq.ParquetFile(f).metadata
        out.append([md.row_group(g).num_rows for g in range(md.num_row_groups)])
    return out


if __name__ == "__main__":
    main()
