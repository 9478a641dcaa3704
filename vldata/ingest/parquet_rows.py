"""Reading metadata parquet files so that damage costs only the rows it touches.

A file whose footer cannot be read, or whose footer contradicts itself (the row counts of the file,
of its row groups and of their columns disagree), is a ``StructuralError`` naming the file
(``open_parquet``): its rows cannot even be counted, so it is not skipped with a note, which would
lose them silently; ``partitions()`` raises it before any work, when removing or re-downloading one
file costs nothing.

Inside a readable file, ``read_rows`` reads one row group in small batches and hands out exactly one
item per row of the span asked for, the number ``partitions()`` counted from the footer: the row's
values, or an ``Unreadable`` naming the file and row group. When a page does not decode, that row
and every later row of the span are ``unreadable_row_group`` (a row group cannot be resumed past a
damaged page; earlier rows and other row groups are unaffected), and so are the rows of a row group
that ends early; a single row whose values do not convert is ``row_not_utf8`` (a string that is not
UTF-8) or ``unreadable_value``.

It knows no dataset (builders whose metadata is parquet use it) and builds no records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vldata.errors import StructuralError, one_line

BATCH_ROWS = 1024  # rows decoded at a time: also how close to a damaged page the rows before it survive


@dataclass(frozen=True)
class Unreadable:
    """A row whose values could not be read; ``reason`` is a stable failure reason."""

    reason: str
    message: str


def open_parquet(path: Path | str) -> pq.ParquetFile:
    """The file, with a footer checked for consistency; StructuralError naming it otherwise."""
    try:
        pf = pq.ParquetFile(path)
        md = pf.metadata
        pf.schema_arrow  # noqa: B018 — a schema that does not convert is a damaged footer too
        flat = [i for i in range(md.num_columns) if pf.schema.column(i).max_repetition_level == 0]
        total = 0
        for g in range(md.num_row_groups):
            group = md.row_group(g)
            counts = {group.column(i).num_values for i in flat}
            if group.num_rows < 0 or counts - {group.num_rows}:
                raise ValueError(f"damaged footer: row group {g} holds {group.num_rows} rows but its columns "
                                 f"{sorted(counts)} values")
            total += group.num_rows
        if total != md.num_rows:
            raise ValueError(f"damaged footer: {md.num_rows} rows but its row groups hold {total}")
    except Exception as e:  # pyarrow raises many types for a damaged footer
        raise StructuralError(f"{path}: not a readable parquet file ({one_line(e)})") from None
    return pf


def group_sizes(pf: pq.ParquetFile) -> list[int]:
    """Rows of each row group, in file order."""
    return [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]


def read_rows(path: Path | str, row_group: int, start: int, stop: int, columns: list[str] | None = None,
              name: str | None = None) -> Iterator[tuple[int, dict | Unreadable]]:
    """(row in the row group, its values or why they cannot be read) for rows ``start..stop-1`` of
    ``row_group``, in order: always ``stop - start`` items. Memory: one batch of rows. ``name`` is how
    messages name the file (its path by default)."""
    where = f"{name or path} row group {row_group}"
    r = 0  # rows of the group decoded so far
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, row_groups=[row_group],
                                                    columns=columns, use_threads=False)
        for batch in batches:
            base, r = r, r + batch.num_rows
            lo, hi = max(start, base), min(stop, r)
            if lo < hi:
                yield from _rows(batch.slice(lo - base, hi - lo), lo, where)
            if r >= stop:
                return
        why = f"{where} ends after {r} rows"
    except Exception as e:  # a damaged page: pyarrow raises many types
        why = f"{where} does not decode after row {r} ({one_line(e)})"
    for n in range(max(start, r), stop):
        yield n, Unreadable("unreadable_row_group", why)


def _rows(batch: pa.RecordBatch, first: int, where: str) -> Iterator[tuple[int, dict | Unreadable]]:
    try:
        rows = batch.to_pylist()
    except Exception:  # a value that does not convert: find it row by row
        rows = [_row(batch, i, f"{where}, row {first + i}") for i in range(batch.num_rows)]
    yield from enumerate(rows, first)


def _row(batch: pa.RecordBatch, i: int, where: str) -> dict | Unreadable:
    try:
        return batch.slice(i, 1).to_pylist()[0]
    except UnicodeDecodeError as e:
        return Unreadable("row_not_utf8", f"{where}: a string that is not UTF-8 ({one_line(e)})")
    except Exception as e:
        return Unreadable("unreadable_value", f"{where}: {one_line(e)}")
