"""The map step: one partition's input rows -> its *part*, the same on every executor.

A part is an Arrow stream of the partition's records in input order (each row also carries its
``.json`` member and its payload size, so the reduce never rebuilds a Record, and its origin: input
file, row and URL, so that the reduce can name a duplicate's input) plus a ``done`` file with the
outcome counts and failures. Writing the ``done`` file last commits the part: after a crash,
a partition without one is redone. This is the only function executors run; it writes nothing but
the part files and never decides shard boundaries, which belong to the reduce.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import pyarrow as pa

from vldata.describe import schema as sch
from vldata.errors import one_line
from vldata.layout import MemberLayout, atomic_write
from vldata.write.builder import Builder, Failed, Filtered, Origin, Partition, RowContext
from vldata.write.report import SplitReport

META_COLUMNS = [("__json__", pa.binary()), ("__nbytes__", pa.int64())]
ORIGIN_COLUMNS = [("__file__", pa.string()), ("__row__", pa.int64()), ("__url__", pa.string())]
_BATCH_ROWS = 64


def part_files(parts_dir: Path, index: int) -> tuple[Path, Path]:
    """(Arrow stream, done document) of partition ``index``."""
    return parts_dir / f"{index:05d}.arrow", parts_dir / f"{index:05d}.done.json"


def is_committed(parts_dir: Path, index: int) -> bool:
    return part_files(parts_dir, index)[1].exists()


def part_schema(builder: Builder) -> pa.Schema:
    base = sch.arrow_schema(builder.record_type())  # cached per Record type
    return pa.schema(list(base) + [pa.field(n, t) for n, t in META_COLUMNS + ORIGIN_COLUMNS], metadata=base.metadata)


def read_part(parts_dir: Path, index: int) -> Iterable[pa.RecordBatch]:
    with pa.OSFile(str(part_files(parts_dir, index)[0]), "rb") as source:
        yield from pa.ipc.open_stream(source)


def read_done(parts_dir: Path, index: int) -> dict:
    return json.loads(part_files(parts_dir, index)[1].read_text())


def _row_of(record: sch.Record, layout: MemberLayout, origin: Origin | None) -> dict:
    row = sch.to_row(record)
    row["__json__"] = sch.to_json_bytes(record)
    # the sample's size as the shard writers count it: its webdataset members
    row["__nbytes__"] = sum(len(b) for b in layout.members(row, row["__json__"]).values())
    row.update({f"__{name}__": value for name, value in origin_fields(origin).items()})
    return row


def origin_fields(origin: Origin | None) -> dict:
    """The ``file``, ``row`` and ``url`` columns of failures.parquet for an origin (None where unknown)."""
    if origin is None:
        return {"file": None, "row": None, "url": None}
    return {"file": origin.file, "row": origin.row, "url": origin.url}


def _fail_the_rest(builder: Builder, part: Partition, seen: int, why: str, report: SplitReport,
                   failures: list[dict]) -> None:
    """The last resort when a builder's reader fails inside a partition (an exception it did not
    expect, from a container corrupted in a way it does not handle): the rows it did not yield are
    counted as ``reader_error`` failures, one failures.parquet row each, so that the build finishes
    and its accounting holds. Builders should turn such damage into their own reasons naming the
    file; the fuzz tests treat any ``reader_error`` as a defect of the builder."""
    for n in range(seen, part.input_rows):
        report.add("failed", "reader_error")
        failures.append({"key": f"partition{part.index:05d}_row{n:09d}", "outcome": "failed", "reason": "reader_error",
                         "message": f"{builder.name} could not read row {n} of partition {part.index}: {why}",
                         "ref": f"partition {part.index} ({part.split}), row {n} of {part.input_rows}",
                         **origin_fields(None)})


def build_partition(builder: Builder, part: Partition, parts_dir: Path) -> dict:
    """Process one partition into ``parts_dir``; returns its ``done`` document."""
    if os.environ.get("VLDATA_TEST_PARTITION_SECONDS"):  # the interruption tests need partitions that last
        time.sleep(float(os.environ["VLDATA_TEST_PARTITION_SECONDS"]))
    schema = part_schema(builder)
    record_type = builder.record_type()
    layout = sch.member_layout(record_type)
    ctx = RowContext(builder.config)
    report = SplitReport(input_rows=part.input_rows)
    failures: list[dict] = []
    rows: list[dict] = []
    arrow, done_file = part_files(parts_dir, part.index)
    tmp = arrow.with_name(f"{arrow.name}.{os.getpid()}.tmp")
    seen = 0
    broken: str | None = None
    outcomes = islice(builder.records(part, ctx), part.input_rows)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        while True:
            try:
                outcome = next(outcomes)
            except StopIteration:
                break
            except Exception as e:  # the builder's reader failed mid-partition (see _fail_the_rest)
                broken = one_line(e)
                break
            seen += 1
            if isinstance(outcome, (Failed, Filtered)):
                kind = "failed" if isinstance(outcome, Failed) else "filtered"
                report.add(kind, outcome.reason)
                failures.append({"key": outcome.key, "outcome": kind, "reason": outcome.reason,
                                 "message": outcome.message, "ref": str(outcome.ref),
                                 **origin_fields(ctx.origin_of(outcome))})
                continue
            if type(outcome) is not record_type:
                raise TypeError(f"{builder.name}.records yielded {type(outcome).__name__}, expected {record_type.__name__}")
            report.written += 1
            rows.append(_row_of(outcome, layout, ctx.origin_of(outcome)))
            if len(rows) >= _BATCH_ROWS:
                writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
                rows = []
        if rows:
            writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
    if seen != part.input_rows:
        _fail_the_rest(builder, part, seen, broken or "records() ended early", report, failures)
        ctx.note("reader_error_partitions")
    os.replace(tmp, arrow)
    report.notes = ctx.notes
    done = {"index": part.index, "split": part.split, "report": report.as_dict(), "failures": failures}
    atomic_write(done_file, json.dumps(done), fsync=True)  # last: it commits the part
    return done


