"""SCIN builder on generated raw files in the real layout: values, views, bad input, accounting."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

import vldata
from vldata.ingest import synthetic
from builders.scin.columns import CASE_COLUMNS, LABEL_COLUMNS
from builders.scin.sample import write_sample
from conftest import run_cli


def png_bytes(w=16, h=12, colour=(200, 150, 120)) -> bytes:
    return synthetic.encode(PILImage.new("RGB", (w, h), colour))


def write_scin(raw: Path, cases: list[dict], labels: list[dict], images: dict[str, bytes],
               label_header: tuple[str, ...] = LABEL_COLUMNS) -> None:
    """A SCIN raw folder from explicit rows (missing columns blank)."""
    root = raw / "dataset"
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (root / "images" / name).write_bytes(data)
    for fname, header, rows in (("scin_cases.csv", CASE_COLUMNS, cases), ("scin_labels.csv", label_header, labels)):
        with open(root / fname, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header, restval="")
            w.writeheader()
            w.writerows(rows)


REAL_CASE = {  # values of a real row printed in docs/RAW_FORMATS.md §6.4 (plus a second and third image)
    "case_id": "-1000600354148496558", "source": "SCIN", "release": "1.0.0", "year": "2023",
    "age_group": "AGE_UNKNOWN", "sex_at_birth": "OTHER_OR_UNSPECIFIED", "fitzpatrick_skin_type": "",
    "race_ethnicity_white": "YES", "textures_flat": "YES", "body_parts_arm": "YES", "body_parts_leg": "YES",
    "condition_symptoms_itching": "YES", "related_category": "RASH", "condition_duration": "ONE_DAY",
    "image_1_path": "dataset/images/-3205742176803893704.png", "image_1_shot_type": "CLOSE_UP",
    "image_2_path": "dataset/images/-6353431708064969797.png", "image_2_shot_type": "AT_AN_ANGLE",
    "image_3_path": "dataset/images/742075435141960831.png", "image_3_shot_type": "AT_DISTANCE",
    "combined_race": "WHITE",
}
REAL_LABELS = {
    "case_id": "-1000600354148496558",
    "dermatologist_gradable_for_skin_condition_1": "DEFAULT_YES_IMAGE_QUALITY_SUFFICIENT",
    "dermatologist_skin_condition_on_label_name": "['Inflicted skin lesions', 'Eczema', 'Acute dermatitis, NOS']",
    "dermatologist_skin_condition_confidence": "[4, 4, 3]",
    "weighted_skin_condition_label": "{'Inflicted skin lesions': 0.41, 'Eczema': 0.4, 'Acute dermatitis, NOS': 0.19}",
    "dermatologist_gradable_for_fitzpatrick_skin_type_1": "YES", "dermatologist_gradable_for_fitzpatrick_skin_type_2": "NO",
    "dermatologist_fitzpatrick_skin_type_label_1": "FST2",
    "gradable_for_monk_skin_tone_india": "True", "gradable_for_monk_skin_tone_us": "False",
    "monk_skin_tone_label_india": "2.0", "monk_skin_tone_label_us": "1",
}
UNLABELED_CASE = {**{k: v for k, v in REAL_CASE.items() if not k.startswith("image_")},
                  "case_id": "-1003826561155964328", "related_category": "OTHER_ISSUE_DESCRIPTION",
                  "image_1_path": "dataset/images/-5332065579713135540.png", "image_1_shot_type": "AT_DISTANCE",
                  "image_3_shot_type": "CLOSE_UP"}  # a shot type without its path, as in the real file
UNLABELED_LABELS = {"case_id": "-1003826561155964328", "weighted_skin_condition_label": "{}",
                    "dermatologist_skin_condition_on_label_name": "[]", "dermatologist_skin_condition_confidence": "[]"}
IMAGES = {"-3205742176803893704.png": png_bytes(), "-6353431708064969797.png": png_bytes(20, 10),
          "742075435141960831.png": png_bytes(10, 20), "-5332065579713135540.png": png_bytes(8, 8)}


@pytest.fixture()
def real_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    write_scin(raw, [REAL_CASE, UNLABELED_CASE], [UNLABELED_LABELS, REAL_LABELS], IMAGES)
    return raw


def read_parquet_rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(sorted((out / "parquet" / "data").glob("*.parquet")))
    return {r["key"]: r for r in table.to_pylist()}


def test_case_view_exact_values(real_raw, tmp_path):
    report = vldata.build("scin", real_raw, tmp_path / "out")
    assert report.splits["train"].written == 2 and report.splits["train"].balanced
    assert report.splits["train"].notes == {"shot_type_without_image": 1}
    rows = read_parquet_rows(tmp_path / "out")
    r = rows["-1000600354148496558"]
    assert r["case_id"] == "-1000600354148496558" and r["year"] == 2023
    assert r["fitzpatrick_skin_type"] is None and r["age_group"] == "AGE_UNKNOWN"
    assert r["race_ethnicity"] == ["white"] and r["combined_race"] == "WHITE"
    assert r["race_ethnicity_two_or_more_after_mitigation"] is False
    assert r["body_parts"] == ["arm", "leg"] and r["textures"] == ["flat"] and r["condition_symptoms"] == ["itching"]
    assert r["derm_condition_names"] == ["Inflicted skin lesions", "Eczema", "Acute dermatitis, NOS"]
    assert r["derm_condition_confidences"] == [4, 4, 3]
    assert [w["condition"] for w in r["weighted_condition_label"]] == ["Inflicted skin lesions", "Eczema",
                                                                       "Acute dermatitis, NOS"]
    assert r["weighted_condition_label"][0]["weight"] == pytest.approx(0.41)
    assert r["derm_gradable_skin_condition"] == ["DEFAULT_YES_IMAGE_QUALITY_SUFFICIENT", None, None]
    assert r["derm_gradable_fst"] == [True, False, None] and r["derm_fst_labels"] == ["FST2", None, None]
    assert r["monk_gradable_india"] is True and r["monk_gradable_us"] is False
    assert r["monk_skin_tone_india"] == 2 and r["monk_skin_tone_us"] == 1
    assert r["text"] == "A photo of a skin condition: Inflicted skin lesions; Eczema; Acute dermatitis, NOS."
    assert r["text_template"] == "weighted_conditions"
    assert r["image"]["bytes"] == IMAGES["-3205742176803893704.png"]
    assert r["image_2_info"]["width"] == 20 and r["image_3_info"]["height"] == 20
    assert [i["shot_type"] for i in r["images"]] == ["CLOSE_UP", "AT_AN_ANGLE", "AT_DISTANCE"]
    raw = json.loads(r["raw"])
    assert len(raw) == len(CASE_COLUMNS) + len(LABEL_COLUMNS) - 1
    assert raw["monk_skin_tone_label_india"] == "2.0"

    u = rows["-1003826561155964328"]
    assert u["weighted_condition_label"] == [] and u["derm_condition_names"] == []
    assert u["monk_gradable_india"] is None and u["monk_skin_tone_us"] is None
    assert u["text"] == "A photo of a skin concern the contributor described as other issue description."
    assert u["text_template"] == "reported_category"
    assert u["image_2"] is None and len(u["images"]) == 1


def test_image_view_one_row_per_image(real_raw, tmp_path):
    report = vldata.build("scin", real_raw, tmp_path / "out", formats="parquet", view="image")
    assert report.splits["train"].input_rows == 4 and report.splits["train"].written == 4
    rows = read_parquet_rows(tmp_path / "out")
    assert sorted(rows) == sorted(["-1000600354148496558_1", "-1000600354148496558_2", "-1000600354148496558_3",
                                   "-1003826561155964328_1"])
    r = rows["-1000600354148496558_2"]
    assert r["case_id"] == "-1000600354148496558" and r["image_index"] == 2 and r["shot_type"] == "AT_AN_ANGLE"
    assert r["image"]["bytes"] == IMAGES["-6353431708064969797.png"]
    assert r["derm_fst_labels"] == ["FST2", None, None]


def test_documented_column_name_is_accepted(tmp_path):
    header = tuple("dermatologist_skin_condition_label_name" if c == "dermatologist_skin_condition_on_label_name"
                   else c for c in LABEL_COLUMNS)
    labels = [{("dermatologist_skin_condition_label_name" if k == "dermatologist_skin_condition_on_label_name" else k): v
               for k, v in REAL_LABELS.items()}]
    write_scin(tmp_path / "raw", [REAL_CASE], labels, IMAGES, label_header=header)
    vldata.build("scin", tmp_path / "raw", tmp_path / "out", formats="parquet")
    assert read_parquet_rows(tmp_path / "out")["-1000600354148496558"]["derm_condition_names"][1] == "Eczema"


def test_missing_labels_file_is_structural_and_writes_nothing(real_raw, tmp_path):
    (real_raw / "dataset" / "scin_labels.csv").unlink()
    out = tmp_path / "out"
    proc = run_cli("build", "scin", "--raw", real_raw, "--out", out)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "scin_labels.csv" in lines[0] and "not found" in lines[0]
    assert not list(out.rglob("*.parquet")) and not list(out.rglob("*.tar"))


def test_missing_required_column_is_structural(tmp_path):
    header = tuple(c for c in LABEL_COLUMNS if c != "weighted_skin_condition_label")
    write_scin(tmp_path / "raw", [REAL_CASE], [{k: v for k, v in REAL_LABELS.items() if k in header}], IMAGES,
               label_header=header)
    proc = run_cli("build", "scin", "--raw", tmp_path / "raw", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "weighted_skin_condition_label" in proc.stderr and "scin_labels.csv" in proc.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))


@pytest.mark.parametrize("args,needle", [(["--set", "colour=blue"], "unknown setting 'colour'"),
                                         (["--set", "view=pixels"], "invalid setting 'view'"),
                                         (["--set", "image.max_pixels=-5"], "invalid setting 'image.max_pixels'"),
                                         (["--set", "novalue"], "KEY=VALUE")])
def test_bad_settings_are_structural(real_raw, tmp_path, args, needle):
    proc = run_cli("build", "scin", "--raw", real_raw, "--out", tmp_path / "out", *args)
    assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1


def test_row_level_problems_are_counted_and_the_build_continues(tmp_path):
    raw = tmp_path / "raw"
    write_sample(raw, n=16, seed=3)
    root = raw / "dataset"
    with open(root / "scin_cases.csv", newline="") as f:
        cases = list(csv.DictReader(f))
    with open(root / "scin_labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))

    def image_of(c: int) -> Path:
        return root / "images" / Path(cases[c]["image_1_path"]).name

    image_of(9).write_bytes(png_bytes(64, 64)[:60])  # corrupt (truncated) PNG
    image_of(10).write_bytes(b"")  # zero bytes
    image_of(11).unlink()  # missing
    image_of(12).write_bytes(png_bytes(1200, 1000))  # over the pixel limit set below
    bad = next(lab for lab in labels if lab["case_id"] == cases[13]["case_id"])
    bad["weighted_skin_condition_label"] = "{'Eczema': 0.5,"  # malformed literal
    with open(root / "scin_labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LABEL_COLUMNS)
        w.writeheader()
        w.writerows(labels)

    out = tmp_path / "out"
    proc = run_cli("build", "scin", "--raw", raw, "--out", out, "--set", "image.max_pixels=1000000")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((out / "build" / "stats.json").read_text())["splits"]["train"]
    # the sample itself misses case 2's first image (as the real bucket misses one file)
    assert stats["reasons"]["failed"] == {"image_corrupt": 1, "image_empty": 1, "image_missing": 2,
                                          "image_too_large": 1, "malformed_label_literal": 1}
    assert stats["input_rows"] == 16 and stats["failed"] == 6 and stats["written"] == 10
    assert stats["input_rows"] == stats["written"] + stats["failed"] + stats["filtered"] + stats["duplicates"]
    failures = {r["key"]: r for r in pq.read_table(out / "build" / "failures.parquet").to_pylist()}
    assert failures[cases[13]["case_id"]]["reason"] == "malformed_label_literal"
    assert "weighted_skin_condition_label" in failures[cases[13]["case_id"]]["message"]
    assert failures[cases[11]["case_id"]]["ref"].startswith("scin_cases.csv:")
    assert failures[cases[12]["case_id"]]["message"].endswith("exceeds max_pixels=1000000")
    written = read_parquet_rows(out)
    assert len(written) == 10 and not set(written) & set(failures)


def test_duplicate_case_rows_are_counted_as_duplicates(real_raw, tmp_path):
    with open(real_raw / "dataset" / "scin_cases.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=CASE_COLUMNS, restval="").writerow(REAL_CASE)
    report = vldata.build("scin", real_raw, tmp_path / "out", formats="parquet")
    s = report.splits["train"]
    assert (s.input_rows, s.written, s.duplicates) == (3, 2, 1) and s.reasons["duplicates"] == {"duplicate_key": 1}


def test_refuses_to_overwrite_without_flag(real_raw, tmp_path):
    vldata.build("scin", real_raw, tmp_path / "out", formats="parquet")
    with pytest.raises(vldata.StructuralError, match="--resume"):
        vldata.build("scin", real_raw, tmp_path / "out", formats="parquet")
    vldata.build("scin", real_raw, tmp_path / "out", formats="parquet", overwrite=True)
