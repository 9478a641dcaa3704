"""Shard writers: rows in, size-bounded parquet and webdataset shards out.

Both writers consume the same ordered stream of rows and decide shard boundaries only from the rows
they have seen (their byte sizes), so the shards depend on the data and its order, never on how many
workers produced it. Shards are written under temporary names in a staging folder and given their
final names (which carry the shard count) by ``finish``. Parquet goes through pyarrow, tars through
the standard ``tarfile`` module with fixed member metadata so that identical input gives identical
bytes (not webdataset's TarWriter: importing webdataset imports torch, 300+ MB in every build process).
Parquet is written as ``datasets`` (>= 4.6) writes it for the Hub: page index, content-defined
chunking (so that Xet storage deduplicates a re-upload), media columns PLAIN, uncompressed and
without a dictionary (readable at an offset), row groups of at most 100 MB.
They must not know which builder produced the rows; file names come from ``vldata.layout``.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vldata.layout import (MEMBER_INDEX_FORMAT, atomic_write, encode_offsets, file_sha256, member_index, parquet_shard,
                           sample_offsets, tar_shard)


@dataclass
class ShardInfo:
    path: str  # relative to the format folder
    num_samples: int
    num_bytes: int
    sha256: str
    row_groups: list[int] | None = None  # parquet: rows per row group, for random access
    index: str | None = None  # webdataset: the member index sidecar, relative to the format folder

    def as_dict(self) -> dict:
        d = {"path": self.path, "num_samples": self.num_samples, "num_bytes": self.num_bytes, "sha256": self.sha256}
        if self.row_groups is not None:
            d["row_groups"] = self.row_groups
        if self.index is not None:
            d["index"] = self.index
        return d


# What ``datasets`` writes (datasets.config.DEFAULT_CDC_OPTIONS and MAX_ROW_GROUP_SIZE = "100MB"); the
# CDC options are also recorded in the file's key-value metadata under this key, as ``datasets`` does
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}
CDC_METADATA_KEY = "content_defined_chunking"
MAX_ROW_GROUP_BYTES = 100_000_000


def parquet_column_options(schema: pa.Schema) -> dict:
    """Per-leaf ``compression``, ``use_dictionary`` and ``column_encoding`` for ``pq.ParquetWriter``,
    as ``datasets`` chooses them: leaves of media features (``Image`` and any feature ``datasets``
    embeds, at any depth, e.g. ``images.list.element.bytes``) and raw ``binary`` values are PLAIN,
    uncompressed and without a dictionary; every other leaf is snappy with a dictionary. The
    features come from the schema's ``huggingface`` metadata. Parquet names leaves by their path
    (``col.field``, ``col.list.element``), so the options are keyed by leaf path."""
    from datasets import Features

    features = Features.from_arrow_schema(schema)
    compression, use_dictionary, column_encoding = {}, [], {}
    for f in schema:
        for leaf, media in _leaves(f.name, f.type, features[f.name]):
            compression[leaf] = "none" if media else "snappy"
            if media:
                column_encoding[leaf] = "PLAIN"
            else:
                use_dictionary.append(leaf)
    return {"compression": compression, "use_dictionary": use_dictionary, "column_encoding": column_encoding}


def _leaves(path: str, pa_type: pa.DataType, feature, media: bool = False):
    """(leaf path, is media) of a column; ``feature`` is its HF feature (None below a media one)."""
    import datasets

    if isinstance(pa_type, pa.ExtensionType):
        pa_type = pa_type.storage_type
    media = media or hasattr(feature, "embed_storage") or (
        isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"))
    if pa.types.is_struct(pa_type):
        for child in pa_type:
            sub = feature.get(child.name) if isinstance(feature, dict) else None
            yield from _leaves(f"{path}.{child.name}", child.type, sub, media)
    elif pa.types.is_list(pa_type) or pa.types.is_large_list(pa_type) or pa.types.is_fixed_size_list(pa_type):
        item = feature.feature if isinstance(feature, (datasets.List, datasets.LargeList)) else (
            feature[0] if isinstance(feature, list) else None)
        yield from _leaves(f"{path}.list.element", pa_type.value_type, item, media)
    else:
        yield path, media


def open_parquet(path: Path, schema: pa.Schema, column_options: dict | None = None) -> pq.ParquetWriter:
    """A ``ParquetWriter`` writing optimized parquet (see the module docstring) with ``schema``."""
    writer = pq.ParquetWriter(path, schema, write_page_index=True, use_content_defined_chunking=CDC_OPTIONS,
                              **(column_options or parquet_column_options(schema)))
    writer.add_key_value_metadata({CDC_METADATA_KEY: json.dumps(CDC_OPTIONS)})
    return writer


class ParquetShards:
    """Writes ``data/{split}-{i:05d}-of-{n:05d}.parquet`` of about ``target_bytes`` each, in row
    groups of about ``row_group_bytes`` (or ``row_group_rows`` rows), never more than
    ``MAX_ROW_GROUP_BYTES`` unless one row alone is larger. Sizes are the rows' payload sizes."""

    def __init__(self, staging: Path, split: str, schema: pa.Schema, target_bytes: int,
                 row_group_bytes: int = 64 << 20, row_group_rows: int = 1000):
        self.staging, self.split, self.schema = staging, split, schema
        self.target_bytes, self.row_group_bytes, self.row_group_rows = target_bytes, row_group_bytes, row_group_rows
        self._options = parquet_column_options(schema)
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = self._pending_bytes = 0
        self._shard_rows = self._shard_bytes = 0
        self._row_groups: list[int] = []
        self._done: list[tuple[Path, int, dict]] = []
        staging.mkdir(parents=True, exist_ok=True)

    def write(self, batch: pa.RecordBatch, row_bytes: list[int]) -> None:
        """Append rows; ``row_bytes`` are their payload sizes, used for shard and row-group sizing."""
        start = 0
        for i, nbytes in enumerate(row_bytes):
            if self._pending_rows and self._pending_bytes + nbytes > MAX_ROW_GROUP_BYTES:
                if i > start:
                    self._pending.append(batch.slice(start, i - start))
                start = i
                self._flush_row_group()
            self._pending_rows += 1
            self._pending_bytes += nbytes
            self._shard_rows += 1
            self._shard_bytes += nbytes
            shard_full = self._shard_bytes >= self.target_bytes
            if shard_full or self._pending_bytes >= self.row_group_bytes or self._pending_rows >= self.row_group_rows:
                self._pending.append(batch.slice(start, i + 1 - start))
                start = i + 1
                self._flush_row_group()
                if shard_full:
                    self._close_shard()
        if start < batch.num_rows:
            self._pending.append(batch.slice(start))

    def _flush_row_group(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            path = self.staging / f"{self.split}-{len(self._done):05d}.parquet.tmp"
            self._writer = open_parquet(path, self.schema, self._options)
            self._path = path
        # one chunk per column: the encoded pages must not depend on how the rows were batched
        # (partition boundaries), only on the rows themselves
        table = pa.Table.from_batches(self._pending, schema=self.schema).combine_chunks()
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self._row_groups.append(table.num_rows)
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._done.append((self._path, self._shard_rows, {"row_groups": self._row_groups}))
            self._writer = None
        self._shard_rows = self._shard_bytes = 0
        self._row_groups = []

    def finish(self, folder: Path) -> list[ShardInfo]:
        """Close the last shard and move all shards to their final names under ``folder``."""
        self._flush_row_group()
        self._close_shard()
        if not self._done:  # an empty split still gets one (empty) shard so that readers see it
            path = self.staging / f"{self.split}-00000.parquet.tmp"
            with open_parquet(path, self.schema, self._options) as writer:
                writer.write_table(self.schema.empty_table())
            self._done.append((path, 0, {"row_groups": []}))
        n = len(self._done)
        return _publish(self._done, folder, lambda i: parquet_shard(self.split, i, n))


class TarShards:
    """Writes ``{split}-{i:06d}.tar`` of about ``target_bytes`` each, one sample's members together.

    Beside each tar go its member index (``<shard>.idx.json``) and Energon's sample offsets
    (``<shard>.tar.idx``: where each sample's first header starts, then where the end blocks start),
    both recorded while writing, so no tar is read again."""

    def __init__(self, staging: Path, split: str, target_bytes: int):
        self.staging, self.split, self.target_bytes = staging, split, target_bytes
        self._file = None
        self._writer = None
        self._rows = 0
        self._index: list = []  # [key, [[suffix, data offset, size], ...]] per sample
        self._starts: list[int] = []  # byte offset of each sample's first header
        self._done: list[tuple[Path, int, dict]] = []
        staging.mkdir(parents=True, exist_ok=True)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: ``members`` = {suffix: bytes}, written as ``KEY.<suffix>`` in that order."""
        if self._writer is None:
            self._path = self.staging / f"{self.split}-{len(self._done):06d}.tar.tmp"
            self._file = open(self._path, "wb")
            self._writer = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
        located = []
        self._starts.append(self._writer.offset)
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uname = info.gname = "vldata"
            self._writer.addfile(info, io.BytesIO(data))
            padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            located.append([suffix, self._writer.offset - padded, len(data)])
        self._index.append([key, located])
        self._rows += 1
        if self._file.tell() >= self.target_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            end = self._writer.offset  # after the last member's data, where close() writes the end blocks
            self._writer.close()
            self._file.close()
            self._done.append((self._path, self._rows, {"index": self._index, "offsets": [*self._starts, end]}))
            self._writer = self._file = None
            self._rows = 0
            self._index, self._starts = [], []

    def finish(self, folder: Path) -> list[ShardInfo]:
        self._close_shard()
        if not self._done:  # an empty split still gets one (empty) tar, as in parquet
            path = self.staging / f"{self.split}-000000.tar.tmp"
            with tarfile.open(path, mode="w", format=tarfile.GNU_FORMAT):
                pass
            self._done.append((path, 0, {"index": [], "offsets": [0]}))
        return _publish(self._done, folder, lambda i: tar_shard(self.split, i))


def _publish(done: list[tuple[Path, int, dict]], folder: Path, name: Callable[[int], str]) -> list[ShardInfo]:
    """Move staged shards to their final names (relative to ``folder``) and describe them. A tar's
    member index goes into a sidecar ``<shard>.idx.json`` so that readers can fetch one sample by
    byte range without scanning the tar, and its sample offsets into ``<shard>.tar.idx`` (Energon's)."""
    out = []
    for i, (tmp, rows, extra) in enumerate(done):
        final = folder / name(i)
        final.parent.mkdir(parents=True, exist_ok=True)
        index_name = None
        if "index" in extra:
            index_name = member_index(name(i))
            doc = {"format": MEMBER_INDEX_FORMAT, "shard": final.name, "samples": extra["index"]}
            atomic_write(folder / index_name, json.dumps(doc, separators=(",", ":")))
        if "offsets" in extra:
            atomic_write(folder / sample_offsets(name(i)), encode_offsets(extra["offsets"]))
        os.replace(tmp, final)
        out.append(ShardInfo(name(i), rows, final.stat().st_size, file_sha256(final),
                             row_groups=extra.get("row_groups"), index=index_name))
    return out
