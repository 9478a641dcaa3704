"""What a builder is: the contract between one dataset's description and the build engine.

A builder names its dataset, declares its ``Record`` and ``Config`` (pydantic), splits the raw input
into deterministic ``Partition``s (checking the input's structure first) and turns each partition's
input rows into records. For every input row it yields exactly one outcome: a Record, or a
``Failed`` / ``Filtered`` value with a reason. Images are loaded through ``RowContext.image``, which
applies the shared image policy, and URLs are downloaded through ``RowContext.fetch_many``, which
fetches concurrently but yields in input order. Each outcome says where its row came from (an
``Origin``: input file, row, URL): ``Failed`` and ``Filtered`` in their ``ref``, a Record through
``RowContext.located``, so that ``failures.parquet`` points every row it lists back to its input.
Sharding, writing, retries and resumption belong to the engine. A builder whose sample needs a
running service (a loopback HTTP server for URL-based data) starts it in ``sample_services``.
It must not do I/O for builders: sharding, writing, retries and resumption belong to the engine.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from vldata.ingest import fetch as fetch_mod
from vldata.ingest import image as image_mod
from vldata.describe.schema import Image, Record
from vldata.errors import StructuralError


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
class Origin:
    """Where an input row came from: its file (relative to the raw folder), its row in that file (for
    text files, the line) and the URL of its image when the row has one. ``str()`` is ``file:row``."""

    file: str
    row: int | None = None
    url: str | None = None

    def __str__(self) -> str:
        return self.file if self.row is None else f"{self.file}:{self.row}"


@dataclass(frozen=True)
class Failed:
    """An input row that produced no sample because something about it is wrong."""

    key: str
    reason: str
    message: str
    ref: Origin | str  # where it came from; a plain string ("file:row", a URL...) fills only failures' ``ref``


@dataclass(frozen=True)
class Filtered:
    """An input row deliberately left out by a configured filter."""

    key: str
    reason: str
    message: str
    ref: Origin | str


Outcome = Record | Failed | Filtered


@dataclass(frozen=True)
class Pending:
    """A row that passed its checks and waits for its download (``RowContext.fetch_in_order``):
    ``request`` is fetched, then ``finish(result)`` turns the result into the row's outcome."""

    request: fetch_mod.FetchRequest | str | None
    finish: Callable[[fetch_mod.FetchResult], Outcome]


@dataclass
class RowContext:
    """Per-partition services for ``Builder.records``: image loading, fetching, counted notes and where
    each record came from (``located``)."""

    config: Config
    notes: dict[str, int] = field(default_factory=dict)
    # id(record) -> (record, its origin); the record is held so that its id is not reused meanwhile
    _origins: dict[int, tuple[Record, Origin]] = field(default_factory=dict, repr=False)

    def located(self, record: Record, origin: Origin) -> Record:
        """``record``, noted as made from the input row at ``origin`` (what ``ref`` is to ``Failed``):
        if the record is later dropped as a duplicate, failures.parquet names that row."""
        self._origins[id(record)] = (record, origin)
        return record

    def origin_of(self, outcome: Outcome) -> Origin | None:
        """Where ``outcome`` came from (once, for a Record: the engine asks when it receives it)."""
        if isinstance(outcome, (Failed, Filtered)):
            return outcome.ref if isinstance(outcome.ref, Origin) else None
        held = self._origins.pop(id(outcome), None)
        return held[1] if held is not None and held[0] is outcome else None

    def image(self, data: bytes | None, missing_message: str = "") -> Image | image_mod.ImageFailure:
        """Verify image bytes under the configured policy; ``None`` means the file was missing."""
        if data is None:
            return image_mod.ImageFailure(reason="image_missing", message=missing_message or "file not found")
        return image_mod.load(data, self.config.image)

    def fetch_many(self, requests: Iterable[fetch_mod.FetchRequest | str | None],
                   policy: fetch_mod.FetchPolicy | None = None,
                   mirror: str | Path | None = None) -> Iterator[fetch_mod.FetchResult]:
        """Download URLs concurrently (see ``vldata.ingest.fetch``); yields one result per request, in
        request order, so ``records()`` can stay a generator in input order. Retries and bytes read
        from ``mirror`` are noted (``fetch_retries``, ``fetched_from_mirror``)."""
        for result in fetch_mod.fetcher(policy, mirror).fetch_many(requests):
            if result.attempts > 1:
                self.note("fetch_retries", result.attempts - 1)
            if result.source == "mirror" and result.ok:
                self.note("fetched_from_mirror")
            yield result

    def fetch_in_order(self, plans: Iterable[Outcome | Pending], policy: fetch_mod.FetchPolicy | None = None,
                       mirror: str | Path | None = None) -> Iterator[Outcome]:
        """The outcomes of a partition's rows in input order: a ``Failed`` or ``Filtered`` passes
        through, and each ``Pending`` row gets ``finish(result)`` with its download. Downloads run
        concurrently (``fetch_many``); rows with equal requests share one download, whose result is
        kept only until its last row, and only while the kept results hold at most
        ``threads x max_bytes`` of bodies (beyond that a later row downloads again)."""
        plans = list(plans)
        policy = policy or fetch_mod.FetchPolicy()
        uses: dict = {}
        for plan in plans:
            if isinstance(plan, Pending):
                uses[plan.request] = uses.get(plan.request, 0) + 1
        results = self.fetch_many(list(uses), policy, mirror)  # distinct requests, in first-use order
        held: dict = {}
        held_bytes, budget = 0, policy.threads * policy.max_bytes
        seen: set = set()
        for plan in plans:
            if not isinstance(plan, Pending):
                yield plan
                continue
            request = plan.request
            if request in held:
                result = held[request]
            elif request in seen:  # its result was not kept: download it again
                result = next(self.fetch_many([request], policy, mirror))
            else:
                seen.add(request)
                result = next(results)
            uses[request] -= 1
            size = len(result.data or b"")
            if not uses[request]:
                if held.pop(request, None) is not None:
                    held_bytes -= size
            elif request not in held and held_bytes + size <= budget:
                held[request] = result
                held_bytes += size
            yield plan.finish(result)

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
    # the datasheet YAML, relative to the folder of the module that defines the builder (a third-party
    # package ships its card beside its code); empty: vldata's own ``cards/<name>.yaml``
    card: ClassVar[str] = ""
    # a folder the engine lends for intermediate files (``OUT/build/scratch``), set before
    # ``partitions`` is called: kept for ``--resume``, removed when the build completes
    scratch: Path | None = None

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

    def side_tables(self, raw: Path) -> dict[str, pa.Table]:
        """Small tables about the dataset as a whole (a class list, a hierarchy's edges), written as
        ``tables/<name>.parquet`` into every format folder and listed in its manifest. None by default."""
        return {}

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        """Write a small synthetic raw input in the dataset's real layout."""
        raise NotImplementedError

    def sample_services(self, raw: Path) -> contextlib.AbstractContextManager:
        """What the sample written by ``write_sample`` needs running while it is built, e.g. the
        loopback HTTP server that its URLs point at (``vldata.ingest.loopback.serve_sample``). Nothing by
        default; real raw input never needs it."""
        return contextlib.nullcontext()

    def card_path(self) -> Path:
        """The builder's datasheet YAML: ``card`` beside the builder's module, else the card that
        ships with vldata under the builder's name."""
        from vldata.describe.card import card_file

        if self.card:
            return Path(sys.modules[type(self).__module__].__file__).parent / self.card
        return card_file(self.name)
