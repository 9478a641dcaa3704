"""Delimited text files (CSV, TSV, gzipped or not) read row by row with the byte offset where each
row starts, so that builders can put offsets rather than rows into their partitions and a worker can
seek straight to its rows. Rows are parsed by Python's ``csv`` module (quoted fields with embedded
newlines, no field-size limit), never by splitting lines. Knows no dataset.
It must not interpret values: columns stay strings for the builder to parse.
"""

from __future__ import annotations

import csv
import gzip
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from vldata.errors import StructuralError


def open_binary(path: Path) -> IO[bytes]:
    """The file for reading bytes, decompressed when its name ends in ``.gz``; offsets are then
    positions in the uncompressed stream."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def rows_with_offsets(f: IO[bytes], delimiter: str = ",", first_line: int = 1,
                      errors: str = "strict") -> Iterator[tuple[int, int, list[str]]]:
    """(byte offset, line number, values) of each non-blank row from the file's current position;
    ``first_line`` is the line number of that position."""
    csv.field_size_limit(sys.maxsize)
    state = {"pos": f.tell(), "line": first_line - 1}

    def lines() -> Iterator[str]:
        for raw in iter(f.readline, b""):
            state["pos"] += len(raw)
            state["line"] += 1
            yield raw.decode("utf-8", errors=errors)

    reader = csv.reader(lines(), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
    while True:
        offset, line = state["pos"], state["line"] + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        if values:  # a blank line is no row
            yield offset, line, values


def read_header(path: Path, required: tuple[str, ...], aliases: dict[str, str] | None = None,
                delimiter: str = ",") -> list[str]:
    """The header row (BOM stripped, documented aliases mapped to the real names); a missing required
    column or an unreadable file is a StructuralError naming the file."""
    try:
        with open_binary(path) as f:
            first = next(rows_with_offsets(f, delimiter), None)
    except (OSError, EOFError, csv.Error, UnicodeError) as e:
        raise StructuralError(f"{path}: not a readable {'TSV' if delimiter == chr(9) else 'CSV'} "
                              f"({type(e).__name__}: {e})") from None
    header = [h.strip().lstrip("\ufeff") for h in (first[2] if first else [])]
    header = [(aliases or {}).get(h, h) for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise StructuralError(f"{path}: missing required column '{missing[0]}'"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return header
