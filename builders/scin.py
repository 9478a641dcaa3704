"""SCIN — Skin Condition Image Network (Google Research, 2024).

Raw layout: ``dataset/scin_cases.csv`` (57 columns, one row per case), ``dataset/scin_labels.csv``
(17 columns, dermatologist and Monk-skin-tone labels, one row per case) and ``dataset/images/*.png``.
The two CSVs join one-to-one on ``case_id``, a signed 64-bit number kept as a string. A case has one
to three images. Label columns mix four boolean encodings (``YES``/blank, ``YES``/``NO``,
``True``/``False`` and enum strings) and hold Python literals (single-quoted lists and dicts).

Views: ``case`` (default, one record per case, first image primary) and ``image`` (one record per
image reference, key ``{case_id}_{n}``). ``text`` is built from the labels; ``text_template`` says
which template produced it (see ``TEMPLATES``).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import random
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Annotated, Literal

import pyarrow as pa
from pydantic import BaseModel, Field

from vldata import Builder, Config, Failed, Image, Partition, Record, RowContext, StructuralError
from vldata.ingest.tabular import read_header, rows_with_offsets

CASES = "scin_cases.csv"
LABELS = "scin_labels.csv"

_MULTI_SELECT = ("race_ethnicity", "textures", "body_parts", "condition_symptoms", "other_symptoms")
CASE_COLUMNS = (
    "case_id", "source", "release", "year", "age_group", "sex_at_birth", "fitzpatrick_skin_type",
    "race_ethnicity_american_indian_or_alaska_native", "race_ethnicity_asian",
    "race_ethnicity_black_or_african_american", "race_ethnicity_hispanic_latino_or_spanish_origin",
    "race_ethnicity_middle_eastern_or_north_african", "race_ethnicity_native_hawaiian_or_pacific_islander",
    "race_ethnicity_white", "race_ethnicity_other_race", "race_ethnicity_prefer_not_to_answer",
    "textures_raised_or_bumpy", "textures_flat", "textures_rough_or_flaky", "textures_fluid_filled",
    "body_parts_head_or_neck", "body_parts_arm", "body_parts_palm", "body_parts_back_of_hand",
    "body_parts_torso_front", "body_parts_torso_back", "body_parts_genitalia_or_groin",
    "body_parts_buttocks", "body_parts_leg", "body_parts_foot_top_or_side", "body_parts_foot_sole",
    "body_parts_other",
    "condition_symptoms_bothersome_appearance", "condition_symptoms_bleeding",
    "condition_symptoms_increasing_size", "condition_symptoms_darkening", "condition_symptoms_itching",
    "condition_symptoms_burning", "condition_symptoms_pain", "condition_symptoms_no_relevant_experience",
    "other_symptoms_fever", "other_symptoms_chills", "other_symptoms_fatigue", "other_symptoms_joint_pain",
    "other_symptoms_mouth_sores", "other_symptoms_shortness_of_breath", "other_symptoms_no_relevant_symptoms",
    "related_category", "condition_duration",
    "image_1_path", "image_2_path", "image_3_path",
    "image_1_shot_type", "image_2_shot_type", "image_3_shot_type",
    "combined_race", "race_ethnicity_two_or_more_after_mitigation",
)
LABEL_COLUMNS = (
    "case_id",
    "dermatologist_gradable_for_skin_condition_1", "dermatologist_gradable_for_skin_condition_2",
    "dermatologist_gradable_for_skin_condition_3",
    "dermatologist_skin_condition_on_label_name", "dermatologist_skin_condition_confidence",
    "weighted_skin_condition_label",
    "dermatologist_gradable_for_fitzpatrick_skin_type_1", "dermatologist_gradable_for_fitzpatrick_skin_type_2",
    "dermatologist_gradable_for_fitzpatrick_skin_type_3",
    "dermatologist_fitzpatrick_skin_type_label_1", "dermatologist_fitzpatrick_skin_type_label_2",
    "dermatologist_fitzpatrick_skin_type_label_3",
    "gradable_for_monk_skin_tone_india", "gradable_for_monk_skin_tone_us",
    "monk_skin_tone_label_india", "monk_skin_tone_label_us",
)
# dataset_schema.md documents this column without "_on_"; the files have "_on_". Accept both.
_LABEL_ALIASES = {"dermatologist_skin_condition_label_name": "dermatologist_skin_condition_on_label_name"}

TEMPLATES = {
    "weighted_conditions": "A photo of a skin condition: {conditions}.",  # top 3 by weight, '; '-separated
    "reported_category": "A photo of a skin concern the contributor described as {category}.",
    "unlabeled": "A photo of a skin concern.",
}

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


class _RowError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


# ------------------------------------------------------------------------------------------
# Column parsers: the four boolean encodings and the Python literals


def _blank(v: str) -> str | None:
    return v if v != "" else None


def _yes_blank(column: str, v: str) -> bool:
    if v in ("YES", ""):
        return v == "YES"
    raise _RowError("malformed_value", f"{column}: expected YES or blank, got {v!r}")


def _yes_no(column: str, v: str) -> bool | None:
    if v in ("YES", "NO", ""):
        return None if v == "" else v == "YES"
    raise _RowError("malformed_value", f"{column}: expected YES, NO or blank, got {v!r}")


def _true_false(column: str, v: str) -> bool | None:
    low = v.lower()
    if low in ("true", "false", ""):
        return None if low == "" else low == "true"
    raise _RowError("malformed_value", f"{column}: expected True, False or blank, got {v!r}")


def _monk(column: str, v: str) -> int | None:
    if v == "":
        return None
    try:
        f = float(v)  # written as "2" or "2.0"
    except ValueError:
        raise _RowError("malformed_value", f"{column}: expected a number 1-10, got {v!r}") from None
    if not f.is_integer() or not 1 <= f <= 10:
        raise _RowError("malformed_value", f"{column}: expected a number 1-10, got {v!r}")
    return int(f)


def _literal(column: str, v: str, kind: type, empty):
    if v.strip() == "":
        return empty
    try:
        value = ast.literal_eval(v)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise _RowError("malformed_label_literal", f"{column}: not a Python literal ({type(e).__name__}): {v[:80]!r}") from None
    if not isinstance(value, kind):
        raise _RowError("malformed_label_literal", f"{column}: expected a {kind.__name__} literal, got {type(value).__name__}")
    return value


def _multi_select(row: dict, group: str) -> list[str]:
    prefix = group + "_"
    return [c[len(prefix):] for c in CASE_COLUMNS
            if c.startswith(prefix) and c != "race_ethnicity_two_or_more_after_mitigation"
            and _yes_blank(c, row[c])]


def _labels(row: dict | None) -> dict:
    """Record fields from a scin_labels.csv row (None: no labels row)."""
    if row is None:
        raise _RowError("labels_missing", f"case has no row in {LABELS}")
    names = _literal("dermatologist_skin_condition_on_label_name", row["dermatologist_skin_condition_on_label_name"], list, [])
    confidences = _literal("dermatologist_skin_condition_confidence", row["dermatologist_skin_condition_confidence"], list, [])
    weighted = _literal("weighted_skin_condition_label", row["weighted_skin_condition_label"], dict, {})
    if not all(isinstance(n, str) for n in names):
        raise _RowError("malformed_label_literal", "dermatologist_skin_condition_on_label_name: items must be strings")
    if not all(isinstance(c, int) and 1 <= c <= 5 for c in confidences):
        raise _RowError("malformed_label_literal", "dermatologist_skin_condition_confidence: items must be ints 1-5")
    if not all(isinstance(k, str) and isinstance(w, (int, float)) for k, w in weighted.items()):
        raise _RowError("malformed_label_literal", "weighted_skin_condition_label: expected {str: number}")
    ordered = sorted(weighted.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "derm_gradable_skin_condition": [_blank(row[f"dermatologist_gradable_for_skin_condition_{i}"]) for i in (1, 2, 3)],
        "derm_condition_names": names,
        "derm_condition_confidences": confidences,
        "weighted_condition_label": [{"condition": k, "weight": float(w)} for k, w in ordered],
        "derm_gradable_fst": [_yes_no(c, row[c]) for c in
                              (f"dermatologist_gradable_for_fitzpatrick_skin_type_{i}" for i in (1, 2, 3))],
        "derm_fst_labels": [_blank(row[f"dermatologist_fitzpatrick_skin_type_label_{i}"]) for i in (1, 2, 3)],
        "monk_gradable_india": _true_false("gradable_for_monk_skin_tone_india", row["gradable_for_monk_skin_tone_india"]),
        "monk_gradable_us": _true_false("gradable_for_monk_skin_tone_us", row["gradable_for_monk_skin_tone_us"]),
        "monk_skin_tone_india": _monk("monk_skin_tone_label_india", row["monk_skin_tone_label_india"]),
        "monk_skin_tone_us": _monk("monk_skin_tone_label_us", row["monk_skin_tone_label_us"]),
    }


def _text(fields: dict) -> tuple[str, str]:
    if fields["weighted_condition_label"]:
        top = [w["condition"] for w in fields["weighted_condition_label"][:3]]
        return TEMPLATES["weighted_conditions"].format(conditions="; ".join(top)), "weighted_conditions"
    if fields["related_category"]:
        category = fields["related_category"].replace("_", " ").lower()
        return TEMPLATES["reported_category"].format(category=category), "reported_category"
    return TEMPLATES["unlabeled"], "unlabeled"


def _case_fields(case: dict, labels: dict | None) -> dict:
    try:
        year = int(case["year"])
    except ValueError:
        raise _RowError("malformed_value", f"year: expected an integer, got {case['year']!r}") from None
    fields = {
        "key": case["case_id"], "case_id": case["case_id"], "source": case["source"], "release": case["release"],
        "year": year, "age_group": _blank(case["age_group"]), "sex_at_birth": _blank(case["sex_at_birth"]),
        "fitzpatrick_skin_type": _blank(case["fitzpatrick_skin_type"]),
        "combined_race": _blank(case["combined_race"]),
        "race_ethnicity_two_or_more_after_mitigation": _yes_blank(
            "race_ethnicity_two_or_more_after_mitigation", case["race_ethnicity_two_or_more_after_mitigation"]),
        "related_category": _blank(case["related_category"]),
        "condition_duration": _blank(case["condition_duration"]),
        **{group: _multi_select(case, group) for group in _MULTI_SELECT},
        **_labels(labels),
    }
    fields["text"], fields["text_template"] = _text(fields)
    merged = dict(case)
    merged.update({k: v for k, v in (labels or {}).items() if k != "case_id"})
    fields["raw"] = json.dumps(merged, ensure_ascii=False)
    return fields


# ------------------------------------------------------------------------------------------
# The builder


class _CsvFile:
    """A CSV with its header checked, read row by row with row offsets (``vldata.ingest.tabular``), so
    that partitions carry offsets instead of rows and memory stays flat in the number of rows."""

    def __init__(self, path: Path, required: tuple[str, ...], aliases: dict[str, str]):
        self.path = path
        self.header = read_header(path, required, aliases)

    def _dict(self, values: list[str]) -> dict:
        values = values + [""] * (len(self.header) - len(values))
        return dict(zip(self.header, values))

    def scan(self) -> Iterator[tuple[int, int, dict]]:
        """Every data row: (byte offset, line number, row dict)."""
        with open(self.path, "rb") as f:
            rows = rows_with_offsets(f)
            next(rows, None)  # header
            for offset, line, values in rows:
                yield offset, line, self._dict(values)

    def read_at(self, f, offset: int, line: int, n: int) -> Iterator[tuple[int, dict]]:
        """``n`` rows starting at ``offset`` of the open binary file ``f``: (line number, row dict)."""
        f.seek(offset)
        for _, line_no, values in islice(rows_with_offsets(f, first_line=line), n):
            yield line_no, self._dict(values)


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
        cases = _CsvFile(root / CASES, CASE_COLUMNS, {})
        labels = _CsvFile(root / LABELS, LABEL_COLUMNS, _LABEL_ALIASES)
        # the join index: case_id -> (offset, line) of its labels row; -1 marks a case_id seen twice
        label_index: dict[str, tuple[int, int]] = {}
        for offset, line, row in labels.scan():
            label_index[row["case_id"]] = (-1, line) if row["case_id"] in label_index else (offset, line)
        size, view = self.config.rows_per_partition, self.config.view
        parts: list[Partition] = []
        chunk: dict | None = None
        matched: set[str] = set()
        for offset, line, row in cases.scan():
            if chunk is None:
                chunk = {"root": str(root), "offset": offset, "line": line, "n": 0, "images": 0, "labels": {}}
            chunk["n"] += 1
            chunk["images"] += len(_image_refs(row))
            if row["case_id"] in label_index:
                chunk["labels"][row["case_id"]] = label_index[row["case_id"]]
                matched.add(row["case_id"])
            if chunk["n"] == size:
                parts.append(self._partition(len(parts), chunk))
                chunk = None
        if chunk is not None:
            parts.append(self._partition(len(parts), chunk))
        orphans = len(label_index) - len(matched)
        if orphans and parts:
            parts[0] = replace(parts[0], notes={"orphan_label_rows": orphans})
        return parts

    def _partition(self, index: int, chunk: dict) -> Partition:
        rows = chunk["n"] if self.config.view == "case" else chunk["images"]
        return Partition(index=index, split="train", input_rows=rows, payload=chunk)

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed]:
        chunk = partition.payload
        root = Path(chunk["root"])
        cases = _CsvFile(root / CASES, CASE_COLUMNS, {})
        labels = _CsvFile(root / LABELS, LABEL_COLUMNS, _LABEL_ALIASES)
        with open(root / CASES, "rb") as fc, open(root / LABELS, "rb") as fl:
            for line, case in cases.read_at(fc, chunk["offset"], chunk["line"], chunk["n"]):
                ref = f"{CASES}:{line}"
                refs = _image_refs(case)
                keys = [case["case_id"]] if self.config.view == "case" else [f"{case['case_id']}_{i}" for i, _, _ in refs]
                try:
                    where = chunk["labels"].get(case["case_id"])
                    if where is not None and where[0] < 0:
                        raise _RowError("labels_ambiguous", f"case_id {case['case_id']} has several rows in {LABELS}")
                    label_row = None if where is None else next(labels.read_at(fl, where[0], where[1], 1))[1]
                    fields = _case_fields(case, label_row)
                except _RowError as e:
                    yield from (Failed(k, e.reason, e.message, ref) for k in keys)
                    continue
                if case["image_3_shot_type"] and not case["image_3_path"]:
                    ctx.note("shot_type_without_image")
                if self.config.view == "case":
                    yield self._case(fields, refs, root, ctx, ref)
                    continue
                for (index, path, shot), key in zip(refs, keys):
                    img = ctx.image(_read_image(root, path), f"{path} not found under {root / 'images'}")
                    if not isinstance(img, Image):
                        yield Failed(key, img.reason, f"{path}: {img.message}", ref)
                        continue
                    yield ScinImage(**{**fields, "key": key}, image=img, image_index=index, shot_type=shot)

    def _case(self, fields: dict, refs: list, root: Path, ctx: RowContext, ref: str) -> Record | Failed:
        if not refs or refs[0][0] != 1:
            return Failed(fields["key"], "image_missing", "image_1_path is blank", ref)
        loaded, entries = {}, []
        for index, path, shot in refs:
            img = ctx.image(_read_image(root, path), f"{path} not found under {root / 'images'}")
            ok = isinstance(img, Image)
            if not ok and index == 1:
                return Failed(fields["key"], img.reason, f"{path}: {img.message}", ref)
            if not ok:
                ctx.note(f"secondary_{img.reason}")
            loaded[index] = img if ok else None
            entries.append({"index": index, "path": path, "shot_type": shot, "missing": not ok,
                            "problem": None if ok else img.reason})
        return ScinCase(**fields, image=loaded[1], image_2=loaded.get(2), image_3=loaded.get(3), images=entries)

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        write_sample(raw, n, seed)


def _image_refs(case: dict) -> list[tuple[int, str, str | None]]:
    return [(i, case[f"image_{i}_path"], _blank(case[f"image_{i}_shot_type"]))
            for i in (1, 2, 3) if case[f"image_{i}_path"]]


def _read_image(root: Path, path: str) -> bytes | None:
    """Bytes of an image referenced by its bucket path (``dataset/images/<id>.png``), or None."""
    local = root / "images" / os.path.basename(path)
    try:
        return local.read_bytes()
    except FileNotFoundError:
        return None


# ------------------------------------------------------------------------------------------
# Sample generator: a small synthetic input in the real layout, with the real quirks

_CONDITIONS = ["Eczema", "Inflicted skin lesions", "Irritant Contact Dermatitis", "Impetigo", "Herpes Zoster",
               "Acute dermatitis, NOS", "CD - Contact dermatitis", "O/E - ecchymoses present", "Psoriasis",
               "Tinea", "Urticaria", "Acne", "Folliculitis", "Insect Bite", "Allergic Contact Dermatitis"]
_AGES = ["AGE_18_TO_29", "AGE_30_TO_39", "AGE_40_TO_49", "AGE_50_TO_59", "AGE_60_TO_69", "AGE_70_TO_79",
         "AGE_80_OR_ABOVE", "AGE_UNKNOWN", "AGE_UNKNOWN", "AGE_UNKNOWN"]
_CATEGORIES = ["ACNE", "GROWTH_OR_MOLE", "HAIR_LOSS", "OTHER_HAIR_PROBLEM", "NAIL_PROBLEM", "PIGMENTARY_PROBLEM",
               "RASH", "RASH", "LOOKS_HEALTHY", "OTHER_ISSUE_DESCRIPTION", ""]
_DURATIONS = ["ONE_DAY", "LESS_THAN_ONE_WEEK", "ONE_TO_FOUR_WEEKS", "ONE_TO_THREE_MONTHS", "THREE_TO_TWELVE_MONTHS",
              "MORE_THAN_ONE_YEAR", "MORE_THAN_FIVE_YEARS", "SINCE_CHILDHOOD", "UNKNOWN", ""]
_SHOTS = ["CLOSE_UP", "AT_AN_ANGLE", "AT_DISTANCE"]
_GRADABLE = ["DEFAULT_YES_IMAGE_QUALITY_SUFFICIENT"] * 6 + ["NO_IMAGE_QUALITY_INSUFFICIENT"] * 4 + [
    "YES_IMAGE_QUALITY_SUFFICIENT_NO_DISCERNIBLE_PATHOLOGY"]


def _png(rng: random.Random, mode: str = "RGB") -> bytes:
    import io

    from PIL import Image as PILImage
    from PIL import ImageDraw

    w, h = rng.randint(48, 128), rng.randint(48, 128)
    skin = tuple(rng.randint(90, 240) for _ in range(3))
    img = PILImage.new("RGB", (w, h), skin)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 5)):
        x, y, r = rng.randint(0, w), rng.randint(0, h), rng.randint(3, 20)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(max(0, c - rng.randint(20, 90)) for c in skin))
    if mode == "I;16":
        img = img.convert("L").convert("I").point(lambda v: v * 257).convert("I;16")
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_sample(raw: Path, n: int = 24, seed: int = 0) -> None:
    """Write ``raw/dataset/{scin_cases.csv, scin_labels.csv, images/*.png}`` with ``n`` cases.

    Quirks reproduced from the real files: signed 64-bit ids; YES/blank, YES/NO and True/False
    columns; AGE_UNKNOWN and NONE_IDENTIFIED; single-quoted Python literals with commas inside
    condition names; ``{}`` for unlabeled cases; Monk tones written as ``2.0``; an image shared by
    two cases; an image_3_shot_type without image_3_path; one primary and one third image missing
    from images/; a 16-bit, a palette and an RGBA PNG; labels rows in another order than cases.
    """
    rng = random.Random(seed)
    root = Path(raw) / "dataset"
    (root / "images").mkdir(parents=True, exist_ok=True)
    ids = set()

    def new_id() -> str:
        while True:
            v = str(rng.randint(-(2**63), 2**63 - 1))
            if v not in ids:
                ids.add(v)
                return v

    cases, labels = [], []
    shared_image = None
    for c in range(n):
        case_id = new_id()
        n_images = {4: 3, 8: 2}.get(c, rng.choice([1, 1, 2, 3, 3]))
        row = {col: "" for col in CASE_COLUMNS}
        row.update(case_id=case_id, source="SCIN", release="1.0.0", year="2023", age_group=rng.choice(_AGES),
                   sex_at_birth=rng.choice(["FEMALE", "MALE", "OTHER_OR_UNSPECIFIED"]),
                   fitzpatrick_skin_type=rng.choice(["FST1", "FST2", "FST3", "FST4", "FST5", "FST6", "NONE_IDENTIFIED", ""]),
                   related_category=rng.choice(_CATEGORIES), condition_duration=rng.choice(_DURATIONS))
        for col in CASE_COLUMNS:
            if col.startswith(_MULTI_SELECT[1:]) and rng.random() < 0.25:
                row[col] = "YES"
        races = [c for c in CASE_COLUMNS if c.startswith("race_ethnicity_") and "mitigation" not in c]
        for col in rng.sample(races, rng.choice([0, 1, 1, 1, 1, 2])):  # mostly one answer, sometimes two
            row[col] = "YES"
        race = [col for col in CASE_COLUMNS if col.startswith("race_ethnicity_") and row[col] == "YES"]
        row["combined_race"] = race[0][len("race_ethnicity_"):].upper() if len(race) == 1 else ""
        row["race_ethnicity_two_or_more_after_mitigation"] = "YES" if len(race) > 1 else ""
        for i in range(1, n_images + 1):
            image_id = new_id()
            path = f"dataset/images/{image_id}.png"
            if c == 3 and i == 1 and shared_image:  # the same file referenced by two cases (real: 15 files, 42 refs)
                path = shared_image
            else:
                mode = {5: "I;16", 6: "P", 7: "RGBA"}.get(c, "RGB") if i == 1 else "RGB"
                missing = (c == 2 and i == 1) or (c == 4 and i == 3 and n_images == 3)
                if not missing:
                    (root / "images" / f"{image_id}.png").write_bytes(_png(rng, mode))
            if c == 1 and i == 1:
                shared_image = path
            row[f"image_{i}_path"] = path
            row[f"image_{i}_shot_type"] = rng.choice(_SHOTS)
        if c == 8:  # a shot type without its image path (real audit: 2,743 vs 2,744)
            row["image_3_shot_type"] = "CLOSE_UP"
        cases.append(row)

        lab = {col: "" for col in LABEL_COLUMNS}
        lab["case_id"] = case_id
        n_labelers = rng.choice([0, 1, 2, 3])
        names, confs = [], []
        for k in range(1, n_labelers + 1):
            lab[f"dermatologist_gradable_for_skin_condition_{k}"] = rng.choice(_GRADABLE)
            picks = rng.sample(_CONDITIONS, rng.randint(1, 3))
            names += picks
            confs += [rng.randint(1, 5) for _ in picks]
            lab[f"dermatologist_gradable_for_fitzpatrick_skin_type_{k}"] = rng.choice(["YES", "YES", "NO"])
            if lab[f"dermatologist_gradable_for_fitzpatrick_skin_type_{k}"] == "YES":
                lab[f"dermatologist_fitzpatrick_skin_type_label_{k}"] = rng.choice(["FST1", "FST2", "FST3", "FST4", "FST5", "FST6"])
        weights: dict[str, float] = {}
        for name in names:
            weights[name] = weights.get(name, 0) + rng.random()
        total = sum(weights.values()) or 1
        lab["dermatologist_skin_condition_on_label_name"] = repr(names)
        lab["dermatologist_skin_condition_confidence"] = repr(confs)
        lab["weighted_skin_condition_label"] = repr({k: round(v / total, 2) for k, v in weights.items()})
        for pool in ("india", "us"):
            if rng.random() < 0.8:
                lab[f"gradable_for_monk_skin_tone_{pool}"] = rng.choice(["True", "True", "False"])
                lab[f"monk_skin_tone_label_{pool}"] = f"{rng.randint(1, 10)}.0"
        labels.append(lab)
    rng.shuffle(labels)
    for name, columns, rows in ((CASES, CASE_COLUMNS, cases), (LABELS, LABEL_COLUMNS, labels)):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
