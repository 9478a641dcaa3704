"""A text summary of a built dataset, and the samples a contact sheet shows.

``summary`` reads the manifest, the build's stats and the shards' non-image columns and prints
splits, shards, sizes, accounting, per-field statistics (counts, top values) and text-length and
image-size histograms as text. ``read_samples`` picks a deterministic, evenly spaced set of samples
(key, text, primary image bytes) from the parquet folder when there is one, else from the webdataset
tars; ``contact_sheet`` turns them into pictures. This module only reads.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .output import read_manifest
from .schema import IMAGE_EXTENSIONS
from .validate import format_folders

_PRIMARY_EXTENSIONS = frozenset(IMAGE_EXTENSIONS.values())


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
    folders = format_folders(path)
    return next((f for f in folders if read_manifest(f)["format"] == "parquet"), folders[0] if folders else None)


def summary(path: str | Path, max_values: int = 5) -> str:
    path = Path(path)
    lines = []
    folders = format_folders(path)
    if not folders:
        return f"{path}: not a vldata build"
    for folder in folders:
        m = read_manifest(folder)
        lines.append(f"{folder}  [{m['format']}]  builder {m['builder']} {m['version']}")
        for split, info in m["splits"].items():
            lines.append(f"  {split}: {info['num_samples']} samples in {len(info['shards'])} shards, "
                         f"{human_size(info['num_bytes'])}")
    stats_path = (path if len(folders) > 1 or folders[0] != path else path.parent) / "build" / "stats.json"
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        lines.append("accounting (input_rows = written + failed + filtered + duplicates):")
        for split, s in stats["splits"].items():
            lines.append(f"  {split}: {s['input_rows']} = {s['written']} + {s['failed']} + {s['filtered']} + {s['duplicates']}")
            for kind, reasons in s["reasons"].items():
                for r, n in reasons.items():
                    lines.append(f"    {kind}: {r} {n}")
            for r, n in s["notes"].items():
                lines.append(f"    note: {r} {n}")
    folder = _preferred_folder(path)
    manifest = read_manifest(folder)
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
            table = pq.read_table(file, columns=["text", info_column])
            lengths += [v for v in pc.utf8_length(table.column("text")).to_pylist() if v is not None]
            info = table.column(info_column)
            widths += [v for v in pc.struct_field(info, "width").to_pylist() if v is not None]
            heights += [v for v in pc.struct_field(info, "height").to_pylist() if v is not None]
        return lengths, widths, heights
    from PIL import Image

    for _split, _key, members in _tar_samples(folder, manifest):
        lengths.append(len(members.get("txt", b"").decode("utf-8", "replace")))
        image = _primary_member(members)
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
    schema = pq.read_schema(files[0])
    out = []
    for field in schema:
        if pa.types.is_struct(field.type) and {"bytes", "path"} <= {f.name for f in field.type}:
            continue  # image column
        if field.name == "raw":
            continue
        nulls, total, counter, lengths = 0, 0, Counter(), []
        for f in files:
            col = pq.read_table(f, columns=[field.name]).column(field.name)
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
    manifest = read_manifest(folder)
    shards = [(split, s) for split, info in manifest["splits"].items() for s in info["shards"]]
    wanted = pick(sum(s["num_samples"] for _, s in shards), n)
    if manifest["format"] == "parquet":
        return manifest, _parquet_samples(folder, manifest, shards, wanted)
    chosen = set(wanted)
    tar_samples = _tar_samples(folder, manifest, limit=max(chosen, default=-1) + 1)
    samples = [Sample(key, split, members.get("txt", b"").decode("utf-8", "replace"), _primary_member(members))
               for i, (split, key, members) in enumerate(tar_samples) if i in chosen]
    return manifest, samples


def _parquet_samples(folder: Path, manifest: dict, shards: list[tuple[str, dict]], wanted: list[int]) -> list[Sample]:
    image_column = manifest["primary_image"]
    samples: list[Sample] = []
    start = 0
    for split, shard in shards:
        local = [i - start for i in wanted if start <= i < start + shard["num_samples"]]
        start += shard["num_samples"]
        if not local:
            continue
        pf = pq.ParquetFile(folder / shard["path"])
        offset = 0
        for group in range(pf.num_row_groups):
            rows = pf.metadata.row_group(group).num_rows
            take = [i - offset for i in local if offset <= i < offset + rows]
            offset += rows
            if not take:
                continue
            table = pf.read_row_group(group, columns=["key", "text", image_column]).take(take)
            for row in table.to_pylist():
                image = row[image_column]
                samples.append(Sample(row["key"], split, row["text"] or "", image["bytes"] if image else None))
    return samples


def _tar_samples(folder: Path, manifest: dict, limit: int | None = None) -> Iterator[tuple[str, str, dict[str, bytes]]]:
    """(split, key, {suffix: bytes}) of the samples of every tar, in manifest order; members of one
    sample are contiguous, so a sample is complete when the next key starts."""
    count = 0
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            key, members = None, {}
            with tarfile.open(folder / shard["path"], "r") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = member.name.rsplit("/", 1)[-1]
                    k, _, suffix = base.partition(".")
                    if k != key:
                        if key is not None:
                            yield split, key, members
                            count += 1
                            if limit is not None and count >= limit:
                                return
                        key, members = k, {}
                    members[suffix] = tar.extractfile(member).read()
            if key is not None:
                yield split, key, members
                count += 1
                if limit is not None and count >= limit:
                    return


def _primary_member(members: dict[str, bytes]) -> bytes | None:
    return next((data for suffix, data in members.items() if suffix in _PRIMARY_EXTENSIONS), None)
