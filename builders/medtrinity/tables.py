"""MedTrinity-25M's parquet files (``25M_demo``, ``25M_full``) read in bounded memory, damage counted.

A row group is read in batches of ``BATCH_ROWS`` rows, never whole. A batch whose values do not
convert (a string that is not UTF-8) is converted row by row, so only its bad rows become
``Unreadable('row_not_utf8' | 'malformed_row')``; where a row group stops decoding (a damaged page,
a truncated file), each of its remaining rows is ``Unreadable('unreadable_row_group')``, the file named
in the message. An unreadable footer or a missing required column is a StructuralError naming the
file. ``raw_json`` is a row as the record keeps it. Knows no keys or Records; the builder in ``__init__`` decides what a row means.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from vldata import StructuralError

BATCH_ROWS = 256


class Unreadable(NamedTuple):
    """A row that could not be read: a stable reason and what went wrong."""

    reason: str
    message: str


def check_columns(path: Path, required: tuple[str, ...]) -> list[str]:
    """The file's column names; StructuralError when its footer is unreadable or a column is missing."""
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as e:  # noqa: BLE001 — any unreadable parquet footer is structural
        raise StructuralError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
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


def _batch_rows(batch: pa.RecordBatch) -> list[dict | Unreadable]:
    try:
        return batch.to_pylist()
    except Exception:  # noqa: BLE001 — find the bad rows one by one
        out: list[dict | Unreadable] = []
    for i in range(batch.num_rows):
        try:
            out.append(batch.slice(i, 1).to_pylist()[0])
        except UnicodeDecodeError:
            out.append(Unreadable("row_not_utf8", "a string that is not UTF-8"))
        except Exception as e:  # noqa: BLE001 — pyarrow raises many types for damaged values
            out.append(Unreadable("malformed_row", f"{type(e).__name__}: {str(e)[:200]}"))
    return out


def row_group_rows(path: Path, rg: int, columns: list[str] | None = None,
                   wanted: set[int] | None = None) -> Iterator[tuple[int, dict | Unreadable]]:
    """(row index within the row group, row or Unreadable) of each row of row group ``rg`` (only the
    indices in ``wanted`` when given), in order."""
    done, n = 0, None
    order = sorted(wanted) if wanted is not None else None
    try:
        pf = pq.ParquetFile(path)
        n = pf.metadata.row_group(rg).num_rows
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=columns, use_threads=False):
            if order is None or bisect_left(order, done) < bisect_left(order, done + batch.num_rows):
                for j, row in enumerate(_batch_rows(batch)):
                    if done + j < n and (wanted is None or done + j in wanted):
                        yield done + j, row
            done = min(n, done + batch.num_rows)
        why = "ended early"
    except Exception as e:  # noqa: BLE001 — pyarrow raises OSError, ArrowInvalid, ... for damaged pages
        why = f"{type(e).__name__}: {str(e)[:200]}"
    if n is None:
        n = pq.ParquetFile(path).metadata.row_group(rg).num_rows  # the footer was read by check_columns
    bad = Unreadable("unreadable_row_group", f"{Path(path).name}: row group {rg} does not decode after row {done} ({why})")
    for i in range(done, n):
        if wanted is None or i in wanted:
            yield i, bad


def rows_at(files: list[str], rels: list[str],
            locs: list) -> Iterator[tuple[tuple[int, int, int], dict | Unreadable, str]]:
    """((file, row group, row), row or Unreadable, ref ``rel:row``) of the rows at ``locs`` (tuples
    ending in file, row group, row), read row group by row group."""
    wanted: dict[tuple[int, int], set[int]] = {}
    for loc in locs:
        fi, rg, ri = loc[-3:]
        wanted.setdefault((fi, rg), set()).add(ri)
    for (fi, rg), indices in sorted(wanted.items()):
        meta = pq.ParquetFile(files[fi]).metadata
        offset = sum(meta.row_group(i).num_rows for i in range(rg))
        for ri, row in row_group_rows(files[fi], rg, wanted=indices):
            yield (fi, rg, ri), row, f"{rels[fi]}:{offset + ri}"
