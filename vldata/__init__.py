"""vldata: build vision-language datasets into HF parquet and webdataset shards, and load them."""

from .api import build
from .builder import Builder, Config, Failed, Filtered, Partition, RowContext, StructuralError
from .engine import BuildReport
from .mix import Mix
from .plan import Plan
from .registry import get_builder, list_builders
from .schema import Image, Record
from .source import ShardError, Source
from .source import open  # noqa: A004  (vldata.open is the documented entry point)

__all__ = ["build", "Builder", "BuildReport", "Config", "Failed", "Filtered", "Image", "Mix", "Partition", "Plan",
           "Record", "RowContext", "ShardError", "Source", "StructuralError", "TorchDataset", "get_builder",
           "list_builders", "open"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "TorchDataset":  # imports torch: only when asked for
        from .torch_dataset import TorchDataset

        return TorchDataset
    raise AttributeError(f"module 'vldata' has no attribute {name!r}")
