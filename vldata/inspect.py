"""A text summary of a built dataset: splits, shards, sizes, accounting and per-field statistics.

Reads the manifest, the build's stats and (for field statistics) the parquet shards' columns except
images. Pictures (a contact sheet) come with the cards work; this module only summarises.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .output import read_manifest
from .validate import format_folders


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


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
                         f"{_human(info['num_bytes'])}")
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
    parquet = next((f for f in folders if read_manifest(f)["format"] == "parquet"), None)
    if parquet is not None:
        lines.append("fields (parquet):")
        lines += _field_stats(parquet, read_manifest(parquet), max_values)
    return "\n".join(lines)


def _field_stats(folder: Path, manifest: dict, max_values: int) -> list[str]:
    files = [folder / s["path"] for info in manifest["splits"].values() for s in info["shards"]]
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
