"""Reading LAION's input rows: the rows of a metadata partition, and the rows, keys and image column of
an img2dataset shard parquet, through ``parquet_rows`` so that a damaged page fails only the rows it
touches (``Unreadable``) and every span yields as many rows as ``partitions()`` counted.

It must not fetch, load images or build Records (the builder in ``__init__`` does).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vldata.ingest import img2dataset
from vldata.layout import safe_key

from vldata.ingest.parquet_rows import Unreadable, group_sizes, open_parquet, read_rows


def metadata_rows(p: dict) -> Iterator[tuple[int, dict | Unreadable]]:
    """(row in the file, its values or why they cannot be read) of a metadata partition's payload."""
    wanted = None if p["rows"] is None else set(p["rows"])
    for r, row in read_rows(p["path"], p["row_group"], p["start"], p["stop"]):
        if wanted is None or r in wanted:
            yield p["first_row"] + r, row


def _shard(path: str, columns: list[str] | None = None) -> Iterator[tuple[int, dict | Unreadable]]:
    """(row in the file, values or Unreadable) of every row of a shard parquet."""
    first = 0
    for g, n in enumerate(group_sizes(open_parquet(path))):
        for r, row in read_rows(path, g, 0, n, columns):
            yield first + r, row
        first += n


def shard_keys(path: str) -> set[str]:
    """The readable keys of an img2dataset shard parquet."""
    return {str(row["key"]) for _, row in _shard(path, ["key"]) if not isinstance(row, Unreadable)}


def shard_rows(path: str, names: list[str], store: dict) -> tuple[list[tuple[int, dict]],
                                                                  list[tuple[int, Unreadable]], dict[str, bytes]]:
    """(readable rows in key order, without image columns; unreadable rows in file order; the image
    column's bytes by key when the shard keeps its images there)."""
    image_column = store.get("column")
    columns = [n for n in names if n not in img2dataset.IMAGE_EXTENSIONS or n == image_column]
    readable, unreadable, images = [], [], {}
    for row_no, row in _shard(path, columns):
        if isinstance(row, Unreadable):
            unreadable.append((row_no, row))
            continue
        if image_column is not None:
            images[str(row["key"])] = row.pop(image_column)
        readable.append((row_no, row))
    return img2dataset.rows_in_key_order(readable), unreadable, images


def unreadable_key(rel: str, row_no: int) -> str:
    """The key of a row whose own key could not be read."""
    return safe_key(f"{Path(rel).stem}_row{row_no:09d}")
