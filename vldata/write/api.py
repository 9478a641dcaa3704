"""``vldata.build``: the Python entry point for building, the same code path as ``vldata build``.

It stages remote raw input, runs the engine and uploads remote output; it must not hold build logic
of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vldata.write import storage
from vldata.layout import FORMATS
from vldata.write.engine import report_of_finished, run_build
from vldata.write.report import BuildReport
from vldata.write.registry import get_builder


def build(name: str, raw: str | Path, out: str | Path, formats: tuple[str, ...] | str = FORMATS, workers: int = 1,
          resume: bool = False, limit: int | None = None, overwrite: bool = False,
          shard_bytes: dict[str, int] | None = None, executor: str = "local", shuffle: int | None = 0,
          storage_options: dict | None = None, **config: Any) -> BuildReport:
    """Build dataset ``name`` from ``raw`` into ``out``; returns the counts per split and reason.

    ``raw`` and ``out`` are local folders or fsspec URLs (see ``vldata.write.storage``). ``formats``:
    "parquet", "webdataset", "both" or a tuple. ``executor``: "local" (``workers`` processes) or
    "ray". ``shuffle``: the seed of the order of each split's samples in the shards (a seeded
    permutation, the same for any workers or executor), or None to keep the input order.
    ``config``: the builder's settings (the same keys as ``--set``). Raises StructuralError for
    unusable input or settings.
    """
    if isinstance(formats, str):
        formats = FORMATS if formats == "both" else (formats,)
    formats = tuple(formats)
    builder = get_builder(name, **config)
    raw_dir = storage.stage_raw(str(raw), storage_options) if storage.is_remote(raw) else storage.local_path(raw)
    if not storage.is_remote(out):
        with builder.sample_services(raw_dir):  # a sample's loopback server, when raw is such a sample
            return run_build(builder, raw_dir, storage.local_path(out), formats, workers=workers, resume=resume,
                             limit=limit, overwrite=overwrite, shard_bytes=shard_bytes, executor=executor,
                             shuffle=shuffle)
    url = str(out)
    storage.check_remote_out(url, resume, overwrite, storage_options)
    work = storage.work_folder(url)
    if resume and storage.remote_complete(url, formats, storage_options):
        storage.fetch_build_summary(url, work, formats, storage_options)
        report = report_of_finished(builder, work, formats)
        storage.remove_work(work)
        return report
    with builder.sample_services(raw_dir):
        report = run_build(builder, raw_dir, work, formats, workers=workers, resume=resume,
                           limit=limit, overwrite=overwrite, shard_bytes=shard_bytes, executor=executor,
                           shuffle=shuffle)
    storage.upload_build(work, url, formats, overwrite=overwrite, storage_options=storage_options)
    storage.remove_work(work)
    report.out = url
    return report
