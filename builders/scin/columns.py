"""SCIN's two CSV files: their columns, reading them by byte offset, and how a row's values become
record fields.

The 57 columns of ``scin_cases.csv`` and the 17 of ``scin_labels.csv`` are declared here once (the
sample generator and the tests use these tuples). The parsers turn the four boolean encodings
(``YES``/blank, ``YES``/``NO``, ``True``/``False``, enum strings), the Monk tones and the Python
literals (single-quoted lists and dicts) into typed values, raising ``RowError`` for a row that
cannot become a record. See docs/RAW_FORMATS.md §6.

It must not load images, build Records or decide partitions (the builder in ``__init__`` does), and
does no sharding, retries or format code.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from vldata.ingest.tabular import BadRow, Damage, Rows, read_header

CASES = "scin_cases.csv"
LABELS = "scin_labels.csv"

# the multi-select questions: one YES/blank column per answer, named <question>_<answer>
MULTI_SELECT = {
    "race_ethnicity": ("american_indian_or_alaska_native", "asian", "black_or_african_american",
                       "hispanic_latino_or_spanish_origin", "middle_eastern_or_north_african",
                       "native_hawaiian_or_pacific_islander", "white", "other_race", "prefer_not_to_answer"),
    "textures": ("raised_or_bumpy", "flat", "rough_or_flaky", "fluid_filled"),
    "body_parts": ("head_or_neck", "arm", "palm", "back_of_hand", "torso_front", "torso_back",
                   "genitalia_or_groin", "buttocks", "leg", "foot_top_or_side", "foot_sole", "other"),
    "condition_symptoms": ("bothersome_appearance", "bleeding", "increasing_size", "darkening", "itching",
                           "burning", "pain", "no_relevant_experience"),
    "other_symptoms": ("fever", "chills", "fatigue", "joint_pain", "mouth_sores", "shortness_of_breath",
                       "no_relevant_symptoms"),
}
CASE_COLUMNS = (  # in file order
    "case_id", "source", "release", "year", "age_group", "sex_at_birth", "fitzpatrick_skin_type",
    *(f"{question}_{answer}" for question, answers in MULTI_SELECT.items() for answer in answers),
    "related_category", "condition_duration",
    "image_1_path", "image_2_path", "image_3_path", "image_1_shot_type", "image_2_shot_type", "image_3_shot_type",
    "combined_race", "race_ethnicity_two_or_more_after_mitigation",
)
LABEL_COLUMNS = (  # in file order; the _1/_2/_3 columns are one per dermatologist
    "case_id", *(f"dermatologist_gradable_for_skin_condition_{i}" for i in (1, 2, 3)),
    "dermatologist_skin_condition_on_label_name", "dermatologist_skin_condition_confidence",
    "weighted_skin_condition_label",
    *(f"dermatologist_gradable_for_fitzpatrick_skin_type_{i}" for i in (1, 2, 3)),
    *(f"dermatologist_fitzpatrick_skin_type_label_{i}" for i in (1, 2, 3)),
    "gradable_for_monk_skin_tone_india", "gradable_for_monk_skin_tone_us",
    "monk_skin_tone_label_india", "monk_skin_tone_label_us",
)
# dataset_schema.md documents this column without "_on_"; the files have "_on_". Accept both.
LABEL_ALIASES = {"dermatologist_skin_condition_label_name": "dermatologist_skin_condition_on_label_name"}

TEMPLATES = {
    "weighted_conditions": "A photo of a skin condition: {conditions}.",  # top 3 by weight, '; '-separated
    "reported_category": "A photo of a skin concern the contributor described as {category}.",
    "unlabeled": "A photo of a skin concern.",
}


class RowError(Exception):
    """A case row that cannot become a record: ``reason`` is its failure reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


# ------------------------------------------------------------------------------------------
# Column parsers: the four boolean encodings and the Python literals


def blank_none(v: str) -> str | None:
    return v if v != "" else None


def _yes_blank(column: str, v: str) -> bool:
    if v in ("YES", ""):
        return v == "YES"
    raise RowError("malformed_value", f"{column}: expected YES or blank, got {v!r}")


def _yes_no(column: str, v: str) -> bool | None:
    if v in ("YES", "NO", ""):
        return None if v == "" else v == "YES"
    raise RowError("malformed_value", f"{column}: expected YES, NO or blank, got {v!r}")


def _true_false(column: str, v: str) -> bool | None:
    low = v.lower()
    if low in ("true", "false", ""):
        return None if low == "" else low == "true"
    raise RowError("malformed_value", f"{column}: expected True, False or blank, got {v!r}")


def _monk(column: str, v: str) -> int | None:
    if v == "":
        return None
    try:
        f = float(v)  # written as "2" or "2.0"
    except ValueError:
        raise RowError("malformed_value", f"{column}: expected a number 1-10, got {v!r}") from None
    if not f.is_integer() or not 1 <= f <= 10:
        raise RowError("malformed_value", f"{column}: expected a number 1-10, got {v!r}")
    return int(f)


def _literal(column: str, v: str, kind: type, empty):
    if v.strip() == "":
        return empty
    try:
        value = ast.literal_eval(v)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise RowError("malformed_label_literal", f"{column}: not a Python literal ({type(e).__name__}): {v[:80]!r}") from None
    if not isinstance(value, kind):
        raise RowError("malformed_label_literal", f"{column}: expected a {kind.__name__} literal, got {type(value).__name__}")
    return value


def _multi_select(row: dict, question: str) -> list[str]:
    columns = {answer: f"{question}_{answer}" for answer in MULTI_SELECT[question]}
    return [answer for answer, column in columns.items() if _yes_blank(column, row[column])]


def _labels(row: dict | None) -> dict:
    """Record fields from a scin_labels.csv row (None: no labels row)."""
    if row is None:
        raise RowError("labels_missing", f"case has no row in {LABELS}")
    names = _literal("dermatologist_skin_condition_on_label_name", row["dermatologist_skin_condition_on_label_name"], list, [])
    confidences = _literal("dermatologist_skin_condition_confidence", row["dermatologist_skin_condition_confidence"], list, [])
    weighted = _literal("weighted_skin_condition_label", row["weighted_skin_condition_label"], dict, {})
    if not all(isinstance(n, str) for n in names):
        raise RowError("malformed_label_literal", "dermatologist_skin_condition_on_label_name: items must be strings")
    if not all(isinstance(c, int) and 1 <= c <= 5 for c in confidences):
        raise RowError("malformed_label_literal", "dermatologist_skin_condition_confidence: items must be ints 1-5")
    if not all(isinstance(k, str) and isinstance(w, (int, float)) and abs(w) <= 1e30 for k, w in weighted.items()):
        raise RowError("malformed_label_literal", "weighted_skin_condition_label: expected {str: number}")
    ordered = sorted(weighted.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "derm_gradable_skin_condition": [blank_none(row[f"dermatologist_gradable_for_skin_condition_{i}"]) for i in (1, 2, 3)],
        "derm_condition_names": names,
        "derm_condition_confidences": confidences,
        "weighted_condition_label": [{"condition": k, "weight": float(w)} for k, w in ordered],
        "derm_gradable_fst": [_yes_no(c, row[c]) for c in
                              (f"dermatologist_gradable_for_fitzpatrick_skin_type_{i}" for i in (1, 2, 3))],
        "derm_fst_labels": [blank_none(row[f"dermatologist_fitzpatrick_skin_type_label_{i}"]) for i in (1, 2, 3)],
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


def case_fields(case: dict, labels: dict | None) -> dict:
    """The fields shared by both views, from a cases row and its labels row (None: none); raises RowError."""
    try:
        year = int(case["year"])
    except ValueError:
        raise RowError("malformed_value", f"year: expected an integer, got {case['year']!r}") from None
    fields = {
        "key": case["case_id"], "case_id": case["case_id"], "source": case["source"], "release": case["release"],
        "year": year, "age_group": blank_none(case["age_group"]), "sex_at_birth": blank_none(case["sex_at_birth"]),
        "fitzpatrick_skin_type": blank_none(case["fitzpatrick_skin_type"]),
        "combined_race": blank_none(case["combined_race"]),
        "race_ethnicity_two_or_more_after_mitigation": _yes_blank(
            "race_ethnicity_two_or_more_after_mitigation", case["race_ethnicity_two_or_more_after_mitigation"]),
        "related_category": blank_none(case["related_category"]),
        "condition_duration": blank_none(case["condition_duration"]),
        **{question: _multi_select(case, question) for question in MULTI_SELECT},
        **_labels(labels),
    }
    fields["text"], fields["text_template"] = _text(fields)
    merged = dict(case)
    merged.update({k: v for k, v in (labels or {}).items() if k != "case_id"})
    fields["raw"] = json.dumps(merged, ensure_ascii=False)
    return fields


def image_refs(case: dict) -> list[tuple[int, str, str | None]]:
    """(index 1-3, bucket path, shot type) of every image the case names."""
    return [(i, case[f"image_{i}_path"], blank_none(case[f"image_{i}_shot_type"]))
            for i in (1, 2, 3) if case[f"image_{i}_path"]]


class CsvFile:
    """A CSV with its header checked, read row by row with row offsets (``vldata.ingest.tabular``), so
    that partitions carry offsets instead of rows and memory stays flat in the number of rows. A row
    that could not be read comes out as its ``BadRow`` instead of a dict, counted like any other row;
    ``damage`` is set when the file's stream broke before its end (the rows before it stand)."""

    def __init__(self, path: Path, required: tuple[str, ...], aliases: dict[str, str]):
        self.path = path
        self.header = read_header(path, required, aliases)
        self.damage: Damage | None = None

    def _dict(self, values: list[str]) -> dict:
        values = values + [""] * (len(self.header) - len(values))
        return dict(zip(self.header, values))

    def _rows(self, rows: Rows) -> Iterator[tuple[int, int, dict | BadRow]]:
        for row in rows:
            yield row.offset, row.line, row.problem or self._dict(row.values)
        self.damage = rows.damage

    def scan(self) -> Iterator[tuple[int, int, dict | BadRow]]:
        """Every data row: (byte offset, line number, row dict or BadRow)."""
        with open(self.path, "rb") as f:
            rows = self._rows(Rows(f))
            next(rows, None)  # header
            yield from rows

    def read_at(self, f, offset: int, line: int, n: int) -> Iterator[tuple[int, dict | BadRow]]:
        """At most ``n`` rows starting at ``offset`` of the open binary file ``f``: (line number, row
        dict or BadRow); fewer only when the file ends or breaks first."""
        for _, line_no, row in islice(self._rows(Rows(f, offset=offset, first_line=line)), n):
            yield line_no, row


def open_csvs(root: Path) -> tuple[CsvFile, CsvFile]:
    """The cases and labels files under ``root`` (``dataset/``), headers checked (StructuralError)."""
    return CsvFile(root / CASES, CASE_COLUMNS, {}), CsvFile(root / LABELS, LABEL_COLUMNS, LABEL_ALIASES)
