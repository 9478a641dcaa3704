"""SCIN's synthetic raw input: a small ``dataset/`` folder in the real layout, with the real quirks.

Written for the demo and the tests (``ScinBuilder.write_sample``); the shared picture and CSV helpers
come from ``vldata.ingest.synthetic``, the skin blotches are drawn here. Nothing here is used while
building real data, and it must not parse: the columns it writes are those of ``columns``.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import ImageDraw

from vldata.ingest import synthetic

from .columns import CASE_COLUMNS, CASES, LABEL_COLUMNS, LABELS, MULTI_SELECT

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
    """A skin-coloured picture with one to five darker blotches, as a PNG in ``mode``."""
    img = synthetic.blank(rng, (48, 128), (90, 240))
    (w, h), skin = img.size, img.getpixel((0, 0))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 5)):
        x, y, r = rng.randint(0, w), rng.randint(0, h), rng.randint(3, 20)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(max(0, c - rng.randint(20, 90)) for c in skin))
    if mode == "P":  # the fixed web palette, not synthetic's adaptive one
        img = img.convert("P")
    return synthetic.encode(img, "PNG", mode)


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
            if col.startswith(tuple(MULTI_SELECT)[1:]) and rng.random() < 0.25:  # all but race_ethnicity
                row[col] = "YES"
        races = [f"race_ethnicity_{answer}" for answer in MULTI_SELECT["race_ethnicity"]]
        for col in rng.sample(races, rng.choice([0, 1, 1, 1, 1, 2])):  # mostly one answer, sometimes two
            row[col] = "YES"
        race = [col for col in races if row[col] == "YES"]
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
        synthetic.write_csv(root / name, list(columns), ([r[c] for c in columns] for r in rows))
