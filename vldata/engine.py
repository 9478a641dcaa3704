"""The build engine: partitions -> parts (map, parallel, resumable) -> shards (reduce, ordered).

Map: each partition is processed independently (in this process or a process pool) into a *part*:
an Arrow stream of its records in input order plus a ``done`` file with its outcome counts and
failures. A part is committed by writing its ``done`` file last, so after a crash ``--resume``
redoes only partitions without one. Reduce: parts are read back in partition order, duplicates are
dropped, and rows go to the shard writers; shard boundaries depend only on that order, which is why
shards are byte-identical whatever the number of workers. The reduce is redone whole on resume (it
is a sequential copy), and the manifest is written last. This module knows no dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import schema as sch
from .builder import Builder, Failed, Filtered, Partition, RowContext, StructuralError
from .shards import ParquetShards, TarShards

FORMATS = ("parquet", "webdataset")
_META_COLUMNS = [("__json__", pa.binary()), ("__nbytes__", pa.int64())]
_BATCH_ROWS = 64
_FAILURE_SCHEMA = pa.schema([("split", pa.string()), ("key", pa.string()), ("outcome", pa.string()),
                             ("reason", pa.string()), ("message", pa.string()), ("ref", pa.string())])


@dataclass
class SplitReport:
    input_rows: int = 0
    written: int = 0
    failed: int = 0
    filtered: int = 0
    duplicates: int = 0
    reasons: dict[str, dict[str, int]] = field(default_factory=lambda: {"failed": {}, "filtered": {}, "duplicates": {}})
    notes: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, reason: str, n: int = 1) -> None:
        setattr(self, kind, getattr(self, kind) + n)
        self.reasons[kind][reason] = self.reasons[kind].get(reason, 0) + n

    @property
    def balanced(self) -> bool:
        return self.input_rows == self.written + self.failed + self.filtered + self.duplicates

    def as_dict(self) -> dict:
        return {"input_rows": self.input_rows, "written": self.written, "failed": self.failed,
                "filtered": self.filtered, "duplicates": self.duplicates,
                "reasons": {k: dict(sorted(v.items())) for k, v in self.reasons.items()},
                "notes": dict(sorted(self.notes.items()))}


@dataclass
class BuildReport:
    """What a build did, per split; ``str()`` is the human summary the CLI prints."""

    builder: str
    out: Path
    splits: dict[str, SplitReport]
    formats: tuple[str, ...]
    shards: dict[str, int] = field(default_factory=dict)  # format -> number of shards

    @property
    def totals(self) -> SplitReport:
        t = SplitReport()
        for s in self.splits.values():
            for k in ("input_rows", "written"):
                setattr(t, k, getattr(t, k) + getattr(s, k))
            for kind, reasons in s.reasons.items():
                for r, n in reasons.items():
                    t.add(kind, r, n)
            for r, n in s.notes.items():
                t.notes[r] = t.notes.get(r, 0) + n
        return t

    def __str__(self) -> str:
        lines = [f"{self.builder} -> {self.out}  ({', '.join(f'{f}: {n} shards' for f, n in self.shards.items())})"]
        for name, s in self.splits.items():
            lines.append(f"  {name}: input_rows={s.input_rows} = written {s.written} + failed {s.failed}"
                         f" + filtered {s.filtered} + duplicates {s.duplicates}"
                         f"  [{'exact' if s.balanced else 'MISMATCH'}]")
            for kind, reasons in s.reasons.items():
                for r, n in sorted(reasons.items()):
                    lines.append(f"    {kind:<10} {r:<32} {n}")
            for r, n in sorted(s.notes.items()):
                lines.append(f"    {'note':<10} {r:<32} {n}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Map


def _part_schema(builder: Builder) -> pa.Schema:
    base = sch.arrow_schema(builder.record_type())  # cached per Record type
    return pa.schema(list(base) + [pa.field(n, t) for n, t in _META_COLUMNS], metadata=base.metadata)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: an orphaned worker may still write
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _row_of(record: sch.Record) -> dict:
    row = sch.to_row(record)
    js = sch.to_json_bytes(record)
    row["__json__"] = js
    row["__nbytes__"] = (len(js) + len(record.text.encode()) + sum(len(b) for _, b in sch.image_members(record))
                         + sum(len((getattr(record, f) or "").encode()) for f in type(record).text_members.values()))
    return row


def build_partition(builder: Builder, part: Partition, parts_dir: Path) -> dict:
    """Process one partition into ``parts_dir``; returns its ``done`` document."""
    schema = _part_schema(builder)
    record_type = builder.record_type()
    ctx = RowContext(builder.config)
    report = SplitReport(input_rows=part.input_rows)
    failures: list[dict] = []
    rows: list[dict] = []
    tmp = parts_dir / f"{part.index:05d}.arrow.{os.getpid()}.tmp"
    seen = 0
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for outcome in islice(builder.records(part, ctx), part.input_rows):
            seen += 1
            if isinstance(outcome, (Failed, Filtered)):
                kind = "failed" if isinstance(outcome, Failed) else "filtered"
                report.add(kind, outcome.reason)
                failures.append({"key": outcome.key, "outcome": kind, "reason": outcome.reason,
                                 "message": outcome.message, "ref": outcome.ref})
                continue
            if type(outcome) is not record_type:
                raise TypeError(f"{builder.name}.records yielded {type(outcome).__name__}, expected {record_type.__name__}")
            report.written += 1
            rows.append(_row_of(outcome))
            if len(rows) >= _BATCH_ROWS:
                writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
                rows = []
        if rows:
            writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
    if seen != part.input_rows:
        raise RuntimeError(f"{builder.name}: partition {part.index} announced {part.input_rows} input rows "
                           f"but records() yielded {seen} outcomes")
    os.replace(tmp, parts_dir / f"{part.index:05d}.arrow")
    report.notes = ctx.notes
    done = {"index": part.index, "split": part.split, "report": report.as_dict(), "failures": failures}
    _atomic_write_bytes(parts_dir / f"{part.index:05d}.done.json", json.dumps(done).encode())
    return done


def _maybe_crash(point: str, count: int) -> None:
    """Crash injection for the resume tests: VLDATA_CRASH_AT="partition:N" or "shard:N"
    SIGKILLs this process right after the N-th partition / shard row batch is committed."""
    spec = os.environ.get("VLDATA_CRASH_AT")
    if spec and spec == f"{point}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    enabled = sys.stderr.isatty() and tqdm is not None
    if not enabled:
        class _Null:
            def update(self, n=1): ...
            def close(self): ...
        return _Null()
    return tqdm(total=total, desc=desc, unit="row", leave=False)


def run_map(builder: Builder, partitions: list[Partition], parts_dir: Path, workers: int,
            executor: str = "local") -> None:
    """Build every partition without a committed part, on ``executor`` ("local" or "ray")."""
    from .executors import get_executor

    todo = [p for p in partitions if not (parts_dir / f"{p.index:05d}.done.json").exists()]
    bar = _progress(sum(p.input_rows for p in todo), f"build {builder.name}")
    finished = 0
    try:
        for p in get_executor(executor)(builder, todo, parts_dir, workers):
            bar.update(p.input_rows)
            finished += 1
            _maybe_crash("partition", finished)
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------
# Reduce


def _read_part(path: Path) -> Iterable[pa.RecordBatch]:
    with pa.OSFile(str(path), "rb") as source:
        reader = pa.ipc.open_stream(source)
        yield from reader


def _wds_sample(row: dict, image_suffixes: list[tuple[str, str]], text_members: dict[str, str]) -> dict:
    """Tar members of one part row (``image_suffixes``: (column, member-name stem) pairs)."""
    sample = {"__key__": row["key"]}
    for column, stem in image_suffixes:
        value, info = row[column], row[f"{column}_info"]
        if value is None:
            continue
        if isinstance(value, list):
            for i, (img, inf) in enumerate(zip(value, info)):
                sample[f"{stem}_{i}.{sch.IMAGE_EXTENSIONS[inf['format']]}"] = img["bytes"]
        else:
            ext = sch.IMAGE_EXTENSIONS[info["format"]]
            sample[f"{stem}.{ext}" if stem else ext] = value["bytes"]
    sample["txt"] = row["text"].encode("utf-8")
    for suffix, field_name in text_members.items():
        if row[field_name] is not None:
            sample[f"{suffix}.txt"] = row[field_name].encode("utf-8")
    sample["json"] = row["__json__"]
    return sample


def _image_columns(record_type: type[sch.Record]) -> list[tuple[str, str]]:
    out = []
    for n in sch.fields(record_type):
        if n.kind == "image" or (n.kind == "list" and n.item.kind == "image"):
            out.append((n.name, "" if n.name == record_type.primary_image else n.name))
    return out


def _column_values(batch: pa.RecordBatch, path: str) -> list:
    """Values of a possibly nested column (``"image_info.sha256"``) of a batch."""
    import pyarrow.compute as pc

    head, *rest = path.split(".")
    col = batch.column(head)
    for name in rest:
        col = pc.struct_field(col, name)
    return col.to_pylist()


class _Dedup:
    """Drops rows whose key, or any value of a builder's dedup columns, was already written.
    The first occurrence in input order wins, so the outcome does not depend on the workers."""

    def __init__(self, dedup_on: dict[str, str]):
        self.columns = {"key": "key", **dedup_on}  # reason suffix -> column path
        self.seen: dict[str, set] = {name: set() for name in self.columns}

    def keep(self, batch: pa.RecordBatch, split: str, partition: int, report: SplitReport,
             failures: list[dict]) -> list[int]:
        values = {name: _column_values(batch, path) for name, path in self.columns.items()}
        keys = values["key"]
        keep = []
        for i in range(batch.num_rows):
            clash = next((n for n in self.columns if values[n][i] is not None and values[n][i] in self.seen[n]), None)
            if clash is None:
                for n in self.columns:
                    if values[n][i] is not None:
                        self.seen[n].add(values[n][i])
                keep.append(i)
                continue
            report.written -= 1
            report.add("duplicates", f"duplicate_{clash}")
            failures.append({"split": split, "key": keys[i], "outcome": "duplicates", "reason": f"duplicate_{clash}",
                             "message": f"an earlier input row has the same {self.columns[clash]}: {str(values[clash][i])[:200]}",
                             "ref": f"partition {partition}"})
        return keep


class _ValueWriter:
    """The values of a builder's ``balance_fields`` for every written row of a split, in row order
    (``values/{split}.parquet``), and their counts: what balanced sampling needs, without a scan."""

    def __init__(self, staging: Path, split: str, schema: pa.Schema, fields: tuple[str, ...]):
        for f in fields:
            if f not in schema.names or pa.types.is_nested(schema.field(f).type):
                raise TypeError(f"balance field {f!r} must be a top-level scalar column of the record")
        staging.mkdir(parents=True, exist_ok=True)
        self.path, self.split, self.fields = staging / f"{split}.parquet", split, list(fields)
        self.schema = pa.schema([schema.field(f) for f in fields])
        self.writer = pq.ParquetWriter(self.path, self.schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_table(pa.Table.from_batches([batch.select(self.fields)]).cast(self.schema))

    def finish(self) -> dict:
        import pyarrow.compute as pc

        self.writer.close()
        # rewritten in fixed row groups: the file must not depend on how rows were batched
        table = pq.read_table(self.path).combine_chunks()
        pq.write_table(table, self.path, row_group_size=1 << 20)
        counts = {}
        for f in self.fields:
            vc = pc.value_counts(table.column(f)).to_pylist()
            counts[f] = sorted(([d["values"], d["counts"]] for d in vc), key=lambda x: (-x[1], str(x[0])))
        return {"staged": str(self.path), "path": f"values/{self.split}.parquet", "fields": self.fields,
                "counts": counts}


def run_reduce(builder: Builder, partitions: list[Partition], parts_dir: Path, out: Path,
               formats: tuple[str, ...], shard_bytes: dict[str, int]) -> tuple[dict, dict[str, SplitReport]]:
    record_type = builder.record_type()
    schema = sch.arrow_schema(record_type)
    staging = out / "build" / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    image_cols = _image_columns(record_type)
    sch.check_text_members(record_type)
    not_images = {"__key__", "txt", "json", *(f"{sfx}.txt" for sfx in record_type.text_members)}
    reports: dict[str, SplitReport] = {}
    shards: dict[str, dict[str, list]] = {f: {} for f in formats}
    suffixes: set[str] = set()
    failures: list[dict] = []
    dedup = _Dedup(builder.dedup_on())
    batches_done = 0
    bar = _progress(sum(p.input_rows for p in partitions), f"write {'+'.join(formats)}")
    splits = list(dict.fromkeys(p.split for p in partitions))
    values: dict[str, dict] = {}
    for split in splits:
        report = reports.setdefault(split, SplitReport())
        vw = _ValueWriter(staging / "values", split, schema, builder.balance_fields) if builder.balance_fields else None
        pw = ParquetShards(staging / "parquet", split, schema, shard_bytes["parquet"]) if "parquet" in formats else None
        tw = TarShards(staging / "webdataset", split, shard_bytes["webdataset"]) if "webdataset" in formats else None
        for p in (p for p in partitions if p.split == split):
            done = json.loads((parts_dir / f"{p.index:05d}.done.json").read_text())
            _merge(report, done["report"])
            for r, n in p.notes.items():
                report.notes[r] = report.notes.get(r, 0) + n
            failures.extend({"split": split, **f} for f in done["failures"])
            for batch in _read_part(parts_dir / f"{p.index:05d}.arrow"):
                keep = dedup.keep(batch, split, p.index, report, failures)
                if len(keep) != batch.num_rows:
                    batch = batch.take(pa.array(keep, type=pa.int64()))
                nbytes = batch.column("__nbytes__").to_pylist()
                if pw is not None:
                    pw.write(batch.select(schema.names), nbytes)
                if vw is not None:
                    vw.write(batch)
                if tw is not None:
                    for row in batch.to_pylist():
                        sample = _wds_sample(row, image_cols, record_type.text_members)
                        suffixes.update(k for k in sample if k not in not_images)
                        tw.write(sample)
                batches_done += 1
                bar.update(batch.num_rows)
                _maybe_crash("batch", batches_done)
        if pw is not None:
            shards["parquet"][split] = pw.finish(out / "parquet")
        if tw is not None:
            shards["webdataset"][split] = tw.finish(out / "webdataset")
        if vw is not None:
            values[split] = vw.finish()
    bar.close()
    _write_failures(out / "build" / "failures.parquet", failures)
    return {"shards": shards, "image_suffixes": sorted(suffixes, key=lambda s: ("." in s, s)),
            "values": values}, reports


def _merge(report: SplitReport, doc: dict) -> None:
    report.input_rows += doc["input_rows"]
    report.written += doc["written"]
    for kind, reasons in doc["reasons"].items():
        for r, n in reasons.items():
            report.add(kind, r, n)
    for r, n in doc["notes"].items():
        report.notes[r] = report.notes.get(r, 0) + n


def _write_failures(path: Path, failures: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(failures, schema=_FAILURE_SCHEMA), tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Orchestration


def plan_document(builder: Builder, partitions: list[Partition], limit: int | None,
                  formats: tuple[str, ...]) -> dict:
    doc = {"builder": builder.name, "version": builder.version, "formats": list(formats),
           "config": builder.config.model_dump(mode="json"), "limit": limit,
           "partitions": [[p.index, p.split, p.input_rows] for p in partitions]}
    doc["fingerprint"] = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    return doc


def apply_limit(partitions: list[Partition], limit: int | None) -> list[Partition]:
    """The first ``limit`` input rows, in partition order (the last partition may be cut)."""
    if limit is None:
        return partitions
    out, left = [], limit
    for p in partitions:
        if left <= 0:
            break
        out.append(p if p.input_rows <= left else replace(p, input_rows=left))
        left -= out[-1].input_rows
    return out


def run_build(builder: Builder, raw: Path, out: Path, formats: tuple[str, ...] = FORMATS, workers: int = 1,
              resume: bool = False, limit: int | None = None, overwrite: bool = False,
              shard_bytes: dict[str, int] | None = None, executor: str = "local") -> BuildReport:
    from .card import load_datasheet
    from .output import write_format_folder

    if not formats or set(formats) - set(FORMATS):
        raise StructuralError(f"formats must be among {FORMATS}, got {tuple(formats)}")
    formats = tuple(f for f in FORMATS if f in formats)
    raw, out = Path(raw), Path(out)
    if not raw.exists():
        raise StructuralError(f"raw input {raw} does not exist")
    shard_bytes = {"parquet": 500 << 20, "webdataset": 1 << 30, **(shard_bytes or {})}
    sheet = load_datasheet(builder.card_path())  # a broken card is a structural error: fail before any work
    build_dir = out / "build"
    plan_path = build_dir / "plan.json"
    if plan_path.exists():
        if not (resume or overwrite):
            raise StructuralError(f"{out} already holds a build; pass --resume to finish it or --overwrite to replace it")
    elif out.exists() and not _holds_build(out):
        raise StructuralError(f"{out} is not empty and holds no vldata build; choose an empty folder")
    builder.scratch = build_dir / "scratch"
    partitions = apply_limit(builder.partitions(raw), limit)
    plan = plan_document(builder, partitions, limit, formats)
    if overwrite:
        _clear_except(out, keep=builder.scratch)
    elif plan_path.exists() and json.loads(plan_path.read_text())["fingerprint"] != plan["fingerprint"]:
        raise StructuralError(f"{out} holds a build with another builder, config, format or input; --resume needs the same")
    parts_dir = build_dir / "parts"
    if resume and _complete(out, formats):
        return _report_of_finished(builder, out, formats)
    parts_dir.mkdir(parents=True, exist_ok=True)
    if not plan_path.exists():
        _atomic_write_bytes(plan_path, json.dumps(plan, indent=1).encode())

    _part_schema(builder)  # derive (and cache) the schema before forking: workers then skip importing datasets
    run_map(builder, partitions, parts_dir, workers, executor)
    written, reports = run_reduce(builder, partitions, parts_dir, out, formats, shard_bytes)
    for r in reports.values():
        if not r.balanced:  # an engine bug, never a data problem
            raise RuntimeError(f"accounting does not balance: {r.as_dict()}")
    report = BuildReport(builder.name, out, reports, formats,
                         {f: sum(len(v) for v in written["shards"][f].values()) for f in formats})
    stats = {"builder": builder.name, "version": builder.version, "splits": {k: v.as_dict() for k, v in reports.items()},
             "total": report.totals.as_dict()}
    _atomic_write_bytes(build_dir / "stats.json", json.dumps(stats, indent=1).encode())
    tables = _write_side_tables(builder, raw, build_dir / "staging" / "tables")
    for fmt in formats:
        write_format_folder(builder, sheet, out, fmt, written["shards"][fmt], written["image_suffixes"], stats,
                            written["values"], tables)
    # complete: parts and scratch were only needed to resume; they would double the disk footprint
    for folder in ("staging", "parts", "scratch"):
        shutil.rmtree(build_dir / folder, ignore_errors=True)
    return report


def _holds_build(out: Path) -> bool:
    """Empty, or only a ``build/`` folder (a build that stopped before writing its plan)."""
    return all(p.name == "build" and p.is_dir() for p in out.iterdir())


def _clear_except(out: Path, keep: Path) -> None:
    """Remove the previous build in ``out`` (``--overwrite``), keeping the scratch folder that
    ``partitions`` has just filled for this build."""
    if not out.exists():
        return
    for p in out.iterdir():
        if p == keep.parent:
            for q in p.iterdir():
                if q != keep:
                    shutil.rmtree(q) if q.is_dir() else q.unlink()
        else:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _write_side_tables(builder: Builder, raw: Path, staging: Path) -> dict[str, dict]:
    """Write ``builder.side_tables`` to staging; returns {name: {"staged", "path", "num_rows", "num_bytes", "sha256"}}."""
    from .shards import file_sha256

    tables = builder.side_tables(raw)
    out = {}
    for name, table in sorted(tables.items()):
        if not sch.valid_key(name):
            raise ValueError(f"{builder.name}: side table name {name!r} is not a valid file stem")
        staging.mkdir(parents=True, exist_ok=True)
        path = staging / f"{name}.parquet"
        pq.write_table(table, path, compression="zstd")
        out[name] = {"staged": str(path), "path": f"tables/{name}.parquet", "num_rows": table.num_rows,
                     "num_bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return out


def _complete(out: Path, formats: tuple[str, ...]) -> bool:
    from .output import MANIFEST

    return (out / "build" / "stats.json").exists() and all((out / f / MANIFEST).exists() for f in formats)


def _report_of_finished(builder: Builder, out: Path, formats: tuple[str, ...]) -> BuildReport:
    """The report of a build that already finished (``--resume`` on a complete folder does nothing)."""
    from .output import read_manifest

    stats = json.loads((out / "build" / "stats.json").read_text())
    splits = {}
    for name, doc in stats["splits"].items():
        s = SplitReport()
        _merge(s, doc)
        splits[name] = s
    shards = {f: sum(len(v["shards"]) for v in read_manifest(out / f)["splits"].values()) for f in formats}
    return BuildReport(builder.name, out, splits, formats, shards)
