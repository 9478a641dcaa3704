"""What a builder is: the contract between one dataset's description and the build engine.

A builder names its dataset, declares its ``Record`` and ``Config`` (pydantic), splits the raw input
into deterministic ``Partition``s (checking the input's structure first) and turns each partition's
input rows into records. For every input row it yields exactly one outcome: a Record, or a
``Failed`` / ``Filtered`` value with a reason. Images are loaded through ``RowContext.image``, which
applies the shared image policy. Sharding, writing, retries and resumption belong to the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from . import image as image_mod
from .schema import Image, Record


class StructuralError(Exception):
    """The input or the configuration is unusable as a whole; the message is one line naming the
    file, column or key. Raised before any work starts."""


class Config(BaseModel):
    """Base of every builder's options. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    image: image_mod.ImagePolicy = image_mod.ImagePolicy()


@dataclass(frozen=True)
class Partition:
    """A unit of work: deterministic, picklable, processed independently of the others."""

    index: int
    split: str
    payload: Any
    input_rows: int
    notes: dict[str, int] = field(default_factory=dict)  # counted observations about the input as a whole


@dataclass(frozen=True)
class Failed:
    """An input row that produced no sample because something about it is wrong."""

    key: str
    reason: str
    message: str
    ref: str  # where it came from: "file:row", a URL, ...


@dataclass(frozen=True)
class Filtered:
    """An input row deliberately left out by a configured filter."""

    key: str
    reason: str
    message: str
    ref: str


Outcome = Record | Failed | Filtered


@dataclass
class RowContext:
    """Per-partition services for ``Builder.records``: image loading and counted notes."""

    config: Config
    notes: dict[str, int] = field(default_factory=dict)

    def image(self, data: bytes | None, missing_message: str = "") -> Image | image_mod.ImageFailure:
        """Verify image bytes under the configured policy; ``None`` means the file was missing."""
        if data is None:
            return image_mod.ImageFailure(reason="image_missing", message=missing_message or "file not found")
        return image_mod.load(data, self.config.image)

    def note(self, reason: str, n: int = 1) -> None:
        """Count something worth reporting that did not cost a row (e.g. a secondary image missing)."""
        self.notes[reason] = self.notes.get(reason, 0) + n


class Builder:
    """Base class; subclasses set the class attributes and implement the three methods."""

    name: ClassVar[str]
    version: ClassVar[str]
    summary: ClassVar[str] = ""
    Config: ClassVar[type[Config]] = Config
    Record: ClassVar[type[Record]]
    # top-level scalar fields whose per-row values and counts are saved at build time, so that
    # loaders can balance by them (MetaCLIP-style caps) without scanning the data
    balance_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **config: Any) -> None:
        try:
            self.config = self.Config(**config)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "config"
            if err["type"] == "extra_forbidden":
                raise StructuralError(f"{self.name}: unknown setting '{where}'") from None
            raise StructuralError(f"{self.name}: invalid setting '{where}': {err['msg']}") from None

    def record_type(self) -> type[Record]:
        """The Record produced under this config (a builder with views may override)."""
        return self.Record

    def dedup_on(self) -> dict[str, str]:
        """Columns besides ``key`` whose repeated values make a row a duplicate, as
        {reason suffix: column path}, e.g. {"url": "url", "image": "image_info.sha256"}; a duplicate
        is counted under ``duplicate_<suffix>``. The first row in input order is kept."""
        return {}

    def partitions(self, raw: Path) -> list[Partition]:
        """Check the raw input's structure (raising StructuralError) and split it into partitions."""
        raise NotImplementedError

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Outcome]:
        """Yield one outcome per input row of the partition, in input order."""
        raise NotImplementedError

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        """Write a small synthetic raw input in the dataset's real layout."""
        raise NotImplementedError

    def card_path(self) -> Path:
        """The builder's datasheet YAML."""
        from .card import card_file

        return card_file(self.name)
