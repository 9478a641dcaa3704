"""vldata: build vision-language datasets into HF parquet and webdataset shards, and load them."""

from .api import build
from .builder import Builder, Config, Failed, Filtered, Partition, RowContext, StructuralError
from .engine import BuildReport
from .registry import get_builder, list_builders
from .schema import Image, Record

__all__ = ["build", "Builder", "BuildReport", "Config", "Failed", "Filtered", "Image", "Partition", "Record",
           "RowContext", "StructuralError", "get_builder", "list_builders"]
__version__ = "0.1.0"
