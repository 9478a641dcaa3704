"""vldata: build vision-language datasets into HF parquet and webdataset shards, and load them.

The package is in sides, and the path of a module says its side:

- ``vldata.errors``, ``vldata.layout``: leaves (the exceptions; the output contract as data);
- ``vldata.describe``: a Record's schema and what is derived from it (features, card, Croissant);
- ``vldata.ingest``: the kit builders use to read raw input (fetch, image policy, tabular readers);
- ``vldata.write``: the builder contract, registry, engine, executors, shard writers, remote storage;
- ``vldata.read``: sources, plan, mixing, the torch dataset, CPU and batch decoding;
- ``vldata.tools``: validate, inspect, contact sheets, publish, the demo; ``vldata.cli``.

The names below are imported when first used, so ``import vldata; vldata.open(...)`` loads the read
side only (no fetcher, no build engine), and torch is imported only for the torch names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_NAMES = {
    "build": "vldata.write.api",
    "BuildReport": "vldata.write.report",
    "Builder": "vldata.write.builder", "Config": "vldata.write.builder", "Failed": "vldata.write.builder",
    "Filtered": "vldata.write.builder", "Origin": "vldata.write.builder", "Partition": "vldata.write.builder",
    "Pending": "vldata.write.builder", "RowContext": "vldata.write.builder",
    "get_builder": "vldata.write.registry", "list_builders": "vldata.write.registry",
    "Image": "vldata.describe.schema", "Record": "vldata.describe.schema",
    "StructuralError": "vldata.errors", "ShardError": "vldata.errors", "SampleError": "vldata.errors",
    "Source": "vldata.read.source", "open": "vldata.read.source",
    "Mix": "vldata.read.mix", "Plan": "vldata.read.plan",
    "TorchDataset": "vldata.read.torch_dataset",  # these three import torch
    "decode_batch": "vldata.read.batch_decode", "decode_loader_batch": "vldata.read.batch_decode",
    "BatchDecoder": "vldata.read.batch_decode",
    "publish": "vldata.tools.publish", "PublishPlan": "vldata.tools.publish",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'vldata' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))


if TYPE_CHECKING:  # noqa: F401 - for type checkers and IDEs; at run time the names load on first use
    from vldata.describe.schema import Image, Record
    from vldata.errors import SampleError, ShardError, StructuralError
    from vldata.read.batch_decode import BatchDecoder, decode_batch, decode_loader_batch
    from vldata.read.mix import Mix
    from vldata.read.plan import Plan
    from vldata.read.source import Source, open  # noqa: A004
    from vldata.read.torch_dataset import TorchDataset
    from vldata.tools.publish import PublishPlan, publish
    from vldata.write.api import build
    from vldata.write.builder import Builder, Config, Failed, Filtered, Origin, Partition, Pending, RowContext
    from vldata.write.registry import get_builder, list_builders
    from vldata.write.report import BuildReport
