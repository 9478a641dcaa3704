"""A text summary of a built dataset, and the samples a contact sheet shows.

``summary`` reads the manifest, the build's stats and the shards' non-image columns and prints
splits, shards, sizes, accounting, per-field statistics (counts, top values) and text-length and
image-size histograms as text. ``read_samples`` picks a deterministic, evenly spaced set of samples
(key, text, primary image bytes) from the parquet folder when there is one, else from the webdataset
tars, through ``read.source`` like any loader; ``contact_sheet`` turns them into pictures. This
module only reads and never parses a shard itself beyond parquet column statistics.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vldata.errors import ShardError, one_line
from vldata.layout import escapes, format_folders, read_checked_manifest, stats_file
from vldata.read.source import open as open_source


@dataclass(frozen=True)
class Sample:
    """One sample as a contact sheet shows it."""

    key: str
    split: str
    text: str
    image: bytes | None


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _preferred_folder(path: Path) -> Path | None:
    """The parquet folder of a build when it has one, else its webdataset folder."""
    folders = format_folders(path)  # parquet first
    return Path(folders[0]) if folders else None


def summary(path: str | Path, max_values: int = 5) -> str:
    path = Path(path)
    lines = []
    folders = [Path(f) for f in format_folders(path)]
    if not folders:
        return f"{path}: not a vldata build"
    for folder in folders:
        m = read_checked_manifest(folder)
        lines.append(f"{folder}  [{m['format']}]  builder {m['builder']} {m['version']}")
        for split, info in m["splits"].items():
            lines.append(f"  {split}: {info['num_samples']} samples in {len(info['shards'])} shards, "
                         f"{human_size(info['num_bytes'])}")
    for name, entry in (read_checked_manifest(folders[0]).get("subsets") or {}).items():
        try:  # a subset entry is untrusted like the rest of the manifest: shown, never relied on
            chosen = ", ".join(f"{split} {s['selected']} of {s['input']}" for split, s in entry["splits"].items())
            lines.append(f"subset {name}: {entry['rule']}{' (online)' if entry.get('online') else ''}"
                         f"{' from ' + str(entry['from']) if entry.get('from') else ''}: {chosen}")
        except (TypeError, KeyError, AttributeError):
            lines.append(f"subset {name}: unreadable entry")
    stats_path = Path(stats_file(path))
    stats = _stats(stats_path)
    if stats is not None:
        lines.append("accounting (input_rows = written + failed + filtered + duplicates):")
        try:
            for split, s in stats["splits"].items():
                lines.append(f"  {split}: {s['input_rows']} = {s['written']} + {s['failed']} + {s['filtered']} + "
                             f"{s['duplicates']}")
                for kind, reasons in s["reasons"].items():
                    for r, n in reasons.items():
                        lines.append(f"    {kind}: {r} {n}")
                for r, n in s["notes"].items():
                    lines.append(f"    note: {r} {n}")
        except (TypeError, KeyError, AttributeError) as e:
            lines.append(f"  {stats_path}: unreadable ({one_line(e)})")
    folder = _preferred_folder(path)
    manifest = read_checked_manifest(folder)
    if manifest["format"] == "parquet":
        lines.append("fields (parquet):")
        lines += _field_stats(folder, manifest, max_values)
    lengths, widths, heights = _sizes(folder, manifest)
    lines += histogram(lengths, f"text length (characters of `text`, {manifest['format']})")
    lines += histogram(widths, f"image width (px, primary image `{manifest['primary_image']}`)")
    lines += histogram(heights, f"image height (px, primary image `{manifest['primary_image']}`)")
    return "\n".join(lines)


def histogram(values: list[int], title: str, bins: int = 8, width: int = 40) -> list[str]:
    """A text histogram: one line per bin of equal integer width, ``#`` bars scaled to ``width``."""
    if not values:
        return [f"{title}: no values"]
    lo, hi = min(values), max(values)
    step = max(1, math.ceil((hi - lo + 1) / bins))
    counts = Counter((v - lo) // step for v in values)
    n_bins = (hi - lo) // step + 1
    top = max(counts.values())
    lines = [f"{title}: n={len(values)} min={lo} mean={sum(values) / len(values):.1f} max={hi}"]
    for b in range(n_bins):
        start, end = lo + b * step, min(hi, lo + (b + 1) * step - 1)
        bar = "#" * max(1 if counts[b] else 0, round(width * counts[b] / top))
        lines.append(f"  {start:>8}-{end:<8} |{bar:<{width}}| {counts[b]}")
    return lines


def _stats(path: Path) -> dict | None:
    """build/stats.json when it is there and readable (``validate`` names a broken one)."""
    try:
        stats = json.loads(path.read_text())
        return stats if isinstance(stats, dict) and isinstance(stats.get("splits"), dict) else None
    except (OSError, ValueError):
        return None


def _read_parquet(file: Path, columns: list[str] | None = None) -> pa.Table | pa.Schema:
    """A shard's ``columns`` (its schema when None), or a ShardError naming it."""
    problem = escapes(file.parent.parent if file.parent.name == "data" else file.parent, file)
    if problem:
        raise ShardError(problem)
    try:
        if columns is None:
            return pq.read_schema(file)
        table = pq.read_table(file, columns=columns)
        table.validate(full=True)  # strings that are not UTF-8 (bytes changed in a page) are named here
        return table
    except (OSError, ValueError, KeyError) as e:  # pyarrow: ArrowInvalid is a ValueError
        raise ShardError(f"{file}: unreadable parquet ({one_line(e)})") from None


def _parquet_files(folder: Path, manifest: dict) -> list[Path]:
    return [folder / s["path"] for info in manifest["splits"].values() for s in info["shards"]]


def _sizes(folder: Path, manifest: dict) -> tuple[list[int], list[int], list[int]]:
    """Text lengths and primary-image widths and heights of every sample of a folder."""
    lengths: list[int] = []
    widths: list[int] = []
    heights: list[int] = []
    if manifest["format"] == "parquet":
        info_column = f"{manifest['primary_image']}_info"
        for file in _parquet_files(folder, manifest):
            table = _read_parquet(file, columns=["text", info_column])
            lengths += [v for v in pc.utf8_length(table.column("text")).to_pylist() if v is not None]
            info = table.column(info_column)
            widths += [v for v in pc.struct_field(info, "width").to_pylist() if v is not None]
            heights += [v for v in pc.struct_field(info, "height").to_pylist() if v is not None]
        return lengths, widths, heights
    from PIL import Image

    for _split, sample in _samples(folder, manifest):
        lengths.append(len(sample.get("text") or ""))
        image = sample.get("image")
        if image is not None:
            try:
                w, h = Image.open(io.BytesIO(image)).size
            except Exception:  # an undecodable member has no size; validate names it
                continue
            widths.append(w)
            heights.append(h)
    return lengths, widths, heights


def _field_stats(folder: Path, manifest: dict, max_values: int) -> list[str]:
    files = _parquet_files(folder, manifest)
    if not files:
        return []
    schema = _read_parquet(files[0])
    out = []
    for field in schema:
        if pa.types.is_struct(field.type) and {"bytes", "path"} <= {f.name for f in field.type}:
            continue  # image column
        if field.name == "raw":
            continue
        nulls, total, counter, lengths = 0, 0, Counter(), []
        for f in files:
            col = _read_parquet(f, columns=[field.name]).column(field.name)
            total += len(col)
            nulls += col.null_count
            if pa.types.is_string(col.type):
                counter.update(v for v in col.to_pylist() if v is not None)
                lengths += [len(v) for v in col.to_pylist() if v is not None]
            elif pa.types.is_list(col.type):
                lens = pc.list_value_length(col).to_pylist()
                lengths += [v for v in lens if v is not None]
            elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
                counter.update(v for v in col.to_pylist() if v is not None)
        desc = f"  {field.name}: {field.type}, {nulls}/{total} null"
        if counter and len(counter) == total - nulls and total > 5:
            desc += "; all distinct"
        elif counter and len(counter) <= 50:
            desc += "; " + ", ".join(f"{k}={v}" for k, v in counter.most_common(max_values))
        elif counter:
            desc += f"; {len(counter)} distinct"
        if lengths:
            desc += f"; length min {min(lengths)} mean {sum(lengths) / len(lengths):.1f} max {max(lengths)}"
        out.append(desc)
    return out


# --------------------------------------------------------------------------------------------
# Samples for pictures


def pick(total: int, n: int) -> list[int]:
    """``n`` evenly spaced indices of ``range(total)`` (all of them when ``n >= total``)."""
    if n >= total:
        return list(range(total))
    return [i * total // n for i in range(n)]


def read_samples(path: str | Path, n: int = 16) -> tuple[dict, list[Sample]]:
    """The manifest of the folder read (parquet preferred) and ``n`` evenly spaced samples of it,
    in manifest order (splits, then shards, then rows)."""
    folder = _preferred_folder(Path(path))
    if folder is None:
        raise FileNotFoundError(f"{path}: not a vldata build")
    manifest = read_checked_manifest(folder)
    total = sum(info["num_samples"] for info in manifest["splits"].values())
    wanted = pick(total, n)
    chosen = [(split, s) for i, (split, s) in enumerate(_samples(folder, manifest, wanted))]
    return manifest, [Sample(s["key"], split, s.get("text") or "", s.get("image")) for split, s in chosen]


def _samples(folder: Path, manifest: dict, wanted: list[int] | None = None) -> Iterator[tuple[str, dict]]:
    """(split, sample) of the global indices ``wanted`` (all when None), counted over the splits in
    manifest order, read through ``read.source``."""
    start = 0
    for split, info in manifest["splits"].items():
        size = info["num_samples"]
        local = range(size) if wanted is None else [i - start for i in wanted if start <= i < start + size]
        start += size
        if not local:
            continue
        source = open_source(folder, split=split)
        for i in local:
            yield split, source[i]
