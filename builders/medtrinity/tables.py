"""MedTrinity-25M's parquet files (``25M_demo``, ``25M_full``) read in bounded memory, damage counted.

The reading itself is the shared one (``vldata.ingest.parquet_rows``): a row group is decoded in
batches, a row whose values do not convert is ``Unreadable('row_not_utf8' | 'unreadable_value')`` on
its own, and where a row group stops decoding (a damaged page, a truncated file) each of its remaining
rows is ``Unreadable('unreadable_row_group')``, the file named in the message; an unreadable footer is
a StructuralError naming the file. This module adds what MedTrinity needs on top: the required
columns, reading only some rows of a row group, and ``raw_json`` (a row as the record keeps it). It
knows no keys or Records; the builder in ``__init__`` decides what a row means.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from vldata import Origin, StructuralError
from vldata.ingest.parquet_rows import Unreadable, open_parquet, read_rows

__all__ = ["Unreadable", "check_columns", "raw_json", "row_group_rows", "rows_at"]


def check_columns(path: Path, required: tuple[str, ...]) -> list[str]:
    """The file's column names; StructuralError when its footer is unreadable or a column is missing."""
    names = open_parquet(path).schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise StructuralError(f"{path}: missing required column '{missing[0]}'"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return names


def raw_json(row: dict) -> str:
    """The JSON of a row as kept in ``raw``: an embedded image as its path only."""
    row = dict(row)
    if isinstance(row.get("image"), dict):
        row["image"] = {"path": row["image"].get("path")}
    return json.dumps(row, ensure_ascii=False, sort_keys=True, default=str)


def row_group_rows(path: Path, rg: int, columns: list[str] | None = None,
                   wanted: set[int] | None = None) -> Iterator[tuple[int, dict | Unreadable]]:
    """(row index within the row group, row or Unreadable) of each row of row group ``rg`` (only the
    indices in ``wanted`` when given), in order."""
    n = pq.ParquetFile(path).metadata.row_group(rg).num_rows  # the footer was checked by check_columns
    if wanted is not None and not wanted:
        return
    start, stop = (0, n) if wanted is None else (min(wanted), min(n, max(wanted) + 1))
    for i, row in read_rows(path, rg, start, stop, columns, name=f"{Path(path).name}:"):
        if wanted is None or i in wanted:
            yield i, row


def rows_at(files: list[str], rels: list[str],
            locs: list) -> Iterator[tuple[tuple[int, int, int], dict | Unreadable, Origin]]:
    """((file, row group, row), row or Unreadable, its ``Origin``) of the rows at ``locs`` (tuples
    ending in file, row group, row), read row group by row group."""
    wanted: dict[tuple[int, int], set[int]] = {}
    for loc in locs:
        fi, rg, ri = loc[-3:]
        wanted.setdefault((fi, rg), set()).add(ri)
    for (fi, rg), indices in sorted(wanted.items()):
        meta = pq.ParquetFile(files[fi]).metadata
        offset = sum(meta.row_group(i).num_rows for i in range(rg))
        for ri, row in row_group_rows(files[fi], rg, wanted=indices):
            yield (fi, rg, ri), row, Origin(rels[fi], offset + ri)
