"""vldata: build vision-language datasets into HF parquet and webdataset shards, and load them."""

from .api import build
from .builder import Builder, Config, Failed, Filtered, Partition, RowContext, StructuralError
from .engine import BuildReport
from .mix import Mix
from .plan import Plan
from .publish import PublishPlan, publish
from .registry import get_builder, list_builders
from .schema import Image, Record
from .source import ShardError, Source
from .source import open  # noqa: A004  (vldata.open is the documented entry point)

__all__ = ["build", "Builder", "BuildReport", "Config", "Failed", "Filtered", "Image", "Mix", "Partition", "Plan",
           "PublishPlan", "Record", "RowContext", "ShardError", "Source", "StructuralError", "TorchDataset", "decode_batch", "decode_loader_batch", "get_builder",
           "list_builders", "open", "publish"]
__version__ = "0.1.0"


_TORCH_NAMES = {"TorchDataset": "torch_dataset", "decode_batch": "batch_decode",
                "decode_loader_batch": "batch_decode", "BatchDecoder": "batch_decode"}


def __getattr__(name: str):
    if name in _TORCH_NAMES:  # these import torch: only when asked for
        import importlib

        return getattr(importlib.import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'vldata' has no attribute {name!r}")
