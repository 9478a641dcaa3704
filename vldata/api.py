"""The Python entry points for building: the same code path as ``vldata build``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .engine import FORMATS, BuildReport, run_build
from .registry import get_builder


def build(name: str, raw: str | Path, out: str | Path, formats: tuple[str, ...] | str = FORMATS, workers: int = 1,
          resume: bool = False, limit: int | None = None, overwrite: bool = False,
          shard_bytes: dict[str, int] | None = None, **config: Any) -> BuildReport:
    """Build dataset ``name`` from ``raw`` into ``out``; returns the counts per split and reason.

    ``formats``: "parquet", "webdataset", "both" or a tuple. ``config``: the builder's settings
    (the same keys as ``--set``). Raises StructuralError for unusable input or settings.
    """
    if isinstance(formats, str):
        formats = FORMATS if formats == "both" else (formats,)
    builder = get_builder(name, **config)
    with builder.sample_services(Path(raw)):  # a sample's loopback server, when raw is such a sample
        return run_build(builder, Path(raw), Path(out), tuple(formats), workers=workers, resume=resume,
                         limit=limit, overwrite=overwrite, shard_bytes=shard_bytes)
