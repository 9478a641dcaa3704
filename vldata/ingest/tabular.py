"""Delimited text files (CSV, TSV, gzipped or not) read row by row with the byte offset where each
row starts, so that builders can put offsets rather than rows into their partitions and a worker can
seek straight to its rows. Rows are parsed by Python's ``csv`` module (quoted fields with embedded
newlines), never by splitting lines. Knows no dataset.

Hostile input stays a matter of single rows, in bounded memory: lines are read with a size limit, so
a row longer than ``ROW_LIMIT`` (one physical line, or a quoted row over several) is never held whole
but skipped to the next newline; such a row, a row that is not UTF-8 and a row the ``csv`` module
refuses (a lone CR, ...) each come out as a ``Row`` whose ``problem`` (``BadRow``) says why, and
reading resumes at the next line. A file whose stream breaks (a truncated or corrupt gzip, a read
error) ends there: the rows read so far stand (for a corrupt deflate stream, less the rows
decompressed in the same step as the damage, which zlib drops with it) and ``Rows.damage`` says what
happened. Because the scan that counts a file's rows and the reading of its partitions go through the
same ``Rows`` (with the same reads of a gzip from its start), both see the same rows, problems and
damage.

It must not interpret values: columns stay strings for the builder to parse; it decides no failure
reasons beyond the row-level ones above (``row_too_large``, ``row_not_utf8``, ``malformed_row``) and the file
level ones (``truncated_file``, ``corrupt_file``), and it counts nothing.
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

from vldata.errors import StructuralError

ROW_LIMIT = 16 << 20  # bytes: a longer row is skipped as row_too_large
_CHUNK = 1 << 20  # bytes read at a time (also the step of a gzip "seek")


@dataclass(frozen=True)
class BadRow:
    """Why a row gave no values: ``reason`` is ``row_too_large``, ``row_not_utf8`` or ``malformed_row``."""

    reason: str
    message: str


@dataclass(frozen=True)
class Damage:
    """Why a file's stream ended early: ``reason`` is ``truncated_file`` or ``corrupt_file``."""

    reason: str
    message: str


class Row(NamedTuple):
    offset: int  # byte offset of the row's start (in the uncompressed stream)
    line: int  # physical line number of that start, 1-based
    values: list[str] | None  # None when ``problem`` is set
    problem: BadRow | None


class _RowProblem(Exception):
    def __init__(self, problem: BadRow):
        self.problem = problem


class _Broken(Exception):
    def __init__(self, damage: Damage):
        self.damage = damage


def open_binary(path: Path) -> IO[bytes]:
    """The file for reading bytes, decompressed when its name ends in ``.gz``; offsets are then
    positions in the uncompressed stream."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


class _Lines:
    """Physical lines (``\\n``-terminated) of a byte stream, decoded as UTF-8, for ``csv.reader``; it
    tracks the stream position and line number, and raises ``_RowProblem`` (the row in progress is
    too long or not UTF-8) or ``_Broken`` (the stream failed). Holds at most about ``limit + _CHUNK``
    bytes."""

    def __init__(self, f: IO[bytes], limit: int, pos: int, line: int, buf: bytes = b""):
        self.f, self.limit = f, limit
        self.buf, self.start, self.scanned = bytearray(buf), 0, 0  # unread data is buf[start:]
        self.eof = False
        self.pos, self.line = pos, line  # position and number of the last line handed out
        self.row_bytes = 0  # bytes of the row in progress (reset by Rows before each row)

    def _read(self) -> bytes:
        """The next bytes, b"" at the end. ``read1`` does one read of the layer below, so the bytes
        decompressed before a break in the stream are delivered before the exception."""
        try:
            return self.f.read1(_CHUNK) if hasattr(self.f, "read1") else self.f.read(_CHUNK)
        except EOFError as e:
            raise _Broken(Damage("truncated_file", f"the compressed stream ends early ({e})")) from None
        except (zlib.error, OSError) as e:  # gzip.BadGzipFile is an OSError
            raise _Broken(Damage("corrupt_file", f"{type(e).__name__}: {e}")) from None

    def _next_bytes(self) -> tuple[bytes | None, int]:
        """The next line and its size, ``(None, size)`` for a line longer than ``limit`` (skipped to
        its newline without keeping it), ``(b"", 0)`` at the end."""
        while True:
            nl = self.buf.find(b"\n", self.start + self.scanned)
            if nl >= 0:
                line = bytes(self.buf[self.start:nl + 1])
                self.start, self.scanned = nl + 1, 0
                if self.start >= _CHUNK:
                    del self.buf[:self.start]
                    self.start = 0
                return line, len(line)
            self.scanned = len(self.buf) - self.start
            if self.eof:
                line = bytes(self.buf[self.start:])
                self.buf, self.start, self.scanned = bytearray(), 0, 0
                return line, len(line)
            if self.scanned > self.limit:
                return None, self._skip_line()
            chunk = self._read()
            if chunk:
                self.buf += chunk
            else:
                self.eof = True

    def _skip_line(self) -> int:
        """Drop the rest of an over-long line through its newline; its total size."""
        size = len(self.buf) - self.start
        self.buf, self.start, self.scanned = bytearray(), 0, 0
        while True:
            chunk = self._read()
            if not chunk:
                self.eof = True
                return size
            nl = chunk.find(b"\n")
            if nl >= 0:
                self.buf = bytearray(chunk[nl + 1:])
                return size + nl + 1
            size += len(chunk)

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw, size = self._next_bytes()
        if size == 0:
            raise StopIteration
        self.pos += size
        self.line += 1
        self.row_bytes += size
        if raw is None or self.row_bytes > self.limit:
            raise _RowProblem(BadRow("row_too_large", f"row longer than {self.limit} bytes (line {self.line})"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _RowProblem(BadRow("row_not_utf8", f"line {self.line} is not UTF-8 (byte {e.start}: "
                                     f"{raw[e.start:e.start + 4]!r})")) from None


class Rows:
    """The rows of a delimited file, from ``offset`` (the file's current position when None): each a
    ``Row`` with its values, or with a ``problem`` for a row that could not be read (counted like any
    other row: a builder turns it into a failure). ``first_line`` is the line number at ``offset``.
    A gzip is positioned by reading it from its start in fixed steps, so that where a damaged stream
    breaks does not depend on where reading began. After the rows end, ``damage`` is set when the
    stream broke (the row in progress at that point is dropped, not yielded)."""

    def __init__(self, f: IO[bytes], delimiter: str = ",", *, offset: int | None = None, first_line: int = 1,
                 limit: int = ROW_LIMIT):
        if csv.field_size_limit() < limit:  # a field is never longer than its row
            csv.field_size_limit(limit)
        self.delimiter = delimiter
        self.damage: Damage | None = None
        self._lines: _Lines | None = None
        self._setup = (f, offset, first_line, limit)

    def _open(self) -> _Lines:
        f, offset, first_line, limit = self._setup
        if offset is None or not isinstance(f, gzip.GzipFile):
            if offset is not None:
                f.seek(offset)
            return _Lines(f, limit, f.tell() if f.seekable() else 0, first_line - 1)
        f.seek(0)
        lines = _Lines(f, limit, 0, first_line - 1)
        pos = 0
        while True:
            chunk = lines._read()
            if not chunk or pos + len(chunk) > offset:
                lines.buf, lines.eof, lines.pos = bytearray(chunk[offset - pos:]), not chunk, offset
                return lines
            pos += len(chunk)

    def __iter__(self) -> Iterator[Row]:
        try:
            lines = self._lines = self._open()
        except _Broken as e:
            self.damage = e.damage
            return
        reader = csv.reader(lines, delimiter=self.delimiter, quoting=csv.QUOTE_MINIMAL)
        while True:
            offset, line = lines.pos, lines.line + 1
            lines.row_bytes = 0
            try:
                values = next(reader)
            except StopIteration:
                return
            except _Broken as e:
                self.damage = e.damage
                return
            except _RowProblem as e:
                yield Row(offset, line, None, e.problem)
            except csv.Error as e:
                yield Row(offset, line, None, BadRow("malformed_row", f"line {lines.line}: {e}"))
            else:
                if values:  # a blank line is no row
                    yield Row(offset, line, values, None)
                continue
            reader = csv.reader(lines, delimiter=self.delimiter, quoting=csv.QUOTE_MINIMAL)  # resume at the next line


def read_header(path: Path, required: tuple[str, ...], aliases: dict[str, str] | None = None,
                delimiter: str = ",", limit: int = ROW_LIMIT) -> list[str]:
    """The header row (BOM stripped, documented aliases mapped to the real names); a missing required
    column, a header row that cannot be read (too long, not UTF-8, malformed) or an unreadable file is
    a StructuralError naming the file."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        with open_binary(path) as f:
            rows = Rows(f, delimiter, limit=limit)
            first = next(iter(rows), None)
    except OSError as e:
        raise StructuralError(f"{path}: not a readable {kind} ({type(e).__name__}: {e})") from None
    if first is None and rows.damage:
        raise StructuralError(f"{path}: not a readable {kind} ({rows.damage.reason}: {rows.damage.message})")
    if first is not None and first.problem:
        raise StructuralError(f"{path}: unreadable {kind} header ({first.problem.reason}: {first.problem.message})")
    header = [h.strip().lstrip("\ufeff") for h in (first.values if first else [])]
    header = [(aliases or {}).get(h, h) for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise StructuralError(f"{path}: missing required column '{missing[0]}'"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return header
