"""Open Images' raw containers read in bounded memory, their damage turned into values to count.

* CSV files go through the shared capped reader (``vldata.ingest.tabular.Rows``); JSON-lines files
  are read as bytes, a physical line at most ``max_bytes + 1`` at a time, so a line never holds more
  than ``max_bytes`` (a longer one is skipped to its end and reported as ``row_too_large``). Bytes that
  are not UTF-8 make their row ``row_not_utf8``; what the csv module or the JSON parser refuses makes
  it ``malformed_row``. Either way reading goes on with the next row.
* Image tarballs are streamed by the shared ``vldata.ingest.tarstream`` (never extracted; a member's
  size from its header is compared with the cap before it is read; a tarball that breaks off raises
  ``ContainerBroken``, with what was yielded before the break kept).
* Mask zips are opened tolerantly (``open_zip`` gives None for one that is not a readable zip) and a
  member is read only when its header size is within the cap.

Knows no Records, keys or reasons beyond these; ``files`` and the builder decide what a row means.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from vldata.ingest.tabular import BadRow, Rows

_CHUNK = 1 << 20
_TAR_END = 1024  # a complete tar ends with two zero blocks


def csv_rows(path: Path, max_bytes: int) -> Iterator[tuple[int, list[str] | BadRow]]:
    """(line number, values or BadRow) of every non-blank row of a CSV, read by the shared capped
    reader (``vldata.ingest.tabular.Rows``: ``row_too_large``, ``row_not_utf8``, ``malformed_row``)."""
    with open(path, "rb") as f:
        for row in Rows(f, limit=max_bytes):
            yield row.line, row.values if row.problem is None else row.problem


def _skip_line(f: IO[bytes], line: bytes) -> None:
    """Consume the rest of a physical line of which ``line`` was the start."""
    while line and not line.endswith(b"\n"):
        line = f.readline(_CHUNK)


def jsonl_rows(path: Path, max_bytes: int) -> Iterator[tuple[int, object | BadRow]]:
    """(line number, parsed JSON value or BadRow) of every non-blank line of a JSON-lines file; a line
    that is not JSON is ``malformed_row``."""
    with open(path, "rb") as f:
        number = 0
        while True:
            line = f.readline(max_bytes + 1)
            if not line:
                return
            number += 1
            if len(line) > max_bytes:
                _skip_line(f, line)
                yield number, BadRow("row_too_large", f"a line over {max_bytes} bytes")
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                yield number, BadRow("row_not_utf8", "bytes that are not UTF-8")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
                json.dumps(obj, ensure_ascii=False).encode("utf-8")  # no lone surrogate escapes
            except (ValueError, RecursionError) as e:
                yield number, BadRow("malformed_row", f"not JSON: {str(e)[:200]}")
                continue
            yield number, obj


def text_lines(path: Path, max_bytes: int) -> Iterator[str]:
    """The stripped, non-empty, readable lines of a text file (others are skipped)."""
    with open(path, "rb") as f:
        while line := f.readline(max_bytes + 1):
            if len(line) > max_bytes:
                _skip_line(f, line)
                continue
            try:
                text = line.decode("utf-8").strip()
            except UnicodeDecodeError:
                continue
            if text:
                yield text


# ------------------------------------------------------------------------------------------ archives

def open_zip(path: str | Path) -> zipfile.ZipFile | None:
    """The zip, or None when it is not a readable zip (truncated, no central directory)."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError):
        return None


def open_zips(paths: list[str], note: Callable[[str], None]) -> list[zipfile.ZipFile]:
    """The zips that open; each one that does not is noted ``masks_zip_unreadable:<name>``."""
    out = []
    for path in paths:
        z = open_zip(path)
        if z is None:
            note(f"masks_zip_unreadable:{Path(path).name}")
        else:
            out.append(z)
    return out


def read_zip_member(z: zipfile.ZipFile, name: str, max_bytes: int) -> bytes | BadRow | None:
    """A member's bytes; None when absent; ``BadRow('member_too_large' | 'member_corrupt', ...)``
    when its header size is over ``max_bytes`` or it does not decode."""
    try:
        info = z.getinfo(name)
    except KeyError:
        return None
    where = f"{Path(z.filename or '').name}:{name}"
    if info.file_size > max_bytes:
        return BadRow("member_too_large", f"{where}: {info.file_size} bytes > {max_bytes}")
    try:
        with z.open(info) as m:
            return m.read(max_bytes + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError) as e:
        return BadRow("member_corrupt", f"{where}: {type(e).__name__}: {e}")
