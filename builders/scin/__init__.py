"""SCIN — Skin Condition Image Network (Google Research, 2024).

Raw layout: ``dataset/scin_cases.csv`` (57 columns, one row per case), ``dataset/scin_labels.csv``
(17 columns, dermatologist and Monk-skin-tone labels, one row per case) and ``dataset/images/*.png``.
The two CSVs join one-to-one on ``case_id``, a signed 64-bit number kept as a string. A case has one
to three images. Label columns mix four boolean encodings (``YES``/blank, ``YES``/``NO``,
``True``/``False`` and enum strings) and hold Python literals (single-quoted lists and dicts).

Views: ``case`` (default, one record per case, first image primary) and ``image`` (one record per
image reference, key ``{case_id}_{n}``). ``text`` is built from the labels; ``text_template`` says
which template produced it (see ``TEMPLATES``). Raw format: docs/RAW_FORMATS.md §6.

Hostile input fails one case at a time: a cases row that cannot be read (``row_too_large``,
``row_not_utf8``, ``malformed_row``, from ``vldata.ingest.tabular``) or whose ``case_id`` is not a key
(``invalid_case_id``) is a counted failure; an unusable labels row is noted
(``unusable_label_rows``) and its case fails ``labels_missing``; an ``image_N_path`` that is
absolute, climbs (``..``) or names no regular file under ``images/`` is ``image_path_invalid`` and is
never opened. A file whose stream breaks is noted (``truncated_file:<name>``/``corrupt_file:<name>``)
and its rows before the break stand; rows counted by ``partitions`` that a worker no longer finds
(the file changed meanwhile) fail ``file_changed``.

This module is the dataset's description: its Record views, Config and how a case's rows and images
become records. The CSVs' columns and value parsers are in ``columns``, the synthetic sample in
``sample``. A builder does no I/O plumbing, sharding, retries or format code (the engine does).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import pyarrow as pa
from pydantic import BaseModel, Field

from vldata import Builder, Config, Failed, Image, Origin, Partition, Record, RowContext, StructuralError
from vldata.ingest import image as image_mod
from vldata.ingest.tabular import BadRow
from vldata.layout import safe_key, valid_key

from .columns import CASES, LABELS, TEMPLATES, RowError, case_fields, image_refs, open_csvs

Int8 = Annotated[int, pa.int8()]


class WeightedCondition(BaseModel):
    condition: str
    weight: Annotated[float, pa.float32()]


class CaseImage(BaseModel):
    index: Int8 = Field(description="1, 2 or 3: which image_N_path column.")
    path: str = Field(description="Bucket-relative path as in the CSV (dataset/images/<id>.png).")
    shot_type: str | None = Field(description="CLOSE_UP, AT_AN_ANGLE or AT_DISTANCE.")
    missing: bool = Field(description="True when the image could not be read or verified.")
    problem: str | None = Field(description="Failure reason when missing (image_missing, image_corrupt, ...).")


class ScinFields(Record):
    """Case-level fields shared by both views."""

    case_id: str = Field(description="Signed 64-bit case identifier, as a string.")
    source: str = Field(description="Always SCIN.")
    release: str = Field(description="Dataset release, major.minor.patch.")
    year: Annotated[int, pa.int16()]
    age_group: str | None = Field(description="Self-reported; AGE_18_TO_29 ... AGE_80_OR_ABOVE or AGE_UNKNOWN.")
    sex_at_birth: str | None = Field(description="FEMALE, MALE or OTHER_OR_UNSPECIFIED.")
    fitzpatrick_skin_type: str | None = Field(description="Self-reported FST1..FST6 or NONE_IDENTIFIED.")
    race_ethnicity: list[str] = Field(description="Suffixes of the race_ethnicity_* columns marked YES.")
    combined_race: str | None
    race_ethnicity_two_or_more_after_mitigation: bool
    textures: list[str] = Field(description="Suffixes of the textures_* columns marked YES.")
    body_parts: list[str] = Field(description="Suffixes of the body_parts_* columns marked YES.")
    condition_symptoms: list[str] = Field(description="Suffixes of the condition_symptoms_* columns marked YES.")
    other_symptoms: list[str] = Field(description="Suffixes of the other_symptoms_* columns marked YES.")
    related_category: str | None = Field(description="Contributor's category: ACNE, RASH, GROWTH_OR_MOLE, ...")
    condition_duration: str | None
    derm_gradable_skin_condition: list[str | None] = Field(description="Per dermatologist (3): gradability enum.")
    derm_condition_names: list[str] = Field(description="All labelers' condition names, in file order.")
    derm_condition_confidences: list[Int8] = Field(description="Confidence 1-5, aligned with derm_condition_names.")
    weighted_condition_label: list[WeightedCondition] = Field(
        description="Conditions with normalised weights (empty for unlabeled cases), by weight descending.")
    derm_gradable_fst: list[bool | None] = Field(description="Per dermatologist (3): gradable for FST (YES/NO).")
    derm_fst_labels: list[str | None] = Field(description="Per dermatologist (3): estimated FST1..FST6.")
    monk_gradable_india: bool | None
    monk_gradable_us: bool | None
    monk_skin_tone_india: Int8 | None = Field(description="Monk Skin Tone 1-10 from lay graders in India.")
    monk_skin_tone_us: Int8 | None = Field(description="Monk Skin Tone 1-10 from lay graders in the US.")
    text_template: Literal[tuple(TEMPLATES)] = Field(description="Which template produced `text`.")
    raw: str = Field(description="JSON of the merged original columns of both CSVs, names unchanged.")


class ScinCase(ScinFields):
    image: Image = Field(description="The case's first image (image_1_path).")
    image_2: Image | None = Field(description="Second image, when present and readable.")
    image_3: Image | None = Field(description="Third image, when present and readable.")
    images: list[CaseImage] = Field(description="Every image reference of the case, readable or not.")


class ScinImage(ScinFields):
    image: Image
    image_index: Int8 = Field(description="1, 2 or 3: which image of the case.")
    shot_type: str | None


class ScinConfig(Config):
    view: Literal["case", "image"] = "case"
    rows_per_partition: int = Field(default=256, gt=0, description="Cases per unit of work.")


class ScinBuilder(Builder):
    name = "scin"
    version = "1.0.0"
    summary = "SCIN skin-condition cases (Google, 2024): 1-3 photos per case with dermatologist labels"
    Config = ScinConfig
    Record = ScinCase
    balance_fields = ("related_category", "fitzpatrick_skin_type", "age_group", "sex_at_birth")

    def record_type(self) -> type[Record]:
        return ScinImage if self.config.view == "image" else ScinCase

    def partitions(self, raw: Path) -> list[Partition]:
        root = raw / "dataset" if (raw / "dataset").is_dir() else raw
        for name in (CASES, LABELS):
            if not (root / name).is_file():
                raise StructuralError(f"{root / name}: required file not found")
        cases, labels = open_csvs(root)
        notes: dict[str, int] = {}
        # the join index: case_id -> (offset, line) of its labels row; -1 marks a case_id seen twice
        label_index: dict[str, tuple[int, int]] = {}
        for offset, line, row in labels.scan():
            if isinstance(row, BadRow) or not valid_key(row["case_id"]):  # its case fails labels_missing
                notes["unusable_label_rows"] = notes.get("unusable_label_rows", 0) + 1
                continue
            label_index[row["case_id"]] = (-1, line) if row["case_id"] in label_index else (offset, line)
        size = self.config.rows_per_partition
        parts: list[Partition] = []
        chunk: dict | None = None
        matched: set[str] = set()
        for offset, line, row in cases.scan():
            if chunk is None:
                chunk = {"root": str(root), "offset": offset, "line": line, "n": 0, "images": 0, "labels": {}}
            chunk["n"] += 1
            if isinstance(row, BadRow):
                chunk["images"] += 1  # one failure in either view
            else:
                chunk["images"] += len(image_refs(row))
                if row["case_id"] in label_index:
                    chunk["labels"][row["case_id"]] = label_index[row["case_id"]]
                    matched.add(row["case_id"])
            if chunk["n"] == size:
                parts.append(self._partition(len(parts), chunk))
                chunk = None
        if chunk is not None:
            parts.append(self._partition(len(parts), chunk))
        for name, damage in ((CASES, cases.damage), (LABELS, labels.damage)):
            if damage:  # the file's rows before the damage stand
                notes[f"{damage.reason}:{name}"] = 1
        if len(label_index) - len(matched):
            notes["orphan_label_rows"] = len(label_index) - len(matched)
        if notes and parts:
            parts[0] = replace(parts[0], notes=notes)
        return parts

    def _partition(self, index: int, chunk: dict) -> Partition:
        rows = chunk["n"] if self.config.view == "case" else chunk["images"]
        return Partition(index=index, split="train", input_rows=rows, payload=chunk)

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed]:
        yielded = 0
        for outcome in self._records(partition, ctx):
            yielded += 1
            yield outcome
        for n in range(yielded, partition.input_rows):  # only if the file changed or broke since partitions()
            yield Failed(f"partition{partition.index:05d}_row{n:09d}", "file_changed",
                         f"{CASES} ended before the rows counted when the build started", Origin(CASES))

    def _records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed]:
        chunk = partition.payload
        root = Path(chunk["root"])
        cases, labels = open_csvs(root)
        with open(root / CASES, "rb") as fc, open(root / LABELS, "rb") as fl:
            for line, case in cases.read_at(fc, chunk["offset"], chunk["line"], chunk["n"]):
                ref = Origin(CASES, line)
                if isinstance(case, BadRow):
                    yield Failed(f"scin_cases_line{line:09d}", case.reason, case.message, ref)
                    continue
                refs = image_refs(case)
                case_id = case["case_id"]
                key = case_id if valid_key(case_id) else safe_key(case_id[:64])
                keys = [key] if self.config.view == "case" else [f"{key}_{i}" for i, _, _ in refs]
                try:
                    if not valid_key(case_id):
                        raise RowError("invalid_case_id", f"case_id {case_id[:80]!r} is not [A-Za-z0-9_-]+")
                    where = chunk["labels"].get(case_id)
                    if where is not None and where[0] < 0:
                        raise RowError("labels_ambiguous", f"case_id {case_id} has several rows in {LABELS}")
                    label_row = None if where is None else next(labels.read_at(fl, where[0], where[1], 1), (0, None))[1]
                    if isinstance(label_row, BadRow):  # not indexed as such: only if the file changed
                        raise RowError(label_row.reason, f"{LABELS}:{where[1]}: {label_row.message}")
                    fields = case_fields(case, label_row)
                except RowError as e:
                    yield from (Failed(k, e.reason, e.message, ref) for k in keys)
                    continue
                if case["image_3_shot_type"] and not case["image_3_path"]:
                    ctx.note("shot_type_without_image")
                if self.config.view == "case":
                    yield self._case(fields, refs, root, ctx, ref)
                    continue
                for (index, path, shot), key in zip(refs, keys):
                    img = _load_image(root, path, ctx)
                    if not isinstance(img, Image):
                        yield Failed(key, img.reason, f"{path[:200]}: {img.message}", ref)
                        continue
                    yield ctx.located(ScinImage(**{**fields, "key": key}, image=img, image_index=index, shot_type=shot),
                                      ref)

    def _case(self, fields: dict, refs: list, root: Path, ctx: RowContext, ref: Origin) -> Record | Failed:
        if not refs or refs[0][0] != 1:
            return Failed(fields["key"], "image_missing", "image_1_path is blank", ref)
        loaded, entries = {}, []
        for index, path, shot in refs:
            img = _load_image(root, path, ctx)
            ok = isinstance(img, Image)
            if not ok and index == 1:
                return Failed(fields["key"], img.reason, f"{path[:200]}: {img.message}", ref)
            if not ok:
                ctx.note(f"secondary_{img.reason}")
            loaded[index] = img if ok else None
            entries.append({"index": index, "path": path, "shot_type": shot, "missing": not ok,
                            "problem": None if ok else img.reason})
        return ctx.located(ScinCase(**fields, image=loaded[1], image_2=loaded.get(2), image_3=loaded.get(3),
                                    images=entries), ref)

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        from .sample import write_sample

        write_sample(raw, n, seed)


class _PathProblem(NamedTuple):
    reason: str
    message: str


def _load_image(root: Path, path: str, ctx: RowContext) -> Image | image_mod.ImageFailure | _PathProblem:
    """The image an ``image_N_path`` names (bucket path ``dataset/images/<id>.png``), looked up by its
    basename in ``images/``, or why not. A path that is absolute, climbs (``..``), names no file or is
    not a regular file there is ``image_path_invalid`` and is never read."""
    parts = path.replace("\\", "/").split("/")
    name = parts[-1]
    if path.startswith(("/", "\\")) or ".." in parts or "\0" in path or name in ("", ".") or len(path) > 4096:
        return _PathProblem("image_path_invalid", "not a relative path to an image file")
    local = root / "images" / name
    try:
        st = local.stat()
    except FileNotFoundError:
        return ctx.image(None, f"{path[:200]} not found under {root / 'images'}")
    except OSError as e:
        return _PathProblem("image_path_invalid", f"{type(e).__name__}: {e.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return _PathProblem("image_path_invalid", f"{local} is not a regular file")
    big = image_mod.too_large(name, st.st_size, ctx.config.image)
    if big:
        return big
    try:
        data = local.read_bytes()
    except FileNotFoundError:
        data = None
    except OSError as e:
        return _PathProblem("image_path_invalid", f"{type(e).__name__}: {e.strerror}")
    return ctx.image(data, f"{path[:200]} not found under {root / 'images'}")
