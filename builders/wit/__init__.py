"""WIT — Wikipedia-based Image Text (Google Research, 2021): 37.6M (page, image) rows in 108 languages.

Raw input: ``wit_v1.{train,val,test}.all-NNNNN-of-MMMMM.tsv.gz`` (or the same names as plain ``.tsv``,
and the ``wit_v1.train.all-1percent_sample.tsv.gz`` sample) anywhere under RAW. Each file is a
tab-separated table with a header of the 17 WIT columns and CSV quoting (descriptions hold quoted
newlines and very long fields), read with Python's ``csv`` module. The split comes from the file
name; the 1% sample is read only when no full train file is present (it repeats their rows). A file
without one of the 17 columns stops the build before any work.

One record per row whose image downloaded (vldata.ingest.fetch, or a ``mirror`` folder) and decoded. The 17
columns keep their real names: strings verbatim (an empty string stays empty, a page titled ``NA``
stays ``NA``), ``original_height``/``original_width`` as integers (null when blank) and the three
``true``/``false`` columns as booleans; columns beyond the 17 go to ``extra_columns`` (JSON). A row
with the wrong number of fields or an unparsable boolean/integer is a counted failure. ``text`` is
the first non-blank of ``CAPTION_ORDER`` (the attribution with its language label such as
``English: `` removed) and ``caption_source`` names the column used. ``license`` is null: WIT rows
carry no per-image licence (the dataset's CC BY-SA 3.0 is in the card).

Image formats: SVG (``skip_mime_types``, default ``image/svg+xml``) is a vector format that no image
library here rasterises, so such rows are ``filtered`` with reason ``skip_mime_types`` without being
downloaded; GIF and TIFF are downloaded and re-encoded to PNG (first frame) by ``vldata.ingest.image``.

Keys: ``{split}_{part}_{row:09d}`` — the shard number from the file name (``00003``; ``1pct`` for the
1% sample) and the data row in that file (0-based, header excluded), so a key does not depend on
which other files were downloaded. A URL repeated inside a partition is downloaded once.

Partitions are row ranges of one file; ``partitions`` reads every file once to count rows and note
where each range starts (the uncompressed byte offset, so a worker seeks there instead of parsing).

Hostile input (``vldata.ingest.tabular``): a row longer than 16 MiB is skipped in bounded memory and
fails ``row_too_large``; a row with a field the ``csv`` module refuses (a lone CR) fails ``malformed_row``.
Text is decoded strictly: a row that is not UTF-8 fails ``row_not_utf8`` rather than being kept with
replacement characters, since a silently altered ``image_url`` or caption is worse than a counted
failure. A ``.tsv.gz`` that is truncated or corrupt part-way is read up to the damage: those rows are
built, and the file is noted as ``truncated_file:<file>`` or ``corrupt_file:<file>`` (should a worker
find fewer rows than ``partitions`` counted, the rest fail with that reason, or ``file_changed``).
Only a file whose header cannot be read (or that cannot be opened) stops the build, with one line
naming it.

The sample (``vldata sample wit RAW``, written by ``sample``) is gzipped TSVs for the three splits
whose image URLs point at ``http://127.0.0.1:<port>`` (``vldata.ingest.loopback``).

This module turns raw rows into records: partitions, the Record, the Config and each row's outcome.
The columns and their parsing are in ``columns``. It does no I/O plumbing (downloads go through
``RowContext.fetch_in_order``), sharding, retries or format code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Annotated, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from vldata import (Builder, Config, Failed, Filtered, Image, Origin, Partition, Pending, Record, RowContext,
                    StructuralError)
from vldata.ingest import loopback
from vldata.ingest.rawfiles import raw_files
from vldata.ingest.fetch import FetchPolicy, FetchRequest, FetchResult
from vldata.ingest.tabular import open_binary

from . import columns
from .columns import CAPTION_ORDER, COLUMNS, CaptionSource, choose_caption, strip_language_label

__all__ = ["CAPTION_ORDER", "COLUMNS", "WitBuilder", "WitConfig", "WitRecord", "choose_caption",
           "strip_language_label"]

Int16 = Annotated[int, pa.int16()]
Int32 = Annotated[int, pa.int32()]

_FILE = re.compile(r"^wit_v1\.(?P<split>train|val|test)\.all-(?:(?P<part>\d{5})-of-\d{5}|(?P<sample>1percent_sample))"
                   r"\.tsv(?:\.gz)?$")


# ------------------------------------------------------------------------------------------
# Record and config


class WitRecord(Record):
    image: Image = Field(description="The image at image_url, after the configured image policy.")
    split: str = Field(description="train, val or test, from the file name (wit_v1.<split>.all-...).")
    caption_source: CaptionSource = Field(description="Column that `text` came from (first non-blank of "
                                          "reference, alt text, attribution without its language label, "
                                          "page title); none when all are blank.")
    language: str = Field(description="Wikipedia language edition of the page (en, de, ru, ...).")
    page_url: str
    image_url: str
    page_title: str = Field(description="Article title, verbatim (a page titled NA stays NA).")
    section_title: str = Field(description="Section containing the image; often empty.")
    hierarchical_section_title: str = Field(description="'Page / Section / Subsection'.")
    caption_reference_description: str = Field(description="Caption shown under the image on the page.")
    caption_attribution_description: str = Field(description="Commons file description, verbatim (with its "
                                                 "language label, e.g. 'English: ').")
    caption_alt_text_description: str = Field(description="HTML alt text.")
    mime_type: str = Field(description="image/jpeg, image/png, image/gif, image/svg+xml, ...")
    original_height: Int32 | None = Field(description="Height of the original file on Commons (null when blank).")
    original_width: Int32 | None = Field(description="Width of the original file on Commons (null when blank).")
    is_main_image: bool = Field(description="The page's lead image (parsed from 'true'/'false').")
    attribution_passes_lang_id: bool = Field(description="Attribution language matches the page language.")
    page_changed_recently: bool
    context_page_description: str = Field(description="Page summary; may contain newlines.")
    context_section_description: str = Field(description="Text of the image's section; may be empty.")
    license: str | None = Field(description="Per-image licence: always null, WIT rows carry none (the image's "
                                "licence is on its Commons file page).")
    extra_columns: str | None = Field(description="JSON of columns beyond the 17 WIT columns, null when none.")
    source_file: str = Field(description="TSV file, relative to the raw folder.")
    source_row: int = Field(description="Data row in the file, 0-based, header excluded.")
    fetched_from: Literal["http", "mirror"] = Field(description="Where the image bytes came from.")
    http_status: Int16 | None = Field(description="HTTP status of the final response (null from a mirror).")
    final_url: str | None = Field(description="URL after redirects (null from a mirror).")


class WitConfig(Config):
    rows_per_partition: int = Field(default=20_000, gt=0, description="Rows per unit of work.")
    fetch: FetchPolicy = FetchPolicy()
    mirror: str | None = Field(None, description="Folder of earlier downloads, DIR/<host>/<path>, read before the network.")
    skip_mime_types: list[str] = Field(["image/svg+xml"], description="Rows with these mime_type values are "
                                       "filtered without a download (SVG is not rasterised).")
    dedup: list[Literal["url", "image"]] = Field([], description="Drop repeated image URLs / image sha256 (off: one "
                                                 "image on several pages is several rows).")

    @field_validator("skip_mime_types", "dedup", mode="before")
    @classmethod
    def _comma_separated(cls, value):  # --set skip_mime_types=image/svg+xml,image/tiff
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


# ------------------------------------------------------------------------------------------
# The builder


class WitBuilder(Builder):
    name = "wit"
    version = "1.0.0"
    summary = "WIT (Wikipedia-based Image Text): multilingual Wikipedia image-text rows, images fetched by URL"
    Config = WitConfig
    Record = WitRecord
    balance_fields = ("language",)

    def dedup_on(self) -> dict[str, str]:
        columns = {"url": "image_url", "image": "image_info.sha256"}
        return {name: columns[name] for name in self.config.dedup}

    def sample_services(self, raw: Path):
        return loopback.serve_sample(raw)

    def partitions(self, raw: Path) -> list[Partition]:
        root, candidates = raw_files(raw, "wit_v1.*.tsv*")
        files = [(p, m) for p in candidates if (m := _FILE.match(p.name))]
        if not files:
            raise StructuralError(f"{raw}: no WIT files (wit_v1.{{train,val,test}}.all-*.tsv.gz) found")
        full_train = any(m["split"] == "train" and m["part"] for _, m in files)
        notes: dict[int, dict[str, int]] = {}  # partition index -> its notes
        chosen: dict[tuple[str, str], Path] = {}
        for path, m in files:
            if m["sample"] and full_train:
                notes[0] = {"skipped_1percent_sample": 1}  # its rows are in the full train files
                continue
            ident = (m["split"], m["part"] or "1pct")
            if ident in chosen:
                raise StructuralError(f"{path}: the same WIT file as {chosen[ident]}; keep one of them")
            chosen[ident] = path
        headers = {ident: columns.header(path) for ident, path in chosen.items()}  # structure first, then counting
        size = self.config.rows_per_partition
        parts: list[Partition] = []
        for (split, part), path in sorted(chosen.items(), key=lambda kv: (("train", "val", "test").index(kv[0][0]), kv[0][1])):
            common = {"path": str(path), "rel": str(path.relative_to(root)), "split": split, "part": part,
                      "header": headers[(split, part)]}
            starts, count = [], 0
            try:
                with open_binary(path) as f:
                    rows = columns.rows(f)
                    for count, row in enumerate(rows):  # the header is row 0
                        if count % size == 1 or size == 1:
                            starts.append({"offset": row.offset, "first_row": count - 1})
            except OSError as e:  # the file cannot be opened at all
                raise StructuralError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
            first = len(parts)
            for start in starts:
                n = min(size, count - start["first_row"])
                parts.append(Partition(len(parts), split, {**common, **start}, n))
            if rows.damage:  # the rows before the break stand; the note goes with the file's split
                at = len(parts) - 1 if len(parts) > first else 0
                notes.setdefault(at, {})[f"{rows.damage.reason}:{common['rel']}"] = 1
        for at, found in sorted(notes.items()):
            if parts:
                parts[at] = replace(parts[at], notes={**parts[at].notes, **found})
        return parts

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed | Filtered]:
        p, cfg = partition.payload, self.config
        plans: list[Pending | Failed | Filtered] = []
        with open_binary(Path(p["path"])) as f:
            rows = columns.rows(f, p["offset"])
            for i, (_, _, values, problem) in enumerate(islice(rows, partition.input_rows)):
                row_no = p["first_row"] + i
                key, ref = f"{p['split']}_{p['part']}_{row_no:09d}", Origin(p["rel"], row_no)
                if problem:
                    plans.append(Failed(key, problem.reason, problem.message, ref))
                    continue
                try:
                    row = columns.fields(values, p["header"])
                except columns.RowError as e:
                    plans.append(Failed(key, e.reason, e.message, ref))
                    continue
                ref = Origin(p["rel"], row_no, row["image_url"] or None)
                if row["mime_type"] in cfg.skip_mime_types:
                    plans.append(Filtered(key, "skip_mime_types", f"{row['mime_type']} is not rasterised: "
                                          f"{row['image_url'][:200]}", ref))
                    continue
                finish = partial(self._record, key, ref, row_no, row, p, ctx)
                plans.append(Pending(FetchRequest(row["image_url"] or None), finish))
        for i in range(len(plans), partition.input_rows):  # the file broke sooner than when it was counted
            row_no = p["first_row"] + i
            reason, why = (rows.damage.reason, rows.damage.message) if rows.damage else ("file_changed", "file ended")
            plans.append(Failed(f"{p['split']}_{p['part']}_{row_no:09d}", reason,
                                f"{p['rel']}: {why} before this row", Origin(p["rel"], row_no)))
        yield from ctx.fetch_in_order(plans, cfg.fetch, cfg.mirror)  # a URL used by several rows: one download

    def _record(self, key: str, ref: Origin, row_no: int, row: dict, p: dict, ctx: RowContext,
                result: FetchResult) -> Record | Failed:
        if not result.ok:
            return Failed(key, result.reason, result.message, ref)
        img = ctx.image(result.data)
        if not isinstance(img, Image):
            return Failed(key, img.reason, f"{row['image_url'][:200]}: {img.message}", ref)
        return ctx.located(WitRecord(key=key, image=img, split=p["split"], license=None, source_file=p["rel"],
                                     source_row=row_no, fetched_from=result.source,
                                     http_status=result.status if result.source == "http" else None,
                                     final_url=result.final_url if result.source == "http" else None, **row), ref)

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        from .sample import write_sample

        write_sample(raw, n, seed)
