"""WIT's TSV files: the 17 columns, reading rows by uncompressed byte offset, and how a row's values
become typed record fields and a caption.

The 17 columns (docs/RAW_FORMATS.md §2.2), the boolean and integer ones and the caption order are
declared here once; the Record, the sample generator and the tests use these tuples. Strings are
kept verbatim, ``true``/``false`` and blank-or-digits are parsed strictly: a row that does not parse
raises ``RowError``.

It must not fetch, load images, build Records or decide partitions (the builder in ``__init__``
does), and does no sharding, retries or format code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import IO, Literal

from vldata.ingest.tabular import Rows, read_header

COLUMNS = (
    "language", "page_url", "image_url", "page_title", "section_title", "hierarchical_section_title",
    "caption_reference_description", "caption_attribution_description", "caption_alt_text_description",
    "mime_type", "original_height", "original_width", "is_main_image", "attribution_passes_lang_id",
    "page_changed_recently", "context_page_description", "context_section_description",
)
BOOLEAN_COLUMNS = ("is_main_image", "attribution_passes_lang_id", "page_changed_recently")
INTEGER_COLUMNS = ("original_height", "original_width")
# text = the first non-blank of these; the attribution has its language label removed first
CAPTION_ORDER = ("caption_reference_description", "caption_alt_text_description",
                 "caption_attribution_description", "page_title")
CaptionSource = Literal[(*CAPTION_ORDER, "none")]  # type: ignore[valid-type]

# Commons prefixes attribution texts with the language's name: "English: ", "Galego: ", "Русский: ",
# "中文（简体）‎: ". At most three words, starting with a letter, before a colon and a space.
_DIGITS = re.compile(r"[0-9]{1,10}")
_LANGUAGE_LABEL = re.compile(r"^[^\W\d_][^\s:]*(?:[ \-][^\s:]+){0,2}\u200e?:\s+")


def strip_language_label(text: str) -> str:
    """``"English: Lesser bulldog bat"`` -> ``"Lesser bulldog bat"`` (unchanged without a label)."""
    stripped = _LANGUAGE_LABEL.sub("", text, count=1)
    return stripped if stripped.strip() else text


def choose_caption(row: dict[str, str]) -> tuple[str, str]:
    """(text, caption_source) for a row, following ``CAPTION_ORDER``."""
    for column in CAPTION_ORDER:
        value = row[column].strip()
        if column == "caption_attribution_description":
            value = strip_language_label(value).strip()
        if value:
            return value, column
    return "", "none"


class RowError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def fields(values: list[str], header: list[str]) -> dict:
    """The typed record fields of one TSV row; RowError when it does not parse."""
    if len(values) != len(header):
        raise RowError("malformed_row", f"{len(values)} fields, the header has {len(header)}")
    row = dict(zip(header, values))
    out: dict = {c: row[c] for c in COLUMNS}
    for c in BOOLEAN_COLUMNS:
        if row[c] not in ("true", "false"):
            raise RowError("malformed_value", f"{c}: expected true or false, got {row[c][:40]!r}")
        out[c] = row[c] == "true"
    for c in INTEGER_COLUMNS:
        value = row[c].strip()
        if value and (not _DIGITS.fullmatch(value) or int(value) >= 2**31):
            raise RowError("malformed_value", f"{c}: expected a non-negative integer, got {row[c][:40]!r}")
        out[c] = int(value) if value else None
    extra = {k: v for k, v in row.items() if k not in COLUMNS}
    out["extra_columns"] = json.dumps(extra, ensure_ascii=False) if extra else None
    out["text"], out["caption_source"] = choose_caption(row)
    return out


def rows(f: IO[bytes], offset: int | None = None) -> Rows:
    """The rows of a TSV from ``offset`` (the current position when None): ``Row``s with the
    uncompressed byte offset where each starts and its values, or its problem (``row_too_large``,
    ``row_not_utf8``: text is decoded strictly, ``malformed_row``); ``damage`` once the stream broke."""
    return Rows(f, "\t", offset=offset)


def header(path: Path) -> list[str]:
    """The header of a TSV; StructuralError when it lacks one of the 17 columns."""
    return read_header(path, COLUMNS, delimiter="\t")
