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

The sample (``vldata sample wit RAW``) writes gzipped TSVs for the three splits whose image URLs point
at ``http://127.0.0.1:<port>`` (``vldata.ingest.loopback``), with the real quirks listed in ``write_sample``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import IO, Annotated, Literal
from urllib.parse import quote

import pyarrow as pa
from pydantic import Field, field_validator

from vldata import Builder, Config, Failed, Filtered, Image, Partition, Record, RowContext, StructuralError
from vldata.ingest import loopback
from vldata.ingest.fetch import FetchPolicy, FetchRequest, FetchResult
from vldata.ingest.tabular import open_binary, read_header, rows_with_offsets

Int16 = Annotated[int, pa.int16()]
Int32 = Annotated[int, pa.int32()]

COLUMNS = (
    "language", "page_url", "image_url", "page_title", "section_title", "hierarchical_section_title",
    "caption_reference_description", "caption_attribution_description", "caption_alt_text_description",
    "mime_type", "original_height", "original_width", "is_main_image", "attribution_passes_lang_id",
    "page_changed_recently", "context_page_description", "context_section_description",
)
BOOLEAN_COLUMNS = ("is_main_image", "attribution_passes_lang_id", "page_changed_recently")
INTEGER_COLUMNS = ("original_height", "original_width")
# text = the first non-blank of these; the attribution has its language label removed first
CAPTION_ORDER = ("caption_reference_description", "caption_alt_text_description",
                 "caption_attribution_description", "page_title")
CaptionSource = Literal["caption_reference_description", "caption_alt_text_description",
                        "caption_attribution_description", "page_title", "none"]

_FILE = re.compile(r"^wit_v1\.(?P<split>train|val|test)\.all-(?:(?P<part>\d{5})-of-\d{5}|(?P<sample>1percent_sample))"
                   r"\.tsv(?:\.gz)?$")
# Commons prefixes attribution texts with the language's name: "English: ", "Galego: ", "Русский: ",
# "中文（简体）‎: ". At most three words, starting with a letter, before a colon and a space.
_DIGITS = re.compile(r"[0-9]{1,10}")
_LANGUAGE_LABEL = re.compile(r"^[^\W\d_][^\s:]*(?:[ \-][^\s:]+){0,2}\u200e?:\s+")


def strip_language_label(text: str) -> str:
    """``"English: Lesser bulldog bat"`` -> ``"Lesser bulldog bat"`` (unchanged without a label)."""
    stripped = _LANGUAGE_LABEL.sub("", text, count=1)
    return stripped if stripped.strip() else text


def choose_caption(row: dict[str, str]) -> tuple[str, str]:
    """(text, caption_source) for a row, following ``CAPTION_ORDER``."""
    for column in CAPTION_ORDER:
        value = row[column].strip()
        if column == "caption_attribution_description":
            value = strip_language_label(value).strip()
        if value:
            return value, column
    return "", "none"


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


class _RowError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def _fields(values: list[str], header: list[str]) -> dict:
    """The typed record fields of one TSV row; _RowError when it does not parse."""
    if len(values) != len(header):
        raise _RowError("malformed_row", f"{len(values)} fields, the header has {len(header)}")
    row = dict(zip(header, values))
    fields: dict = {c: row[c] for c in COLUMNS}
    for c in BOOLEAN_COLUMNS:
        if row[c] not in ("true", "false"):
            raise _RowError("malformed_value", f"{c}: expected true or false, got {row[c][:40]!r}")
        fields[c] = row[c] == "true"
    for c in INTEGER_COLUMNS:
        value = row[c].strip()
        if value and (not _DIGITS.fullmatch(value) or int(value) >= 2**31):
            raise _RowError("malformed_value", f"{c}: expected a non-negative integer, got {row[c][:40]!r}")
        fields[c] = int(value) if value else None
    extra = {k: v for k, v in row.items() if k not in COLUMNS}
    fields["extra_columns"] = json.dumps(extra, ensure_ascii=False) if extra else None
    fields["text"], fields["caption_source"] = choose_caption(row)
    return fields


# ------------------------------------------------------------------------------------------
# Reading the TSVs


def _open(path: Path) -> IO[bytes]:
    return open_binary(path)


def _rows(f: IO[bytes]) -> Iterator[tuple[int, list[str]]]:
    """(uncompressed byte offset where the row starts, values) of each row from the current position."""
    return ((offset, values) for offset, _, values in rows_with_offsets(f, "\t", errors="replace"))


def _header(path: Path) -> list[str]:
    """The header of a TSV; StructuralError when it lacks one of the 17 columns."""
    return read_header(path, COLUMNS, delimiter="\t")


@dataclass(frozen=True)
class _Pending:
    key: str
    ref: str
    row: int
    fields: dict


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
        raw = Path(raw)
        root = raw.parent if raw.is_file() else raw
        candidates = [raw] if raw.is_file() else sorted(raw.rglob("wit_v1.*.tsv*"))
        files = [(p, m) for p in candidates if (m := _FILE.match(p.name))]
        if not files:
            raise StructuralError(f"{raw}: no WIT files (wit_v1.{{train,val,test}}.all-*.tsv.gz) found")
        full_train = any(m["split"] == "train" and m["part"] for _, m in files)
        notes: dict[str, int] = {}
        chosen: dict[tuple[str, str], Path] = {}
        for path, m in files:
            if m["sample"] and full_train:
                notes["skipped_1percent_sample"] = 1  # its rows are in the full train files
                continue
            ident = (m["split"], m["part"] or "1pct")
            if ident in chosen:
                raise StructuralError(f"{path}: the same WIT file as {chosen[ident]}; keep one of them")
            chosen[ident] = path
        headers = {ident: _header(path) for ident, path in chosen.items()}  # structure first, then counting
        size = self.config.rows_per_partition
        parts: list[Partition] = []
        for (split, part), path in sorted(chosen.items(), key=lambda kv: (("train", "val", "test").index(kv[0][0]), kv[0][1])):
            common = {"path": str(path), "rel": str(path.relative_to(root)), "split": split, "part": part,
                      "header": headers[(split, part)]}
            starts, count = [], 0
            try:
                with _open(path) as f:
                    rows = _rows(f)
                    next(rows)  # header
                    for count, (offset, _) in enumerate(rows, 1):
                        if count % size == 1 or size == 1:
                            starts.append({"offset": offset, "first_row": count - 1})
            except (OSError, EOFError, csv.Error) as e:  # e.g. a download cut short
                raise StructuralError(f"{path}: unreadable after data row {count} ({type(e).__name__}: {e})") from None
            for start in starts:
                n = min(size, count - start["first_row"])
                parts.append(Partition(len(parts), split, {**common, **start}, n))
        if parts and notes:
            parts[0] = replace(parts[0], notes=notes)
        return parts

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed | Filtered]:
        p, cfg = partition.payload, self.config
        plans: list[_Pending | Failed | Filtered] = []
        with _open(Path(p["path"])) as f:
            f.seek(p["offset"])
            for i, (_, values) in enumerate(islice(_rows(f), partition.input_rows)):
                row_no = p["first_row"] + i
                key, ref = f"{p['split']}_{p['part']}_{row_no:09d}", f"{p['rel']}:{row_no}"
                try:
                    fields = _fields(values, p["header"])
                except _RowError as e:
                    plans.append(Failed(key, e.reason, e.message, ref))
                    continue
                if fields["mime_type"] in cfg.skip_mime_types:
                    plans.append(Filtered(key, "skip_mime_types", f"{fields['mime_type']} is not rasterised: "
                                          f"{fields['image_url'][:200]}", ref))
                    continue
                plans.append(_Pending(key, ref, row_no, fields))
        pending = [pl for pl in plans if isinstance(pl, _Pending)]
        uses: dict[str, int] = {}
        for pl in pending:
            uses[pl.fields["image_url"]] = uses.get(pl.fields["image_url"], 0) + 1
        # each distinct URL is fetched once, in first-use order; a result is kept only until its last use
        urls = list(dict.fromkeys(pl.fields["image_url"] for pl in pending))
        results = ctx.fetch_many((FetchRequest(u or None) for u in urls), cfg.fetch, cfg.mirror)
        held: dict[str, FetchResult] = {}
        for plan in plans:
            if not isinstance(plan, _Pending):
                yield plan
                continue
            url = plan.fields["image_url"]
            result = held[url] if url in held else next(results)
            uses[url] -= 1
            if uses[url]:
                held[url] = result
            else:
                held.pop(url, None)
            yield self._record(plan, result, p, ctx)

    def _record(self, plan: _Pending, result: FetchResult, p: dict, ctx: RowContext) -> Record | Failed:
        if not result.ok:
            return Failed(plan.key, result.reason, result.message, plan.ref)
        img = ctx.image(result.data)
        if not isinstance(img, Image):
            return Failed(plan.key, img.reason, f"{plan.fields['image_url'][:200]}: {img.message}", plan.ref)
        return WitRecord(key=plan.key, image=img, split=p["split"], license=None, source_file=p["rel"],
                         source_row=plan.row, fetched_from=result.source,
                         http_status=result.status if result.source == "http" else None,
                         final_url=result.final_url if result.source == "http" else None, **plan.fields)

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        write_sample(raw, n, seed)


# ------------------------------------------------------------------------------------------
# Sample generator: gzipped TSVs for train/val/test whose image URLs point at 127.0.0.1

_PAGES = [  # (language, page title, section, context) in the style of real rows
    ("es", "Hoz y martillo", "Emblemas", "La hoz y el martillo es un símbolo de la unidad obrera y campesina."),
    ("de", "Kleines Hasenmaul", "", "Das Kleine Hasenmaul ist eine Fledermausart aus der Familie der Hasenmäuler."),
    ("ru", "Украинская гривна", "История", "Гри́вна — национальная валюта Украины."),
    ("en", "Deer Park, Wisconsin", "Geography", "Deer Park is a village in St. Croix County, Wisconsin."),
    ("tg", "Душанбе", "", "Душанбе — пойтахти Ҷумҳурии Тоҷикистон."),
    ("fr", "Phare de Cordouan", "Architecture", "Le phare de Cordouan est un phare situé en mer."),
]
_ATTRIBUTIONS = ["English: Lesser bulldog bat (Noctilio albiventris)", "Galego: Logo do Movemento Galego ao Socialismo",
                 "Русский: Банкнота 1 гривна", "Deutsch: Leuchtturm an der Gironde-Mündung", ""]


def _picture(rng: random.Random, fmt: str) -> tuple[bytes, int, int]:
    from PIL import Image as PILImage

    w, h = rng.randint(24, 96), rng.randint(24, 96)
    img = PILImage.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
    img.paste(tuple(rng.randint(0, 255) for _ in range(3)), (w // 4, h // 4, w // 2, h // 2))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue(), w, h


def write_sample(raw: Path, n: int = 12, seed: int = 0) -> None:
    """Write ``raw/wit_v1.train.all-0000{0,1}-of-00002.tsv.gz`` (``n`` rows each) and one val and one
    test file (``max(3, n // 4)`` rows each), the images under ``raw/site`` and ``raw/loopback.json``.

    Quirks reproduced (train file 0, rows 0-6): a reference description with an embedded newline
    (quoted); a page titled ``NA`` with no caption but the title; ``false`` booleans; an attribution
    with an ``English: `` label and no reference/alt text; an SVG (``image/svg+xml``); a URL that
    404s; a GIF; an image used on two pages (rows 0 and 7 of train file 0); a percent-encoded
    non-ASCII file name. The other rows are random.
    """
    rng = random.Random(seed)
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    site = raw / "site"
    commons = site / "wikipedia" / "commons"
    port = loopback.free_port()
    base = f"http://127.0.0.1:{port}"

    def image(name: str, fmt: str = "JPEG") -> tuple[str, str, int, int]:
        """Serve a new picture where Commons would: commons/<md5[0]>/<md5[:2]>/<name>."""
        data, w, h = _picture(rng, fmt)
        digest = hashlib.md5(name.encode()).hexdigest()
        folder = commons / digest[0] / digest[:2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        mime = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif"}[fmt]
        return f"{base}/wikipedia/commons/{digest[0]}/{digest[:2]}/{quote(name)}", mime, h, w

    def row(language: str, title: str, section: str, context: str, url: str, mime: str, h: int | str, w: int | str,
            reference: str = "", attribution: str = "", alt: str = "", flags: str = "true,false,true") -> list[str]:
        main, lang_id, changed = flags.split(",")
        page_url = f"https://{language}.wikipedia.org/wiki/{quote(title.replace(' ', '_'))}"
        hierarchical = " / ".join(x for x in (title, section) if x)
        return [language, page_url, url, title, section, hierarchical, reference, attribution, alt, mime, str(h),
                str(w), main, lang_id, changed, context, ""]

    shared = image("MGS_logo.jpg")
    special = [
        row("es", "Hoz y martillo", "Emblemas", _PAGES[0][3] + "\nEl símbolo se usó en la Unión Soviética.", *shared,
            reference="Logo del MGS\nen Galicia", attribution=_ATTRIBUTIONS[1], flags="false,false,true"),
        row("en", "NA", "", "NA is a page title too.", *image("NA_logo.png", "PNG"), flags="true,true,false"),
        row("de", "Kleines Hasenmaul", "", _PAGES[1][3], *image("Noctilio_albiventris.jpg"),
            attribution=_ATTRIBUTIONS[0], flags="true,false,false"),
        row("en", "Flag of Europe", "", "The Flag of Europe.", f"{base}/wikipedia/commons/b/b7/Flag_of_Europe.svg",
            "image/svg+xml", 600, 900, reference="The flag of Europe"),
        row("ru", "Украинская гривна", "История", _PAGES[2][3], f"{base}/wikipedia/commons/0/0f/Deleted_file.jpg",
            "image/jpeg", 193, 200, alt="Банкнота"),
        row("fr", "Phare de Cordouan", "", _PAGES[5][3], *image("Cordouan.gif", "GIF"), alt="Le phare"),
        row("tg", "Душанбе", "", _PAGES[4][3], *image("Дом_правительства.jpg"), reference="Дом правительства"),
        row("de", "Logo", "Galerie", "Ein Logo.", *shared, attribution="Galego: Logo do MGS"),
    ]
    files = {("train", 0, 2): n, ("train", 1, 2): n, ("val", 0, 1): max(3, n // 4), ("test", 0, 1): max(3, n // 4)}
    for (split, part, of), count in files.items():
        rows = list(special[:count]) if (split, part) == ("train", 0) else []
        while len(rows) < count:
            language, title, section, context = rng.choice(_PAGES)
            fmt = "PNG" if len(rows) % 2 else "JPEG"
            url, mime, h, w = image(f"{title.replace(' ', '_')}_{split}{part}_{len(rows)}.{fmt.lower()}", fmt)
            rows.append(row(language, title, section, context, url, mime, h, w,
                            reference=rng.choice(["", f"{title} ({len(rows)})"]),
                            attribution=rng.choice(_ATTRIBUTIONS),
                            flags=",".join(rng.choice(["true", "false"]) for _ in range(3))))
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
        name = f"wit_v1.{split}.all-{part:05d}-of-{of:05d}.tsv.gz"
        with gzip.GzipFile(raw / name, "wb", mtime=0) as f:
            f.write(buf.getvalue().encode("utf-8"))
    loopback.write_service(raw, port, "site")
