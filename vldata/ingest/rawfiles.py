"""Finding a dataset's raw files: every file under RAW whose name matches a pattern, or RAW itself
when it is a file, sorted by path so that partitions are the same on every machine. Hidden files and
folders (a leading dot: editor and sync leftovers) are skipped, and so is anything that is not a
regular file (a folder named like a data file, a FIFO or device that would never end). It must not open or parse the files.
"""

from __future__ import annotations

from pathlib import Path


def raw_files(raw: Path, pattern: str) -> tuple[Path, list[Path]]:
    """(the folder paths are relative to, the matching files in path order)."""
    raw = Path(raw)
    if raw.is_file():
        return raw.parent, [raw]
    files = sorted(p for p in raw.rglob(pattern)
                   if not any(s.startswith(".") for s in p.relative_to(raw).parts) and p.is_file())
    return raw, files
