"""LAION-style metadata rows: which collection's column set a file has, which source column feeds
each normalized field, how one row's values become those fields, and which rows the configured
filters drop.

The collections name their columns differently (``URL``/``TEXT`` vs ``url``/``text``, ``similarity``
vs ``clip_b32_similarity_score``...); ``COLUMNS`` declares every normalized field's candidate source
columns once, by preference (docs/RAW_FORMATS.md §1.1). Values are parsed leniently: an unparsable
number or a NaN becomes null, and ``LICENSE`` '?' means no licence.

It must not read files, fetch, load images or build Records (the builder in ``__init__`` does), and
does no sharding, retries or format code.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from vldata import StructuralError
from vldata.ingest import img2dataset

# normalized field -> source column names, by preference (exact name first, then any casing)
COLUMNS: dict[str, tuple[str, ...]] = {
    "url": ("URL", "url"),
    "caption": ("TEXT", "text", "caption"),
    "source_id": ("SAMPLE_ID", "uid", "id"),
    "uid": ("uid",),
    "meta_width": ("WIDTH", "width", "original_width"),
    "meta_height": ("HEIGHT", "height", "original_height"),
    "similarity": ("similarity", "clip_b32_similarity_score", "clip_similarity_vitb32"),
    "similarity_l14": ("clip_l14_similarity_score", "clip_similarity_vitl14"),
    "nsfw_tag": ("NSFW",),
    "punsafe": ("punsafe",),
    "pwatermark": ("pwatermark",),
    "aesthetic": ("aesthetic", "aesthetic_score_laion_v2"),
    "language": ("LANGUAGE", "detected_language", "language"),
    "license": ("LICENSE",),
    "source_hash": ("hash", "sha256", "md5", "image_phash"),
    "md5": ("md5",),
    "sha256": ("sha256",),
    "face_bboxes": ("face_bboxes",),
}
ColumnSet = Literal["laion", "laion_language", "laion_joined", "laion_aesthetic", "datacomp", "coyo", "custom",
                    "img2dataset"]
CHECKSUMS = {"md5": re.compile(r"^[0-9a-f]{32}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}
UID = re.compile(r"[0-9a-fA-F]{32}")


def column_set(names: list[str]) -> str:
    """Which collection's column set a file has (see docs/RAW_FORMATS.md §1.1)."""
    cols = set(names)
    if img2dataset.is_shard(names):
        return "img2dataset"
    if {"SAMPLE_ID", "URL", "TEXT"} <= cols:  # LAION-400M, laion2B-en; + LANGUAGE: 2B-multi, 1B-nolang
        return "laion_language" if "LANGUAGE" in cols else "laion"
    if {"URL", "TEXT"} <= cols and cols & {"punsafe", "pwatermark"}:
        return "laion_aesthetic" if "aesthetic" in cols else "laion_joined"
    if {"uid", "url", "text"} <= cols:  # DataComp / CommonPool / DFN pools
        return "datacomp"
    if {"id", "url", "text"} <= cols and cols & {"clip_similarity_vitb32", "image_phash"}:
        return "coyo"
    return "custom"


def map_columns(where: str, names: list[str], url_col: str | None, caption_col: str | None,
                exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """normalized field -> source column of one file; StructuralError without a URL column."""
    usable = [n for n in names if n not in exclude or n in ("url", "caption")]
    by_lower: dict[str, str] = {}
    for n in usable:
        by_lower.setdefault(n.lower(), n)
    mapping = {}
    for field_name, candidates in COLUMNS.items():
        found = next((c for c in candidates if c in usable), None) or \
            next((by_lower[c.lower()] for c in candidates if c.lower() in by_lower), None)
        if found is not None:
            mapping[field_name] = found
    for field_name, override in (("url", url_col), ("caption", caption_col)):
        if override is not None:
            if override not in names:
                raise StructuralError(f"{where}: {field_name}_col '{override}' is not a column "
                                      f"(columns: {', '.join(names)})")
            mapping[field_name] = override
    if "url" not in mapping:
        raise StructuralError(f"{where}: no URL column (columns: {', '.join(names)}); "
                              "name it with --set url_col=COLUMN")
    return mapping


# ------------------------------------------------------------------------------------------
# Row values


def text(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _id(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return text(v)


def _uid(v: Any) -> str | None:
    """A DataComp uid as 32 lower-case hex characters; anything else is null (``source_id`` keeps it)."""
    return v.lower() if isinstance(v, str) and UID.fullmatch(v) else None


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def dim(v: Any) -> int | None:
    f = _float(v)
    return int(f) if f is not None and f.is_integer() and 0 < f < 2**31 else None


def _boxes(v: Any) -> list[dict] | None:
    if not isinstance(v, list):
        return None
    out = []
    for box in v:
        if isinstance(box, list) and len(box) == 4 and all(_float(x) is not None for x in box):
            out.append(dict(zip(("x_min", "y_min", "x_max", "y_max"), map(float, box))))
    return out


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


def fields(row: dict, cols: dict[str, str]) -> dict:
    """The normalized record fields of one source row."""
    def get(name: str) -> Any:
        return row.get(cols[name]) if name in cols else None

    license_ = text(get("license"))
    return {
        "url": text(get("url")) or "", "caption": text(get("caption")), "source_id": _id(get("source_id")),
        "uid": _uid(get("uid")),
        "meta_width": dim(get("meta_width")), "meta_height": dim(get("meta_height")),
        "similarity": _float(get("similarity")), "similarity_l14": _float(get("similarity_l14")),
        "nsfw_tag": text(get("nsfw_tag")), "punsafe": _float(get("punsafe")), "pwatermark": _float(get("pwatermark")),
        "aesthetic": _float(get("aesthetic")), "language": text(get("language")),
        "license": None if license_ == "?" else license_, "source_hash": _id(get("source_hash")),
        "face_bboxes": _boxes(get("face_bboxes")),
        "raw": json.dumps({k: _json_safe(v) for k, v in row.items()}, ensure_ascii=False, default=str),
    }


def checksums(row: dict, cols: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """({"md5"|"sha256": lower-case hex} of the row's well-formed checksum columns, the names of the
    malformed ones)."""
    good, malformed = {}, []
    for name, pattern in CHECKSUMS.items():
        value = text(row.get(cols[name])) if name in cols else None
        if value and pattern.match(value.lower()):
            good[name] = value.lower()
        elif value:
            malformed.append(name)
    return good, malformed


def excluded(c: Any, f: dict, width: int | None, height: int | None) -> tuple[str, str] | None:
    """(setting, message) of the first filter of config ``c`` that drops a row with fields ``f`` and
    that size; unknown values pass."""
    checks = (
        ("languages", c.languages is not None and f["language"] is not None and f["language"] not in c.languages,
         f"language {f['language']} not in {c.languages}"),
        ("nsfw_tags", c.nsfw_tags is not None and f["nsfw_tag"] is not None and f["nsfw_tag"] not in c.nsfw_tags,
         f"NSFW tag {f['nsfw_tag']} not in {c.nsfw_tags}"),
        ("min_similarity", _below(f["similarity"], c.min_similarity), f"similarity {f['similarity']} < {c.min_similarity}"),
        ("max_punsafe", _below(c.max_punsafe, f["punsafe"]), f"punsafe {f['punsafe']} > {c.max_punsafe}"),
        ("max_pwatermark", _below(c.max_pwatermark, f["pwatermark"]), f"pwatermark {f['pwatermark']} > {c.max_pwatermark}"),
        ("min_image_size", width is not None and height is not None and _below(min(width, height), c.min_image_size),
         f"{width}x{height} is smaller than {c.min_image_size}"),
        ("max_aspect_ratio", bool(width and height) and _below(c.max_aspect_ratio, max(width / height, height / width)),
         f"{width}x{height} has an aspect ratio above {c.max_aspect_ratio}"),
    )
    return next(((name, message) for name, drop, message in checks if drop), None)


def _below(value: float | None, bound: float | None) -> bool:
    return value is not None and bound is not None and value < bound
