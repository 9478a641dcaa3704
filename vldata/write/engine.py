"""The build engine: plan -> map (partitions -> parts) -> reduce (parts -> shards) -> finish.

Plan: the builder checks the raw input and splits it into partitions; the plan (builder, version,
config, formats, partitioning, limit, shuffle seed) is fingerprinted so that ``--resume`` refuses
another one. Map: every partition without a committed part is handed to an executor
(``write.executors``), which runs ``write.partition.build_partition``. Reduce: parts are read back in
partition order and duplicates are dropped; the rows kept, in that order, are written as they come
(``shuffle=None``) or in the seeded order of ``write.shuffle`` (spilled to bucket files, then read
back), and go to the shard writers. Shard boundaries depend only on the rows and their order, which is
why shards are byte-identical whatever the number of workers. The reduce is redone whole on resume
(it is a sequential copy); the format folders are finished (``write.finish``) with the manifest last.
This module knows no dataset and no file format beyond calling the writers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vldata.describe import schema as sch
from vldata.errors import BuildInterrupted, StructuralError, one_line
from vldata.layout import (BUILD_DIR, FAILURES, FORMATS, IMAGE_SUFFIXES, MANIFEST, PLAN, STATS, atomic_write, file_sha256,
                           read_manifest, table_file, valid_key, values_file)
from vldata.write.builder import Builder, Origin, Partition
from vldata.write.executors import get_executor
from vldata.write.partition import META_COLUMNS, is_committed, part_files, part_schema, read_done, read_part
from vldata.write.report import BuildReport, SplitReport, merge_counts
from vldata.write.shards import ParquetShards, TarShards
from vldata.write.shuffle import Shuffle, bucket_bytes, num_buckets

# every row points back to its input: ``file`` (relative to the raw folder), ``row`` in it and the
# ``url`` of its image where it had one; a duplicate also names ``kept_key``, the row that kept its place.
# ``ref`` is the same place as one string (``file:row``), or what a builder gave as a plain string.
_FAILURE_SCHEMA = pa.schema([("split", pa.string()), ("key", pa.string()), ("outcome", pa.string()),
                             ("reason", pa.string()), ("message", pa.string()), ("ref", pa.string()),
                             ("file", pa.string()), ("row", pa.int64()), ("url", pa.string()),
                             ("kept_key", pa.string())])


def _maybe_crash(point: str, count: int) -> None:
    """Crash injection for the resume tests: VLDATA_CRASH_AT="partition:N" or "batch:N" SIGKILLs
    this process right after the N-th partition is committed (map) or the N-th row batch is handed to
    the shard writers (reduce)."""
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


# --------------------------------------------------------------------------------------------
# Map


def run_map(builder: Builder, partitions: list[Partition], parts_dir: Path, workers: int,
            executor: str = "local") -> None:
    """Build every partition without a committed part, on ``executor`` ("local" or "ray")."""
    todo = [p for p in partitions if not is_committed(parts_dir, p.index)]
    bar = _progress(sum(p.input_rows for p in todo), f"build {builder.name}")
    finished = 0
    try:
        for p in get_executor(executor)(builder, todo, parts_dir, workers):
            bar.update(p.input_rows)
            finished += 1
            _maybe_crash("partition", finished)
    except KeyboardInterrupt:  # the executor has cancelled what was queued and stopped its workers
        done = sum(is_committed(parts_dir, p.index) for p in partitions)
        raise BuildInterrupted(f"interrupted: {done}/{len(partitions)} partitions done; --resume finishes") from None
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------
# Reduce


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
        self.kept: dict[str, dict] = {name: {} for name in self.columns}  # value -> key of the row kept

    def keep(self, batch: pa.RecordBatch, split: str, partition: int, report: SplitReport,
             failures: list[dict]) -> list[int]:
        values = {name: _column_values(batch, path) for name, path in self.columns.items()}
        keys = values["key"]
        keep = []
        for i in range(batch.num_rows):
            clash = next((n for n in self.columns if values[n][i] is not None and values[n][i] in self.kept[n]), None)
            if clash is None:
                for n in self.columns:
                    if values[n][i] is not None:
                        self.kept[n][values[n][i]] = keys[i]
                keep.append(i)
                continue
            report.written -= 1
            report.add("duplicates", f"duplicate_{clash}")
            file, row, url = (batch.column(c)[i].as_py() for c in ("__file__", "__row__", "__url__"))
            failures.append({"split": split, "key": keys[i], "outcome": "duplicates", "reason": f"duplicate_{clash}",
                             "message": f"an earlier input row has the same {self.columns[clash]}: {str(values[clash][i])[:200]}",
                             "ref": str(Origin(file, row)) if file is not None else f"partition {partition}",
                             "file": file, "row": row, "url": url, "kept_key": self.kept[clash][values[clash][i]]})
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
        return {"staged": str(self.path), "path": values_file(self.split), "fields": self.fields,
                "counts": counts}


class _SplitWriters:
    """The shard writers of one split (and its balance values), fed the split's rows in shard order."""

    def __init__(self, builder: Builder, split: str, schema: pa.Schema, staging: Path, formats: tuple[str, ...],
                 shard_bytes: dict[str, int]):
        self.schema, self.layout = schema, sch.member_layout(builder.record_type())
        self.values = _ValueWriter(staging / "values", split, schema, builder.balance_fields) \
            if builder.balance_fields else None
        self.parquet = ParquetShards(staging / "parquet", split, schema, shard_bytes["parquet"]) \
            if "parquet" in formats else None
        self.tars = TarShards(staging / "webdataset", split, shard_bytes["webdataset"]) \
            if "webdataset" in formats else None
        self.suffixes: set[str] = set()

    def write(self, batch: pa.RecordBatch) -> None:
        nbytes = batch.column("__nbytes__").to_pylist()
        if self.parquet is not None:
            self.parquet.write(batch.select(self.schema.names), nbytes)
        if self.values is not None:
            self.values.write(batch)
        if self.tars is not None:
            for row in batch.to_pylist():
                members = self.layout.members(row, row["__json__"])
                self.suffixes.update(k for k in members if k.rpartition(".")[2] in IMAGE_SUFFIXES)
                self.tars.write(row["key"], members)


def _kept_batches(parts: list[Partition], parts_dir: Path, split: str, dedup: _Dedup, report: SplitReport,
                  failures: list[dict], columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The split's rows that are not duplicates, in partition order, with only ``columns``; counts
    every partition into ``report`` and its failed, filtered and duplicate rows into ``failures``."""
    for p in parts:
        done = read_done(parts_dir, p.index)
        merge_counts(report, done["report"])
        for r, n in p.notes.items():
            report.notes[r] = report.notes.get(r, 0) + n
        failures.extend({"split": split, **f} for f in done["failures"])
        for batch in read_part(parts_dir, p.index):
            keep = dedup.keep(batch, split, p.index, report, failures)
            if len(keep) != batch.num_rows:
                batch = batch.take(pa.array(keep, type=pa.int64()))
            yield batch.select(columns)


def run_reduce(builder: Builder, partitions: list[Partition], parts_dir: Path, out: Path,
               formats: tuple[str, ...], shard_bytes: dict[str, int],
               shuffle: int | None = None) -> tuple[dict, dict[str, SplitReport]]:
    """Parts -> shards of every split, in partition order (``shuffle=None``) or in the order that
    ``write.shuffle`` derives from the seed ``shuffle``."""
    schema = sch.arrow_schema(builder.record_type())
    columns = schema.names + [name for name, _ in META_COLUMNS]
    staging = out / BUILD_DIR / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    reports: dict[str, SplitReport] = {}
    shards: dict[str, dict[str, list]] = {f: {} for f in formats}
    suffixes: set[str] = set()
    failures: list[dict] = []
    dedup = _Dedup(builder.dedup_on())
    batches_done = 0
    bar = _progress(sum(p.input_rows for p in partitions), f"write {'+'.join(formats)}")
    values: dict[str, dict] = {}
    for split in dict.fromkeys(p.split for p in partitions):
        report = reports.setdefault(split, SplitReport())
        parts = [p for p in partitions if p.split == split]
        writers = _SplitWriters(builder, split, schema, staging, formats, shard_bytes)
        kept = _kept_batches(parts, parts_dir, split, dedup, report, failures, columns)
        if shuffle is not None:  # every kept row is spilled before the first is written
            part_bytes = sum(part_files(parts_dir, p.index)[0].stat().st_size for p in parts)
            order = Shuffle(staging / "shuffle" / split, shuffle, split, num_buckets(part_bytes),
                            spill_bytes=bucket_bytes(part_bytes))
            for batch in kept:
                order.add(batch)
            kept = order.batches()
        for batch in kept:
            writers.write(batch)
            batches_done += 1
            bar.update(batch.num_rows)
            _maybe_crash("batch", batches_done)
        if writers.parquet is not None:
            shards["parquet"][split] = writers.parquet.finish(out / "parquet")
        if writers.tars is not None:
            shards["webdataset"][split] = writers.tars.finish(out / "webdataset")
        if writers.values is not None:
            values[split] = writers.values.finish()
        suffixes |= writers.suffixes
    bar.close()
    _write_failures(out / BUILD_DIR / FAILURES, failures)
    return {"shards": shards, "image_suffixes": sorted(suffixes, key=lambda s: ("." in s, s)),
            "values": values}, reports


def _write_failures(path: Path, failures: list[dict]) -> None:
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(failures, schema=_FAILURE_SCHEMA), buf)
    atomic_write(path, buf.getvalue().to_pybytes())


# --------------------------------------------------------------------------------------------
# Orchestration


def plan_document(builder: Builder, partitions: list[Partition], limit: int | None,
                  formats: tuple[str, ...], shuffle: int | None = None) -> dict:
    doc = {"builder": builder.name, "version": builder.version, "formats": list(formats),
           "config": builder.config.model_dump(mode="json"), "limit": limit, "shuffle": shuffle,
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
              shard_bytes: dict[str, int] | None = None, executor: str = "local",
              shuffle: int | None = 0) -> BuildReport:
    """Build ``builder`` from ``raw`` into ``out``. ``shuffle``: the seed of the order of each split's
    samples in its shards (``write.shuffle``), or None for input order."""
    from vldata.describe.card import load_datasheet
    from vldata.write.finish import write_format_folder

    if not formats or set(formats) - set(FORMATS):
        raise StructuralError(f"formats must be among {FORMATS}, got {tuple(formats)}")
    formats = tuple(f for f in FORMATS if f in formats)
    if shuffle is not None and (isinstance(shuffle, bool) or not isinstance(shuffle, int) or shuffle < 0):
        raise StructuralError(f"shuffle must be a seed (an integer >= 0) or None, got {shuffle!r}")
    raw, out = Path(raw), Path(out)
    if not raw.exists():
        raise StructuralError(f"raw input {raw} does not exist")
    shard_bytes = {"parquet": 500 << 20, "webdataset": 1 << 30, **(shard_bytes or {})}
    sheet = load_datasheet(builder.card_path())  # a broken card is a structural error: fail before any work
    build_dir = out / BUILD_DIR
    plan_path = build_dir / PLAN
    if plan_path.exists():
        if not (resume or overwrite):
            raise StructuralError(f"{out} already holds a build; pass --resume to finish it or --overwrite to replace it")
    elif out.exists() and not _holds_build(out):
        raise StructuralError(f"{out} is not empty and holds no vldata build; choose an empty folder")
    builder.scratch = build_dir / "scratch"
    try:
        partitions = apply_limit(builder.partitions(raw), limit)
    except (StructuralError, KeyboardInterrupt):
        raise
    except Exception as e:  # a reader the builder did not guard: still one line, before any work
        raise StructuralError(f"{builder.name}: the raw input {raw} could not be read ({one_line(e)})") from None
    plan = plan_document(builder, partitions, limit, formats, shuffle)
    if overwrite:
        _clear_except(out, keep=builder.scratch)
    elif plan_path.exists() and json.loads(plan_path.read_text())["fingerprint"] != plan["fingerprint"]:
        raise StructuralError(f"{out} holds a build with another builder, config, format, shuffle or input; "
                              "--resume needs the same")
    parts_dir = build_dir / "parts"
    if resume and _complete(out, formats):
        return report_of_finished(builder, out, formats)
    parts_dir.mkdir(parents=True, exist_ok=True)
    if not plan_path.exists():
        atomic_write(plan_path, json.dumps(plan, indent=1), fsync=True)

    part_schema(builder)  # derive (and cache) the schema before forking: workers then skip importing datasets
    run_map(builder, partitions, parts_dir, workers, executor)
    try:
        written, reports = run_reduce(builder, partitions, parts_dir, out, formats, shard_bytes, shuffle)
    except KeyboardInterrupt:
        raise BuildInterrupted(f"interrupted: {len(partitions)}/{len(partitions)} partitions done, shards not "
                               "finished; --resume finishes") from None
    for r in reports.values():
        if not r.balanced:  # an engine bug, never a data problem
            raise RuntimeError(f"accounting does not balance: {r.as_dict()}")
    report = BuildReport(builder.name, out, reports, formats,
                         {f: sum(len(v) for v in written["shards"][f].values()) for f in formats})
    stats = {"builder": builder.name, "version": builder.version, "shuffle_seed": shuffle,
             "splits": {k: v.as_dict() for k, v in reports.items()}, "total": report.totals.as_dict()}
    atomic_write(build_dir / STATS, json.dumps(stats, indent=1), fsync=True)
    tables = _write_side_tables(builder, raw, build_dir / "staging" / "tables")
    for fmt in formats:
        write_format_folder(builder, sheet, out, fmt, written["shards"][fmt], written["image_suffixes"], stats,
                            written["values"], tables, shuffle_seed=shuffle)
    # complete: parts and scratch were only needed to resume; they would double the disk footprint
    for folder in ("staging", "parts", "scratch"):
        shutil.rmtree(build_dir / folder, ignore_errors=True)
    return report


def _holds_build(out: Path) -> bool:
    """Empty, or only a ``build/`` folder (a build that stopped before writing its plan)."""
    return all(p.name == BUILD_DIR and p.is_dir() for p in out.iterdir())


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
    tables = builder.side_tables(raw)
    out = {}
    for name, table in sorted(tables.items()):
        if not valid_key(name):
            raise ValueError(f"{builder.name}: side table name {name!r} is not a valid file stem")
        staging.mkdir(parents=True, exist_ok=True)
        path = staging / f"{name}.parquet"
        pq.write_table(table, path, compression="zstd")
        out[name] = {"staged": str(path), "path": table_file(name), "num_rows": table.num_rows,
                     "num_bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return out


def _complete(out: Path, formats: tuple[str, ...]) -> bool:
    return (out / BUILD_DIR / STATS).exists() and all((out / f / MANIFEST).exists() for f in formats)


def report_of_finished(builder: Builder, out: Path, formats: tuple[str, ...]) -> BuildReport:
    """The report of a build that already finished (``--resume`` on a complete folder does nothing)."""
    stats = json.loads((out / BUILD_DIR / STATS).read_text())
    splits = {}
    for name, doc in stats["splits"].items():
        s = SplitReport()
        merge_counts(s, doc)
        splits[name] = s
    shards = {f: sum(len(v["shards"]) for v in read_manifest(out / f)["splits"].values()) for f in formats}
    return BuildReport(builder.name, out, splits, formats, shards)
