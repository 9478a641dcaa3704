"""The order of a split's samples in its shards: a seeded shuffle of the written rows, in flat memory.

The order is a pure function. Each written row gets the sort key ``sort_keys(seed, split, keys)``,
a keyed 64-bit hash of its sample key (BLAKE2b keyed by seed and split), and the rows are written by
sort key, ties by position (``shuffled_order``): a uniform random permutation that depends on (seed,
split, the rows' keys) only, never on workers, partitioning or executor. Hashing the key rather than
the row's position means a row added or removed anywhere leaves every other row's relative order as
it was, so a re-build re-uploads little: the Hub's content-defined chunks of unchanged rows stay
the same. ``Shuffle`` writes that order without holding the split: rows are spilled into bucket files
by the high bits of their sort key (the external two-pass shuffle), then each bucket is read back and
sorted. A bucket holds a contiguous range of sort keys, so the buckets in turn give exactly
``shuffled_order`` whatever their number, which only bounds memory: ``bucket_bytes``, 32 MB up to
16 GB of rows, then growing as the square root of the split so that each spill still appends at
least 64 KB to each bucket file. It knows no format and no builder: the engine hands it the kept
rows as Arrow batches (with their ``key`` column) and writes the batches it gives back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

SORT_KEY = "__shuffle_key__"
MIN_BUCKET_BYTES = 32 << 20
MIN_APPEND_BYTES = 64 << 10
KEY_COLUMN = "key"


def _stream_key(seed: int, split: str) -> bytes:
    return hashlib.sha256(f"vldata.shuffle\0{seed}\0{split}".encode()).digest()[:16]


def sort_keys(seed: int, split: str, keys: Sequence[str]) -> np.ndarray:
    """The uint64 sort key of each sample key: BLAKE2b of the key, keyed by (seed, split)."""
    stream = _stream_key(seed, split)
    return np.fromiter((int.from_bytes(hashlib.blake2b(k.encode("utf-8", "surrogatepass"), digest_size=8,
                                                       key=stream).digest(), "little") for k in keys),
                       dtype=np.uint64, count=len(keys))


def shuffled_order(seed: int, split: str, keys: Sequence[str]) -> np.ndarray:
    """The written positions 0..n-1 of rows with these keys in shard order: what ``Shuffle`` yields,
    computed in memory."""
    return np.argsort(sort_keys(seed, split, keys), kind="stable")


def bucket_bytes(total_bytes: int) -> int:
    """The rows of one bucket, read back and sorted in memory, and the rows held before a spill: with
    B = total / b buckets, a spill appends b / B = b**2 / total bytes to each bucket file."""
    return max(MIN_BUCKET_BYTES, math.isqrt(total_bytes * MIN_APPEND_BYTES))


def num_buckets(total_bytes: int) -> int:
    return int(max(1, min(1 << 31, -(-total_bytes // bucket_bytes(total_bytes)))))


def bucket_of(keys: np.ndarray, buckets: int) -> np.ndarray:
    """floor(key * buckets / 2**64): non-decreasing in the key, so bucket b holds a range of keys."""
    return ((keys >> np.uint64(32)) * np.uint64(buckets)) >> np.uint64(32)


class Shuffle:
    """Batches in, in written order (``add``); the same rows out in shuffled order (``batches``), in
    batches of ``batch_rows``. Bucket files live in ``folder`` and are removed as they are read."""

    def __init__(self, folder: Path, seed: int, split: str, buckets: int, spill_bytes: int = MIN_BUCKET_BYTES,
                 batch_rows: int = 64):
        self.folder, self.seed, self.split, self.buckets = Path(folder), seed, split, buckets
        self.spill_bytes, self.batch_rows = spill_bytes, batch_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        self.position = 0
        self.held: dict[int, list[pa.RecordBatch]] = {}
        self.held_bytes = 0
        self.metadata: dict | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        self.metadata = batch.schema.metadata
        keys = sort_keys(self.seed, self.split, batch.column(KEY_COLUMN).to_pylist())
        self.position += batch.num_rows
        batch = batch.replace_schema_metadata(None).append_column(SORT_KEY, pa.array(keys))
        buckets = bucket_of(keys, self.buckets)
        if self.buckets > 1:
            order = np.argsort(buckets, kind="stable")  # a bucket keeps its rows in written order
            batch, buckets = batch.take(pa.array(order)), buckets[order]
        values, starts = np.unique(buckets, return_index=True)
        ends = [*starts[1:], batch.num_rows]
        for b, start, end in zip(values.tolist(), starts.tolist(), ends):
            self.held.setdefault(b, []).append(batch.slice(start, end - start))
        self.held_bytes += batch.nbytes
        if self.held_bytes >= self.spill_bytes:
            self._spill()

    def _path(self, bucket: int) -> Path:
        return self.folder / f"{bucket:06d}.arrows"

    def _spill(self) -> None:
        """Append the rows held for each bucket to its file, as one Arrow stream after its length."""
        for b in sorted(self.held):
            batches = self.held.pop(b)
            if self.buckets > 1:  # slices of a few rows each: one batch, not a message per slice
                batches = pa.Table.from_batches(batches).combine_chunks().to_batches()
            path = self._path(b)
            with open(path, "r+b" if path.exists() else "wb") as f:
                start = f.seek(0, 2)
                f.write(bytes(8))
                with pa.ipc.new_stream(f, batches[0].schema) as writer:
                    for batch in batches:
                        writer.write_batch(batch)
                end = f.tell()
                f.seek(start)
                f.write((end - start - 8).to_bytes(8, "little"))
        self.held_bytes = 0
        pa.default_memory_pool().release_unused()

    def _bucket(self, b: int) -> pa.Table | None:
        """Bucket ``b``'s rows in written order: its file's frames, then what is still held."""
        tables = []
        path = self._path(b)
        if path.exists():
            data = pa.py_buffer(path.read_bytes())
            path.unlink()
            at = 0
            while at < data.size:
                size = int.from_bytes(data[at:at + 8].to_pybytes(), "little")
                tables.append(pa.ipc.open_stream(data[at + 8:at + 8 + size]).read_all())
                at += 8 + size
        if b in self.held:
            tables.append(pa.Table.from_batches(self.held.pop(b)))
        return pa.concat_tables(tables).combine_chunks() if tables else None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Every added row once, by sort key; call once, after the last ``add``."""
        if self.buckets > 1:
            self._spill()  # frees the rows held: a bucket is read whole, with nothing else in memory
        for b in range(self.buckets):
            table = self._bucket(b)
            if table is None:
                continue
            order = np.argsort(table.column(SORT_KEY).to_numpy(), kind="stable")
            table = table.drop_columns([SORT_KEY]).replace_schema_metadata(self.metadata)
            for start in range(0, len(order), self.batch_rows):
                yield from table.take(pa.array(order[start:start + self.batch_rows])).to_batches()
            del table
            pa.default_memory_pool().release_unused()
