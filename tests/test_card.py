"""Datasheet validation and README rendering; the README must type a parquet folder for plain datasets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from huggingface_hub import DatasetCard

from fakes.toy import SPLITS, Toy, write_parquet
from vldata.describe import card, schema
from vldata.errors import StructuralError

SCIN = card.card_file("scin")

STATS = {
    "splits": {
        "train": {"input_rows": 6, "written": 3, "failed": 1, "filtered": 1, "duplicates": 1,
                  "reasons": {"failed": {"image_missing": 1}, "filtered": {"too_small": 1},
                              "duplicates": {"same_sha256": 1}},
                  "notes": {"text_from_template": 3}},
        "test": {"input_rows": 2, "written": 2, "failed": 0, "filtered": 0, "duplicates": 0,
                 "reasons": {}, "notes": {}},
    },
    "total": {"input_rows": 8, "written": 5, "failed": 1, "filtered": 1, "duplicates": 1},
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def scin_doc() -> dict:
    return yaml.safe_load(SCIN.read_text(encoding="utf-8"))


def write_card(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "cards" / "scin.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Datasheet


def test_scin_card_is_a_valid_datasheet():
    sheet = card.load_datasheet(SCIN)
    assert sheet.license == "other"
    assert sheet.license_name == "scin-data-use-license"
    assert sheet.license_link == "https://github.com/google-research-datasets/scin/blob/main/LICENSE"
    assert sheet.hub.task_categories == ["image-classification", "zero-shot-image-classification"]
    assert sheet.hub.language == ["en"] and {"medical", "dermatology", "skin"} <= set(sheet.hub.tags)
    assert "2402.18545" in sheet.citation and sheet.citation.lstrip().startswith("@")
    assert "3(b)" in sheet.distribution.license_terms
    text = SCIN.read_text(encoding="utf-8").lower()
    assert "todo" not in text and "placeholder" not in text


def test_card_file_finds_the_repository_cards():
    assert SCIN.is_file() and SCIN.name == "scin.yaml"


@pytest.mark.parametrize(("section", "question"), [("uses", "out_of_scope"), ("motivation", "funding"),
                                                   ("composition", "sensitive_data")])
def test_missing_required_answer_names_the_question(tmp_path, section, question):
    doc = scin_doc()
    del doc[section][question]
    path = write_card(tmp_path, doc)
    with pytest.raises(StructuralError) as err:
        card.load_datasheet(path)
    message = str(err.value)
    assert message == f"{path}: missing required answer '{section}.{question}'"
    assert "\n" not in message


def test_other_licence_needs_a_link(tmp_path):
    doc = scin_doc()
    del doc["license_link"]
    with pytest.raises(StructuralError, match=r"missing required answer 'license_link'"):
        card.load_datasheet(write_card(tmp_path, doc))


def test_gated_needs_a_prompt(tmp_path):
    doc = scin_doc()
    doc["hub"]["gated"] = True
    with pytest.raises(StructuralError, match=r"missing required answer 'hub.gated_prompt'"):
        card.load_datasheet(write_card(tmp_path, doc))


def test_unknown_question_is_an_error(tmp_path):
    doc = scin_doc()
    doc["uses"]["intnded"] = "typo"
    with pytest.raises(StructuralError, match=r"unknown question 'uses.intnded'"):
        card.load_datasheet(write_card(tmp_path, doc))


def test_unreadable_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("summary: [unclosed\n", encoding="utf-8")
    with pytest.raises(StructuralError) as err:
        card.load_datasheet(path)
    assert str(err.value).startswith(f"{path}: unreadable datasheet") and "\n" not in str(err.value)


@pytest.mark.parametrize(("n", "bucket"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (5033, "1K<n<10K"),
                                           (10_000, "10K<n<100K"), (999_999, "100K<n<1M"),
                                           (1_000_000, "1M<n<10M"), (10**12, "n>1T")])
def test_size_category(n, bucket):
    assert card.size_category(n) == bucket


# --------------------------------------------------------------------------------------------
# README


def render(folder: Path, sheet: card.Datasheet, shards: dict, **overrides) -> str:
    kwargs = dict(
        pretty_title="Toy", fmt="parquet", features=schema.hf_features(Toy), field_rows=schema.field_table(Toy),
        splits={s: {"num_examples": SPLITS[s], "num_bytes": shards[s][0]["num_bytes"]} for s in SPLITS},
        data_files={s: f"data/{s}-*.parquet" for s in SPLITS}, stats=STATS,
        config={"min_side": 64, "image": {"max_side": 1024}},
    )
    kwargs.update(overrides)
    text = card.render_readme(sheet, **kwargs)
    (folder / "README.md").write_text(text, encoding="utf-8")
    return text


def test_readme_header_reads_back_with_huggingface_hub(tmp_path):
    shards = write_parquet(tmp_path)
    render(tmp_path, card.load_datasheet(SCIN), shards)
    data = DatasetCard.load(tmp_path / "README.md").data
    assert data.license == "other"
    assert data.license_name == "scin-data-use-license"
    assert data.license_link.endswith("/LICENSE")
    assert data.size_categories == ["n<1K"]
    assert data.task_categories == ["image-classification", "zero-shot-image-classification"]
    assert data.pretty_name == "SCIN (Skin Condition Image Network)"
    assert data.configs == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*.parquet"}, {"split": "test", "path": "data/test-*.parquet"}]}]
    info = data.dataset_info
    assert [s["name"] for s in info["splits"]] == ["train", "test"]
    assert [s["num_examples"] for s in info["splits"]] == [3, 2]
    assert info["dataset_size"] == sum(s[0]["num_bytes"] for s in shards.values())
    assert "extra_gated_prompt" not in data.to_dict()


def test_readme_body_has_datasheet_fields_licence_and_accounting(tmp_path):
    shards = write_parquet(tmp_path)
    sheet = card.load_datasheet(SCIN)
    text = render(tmp_path, sheet, shards)
    body = text.split("\n---\n", 1)[1]
    for heading in ("# Toy", "## Fields", "## Datasheet", "### Motivation", "### Collection process",
                    "### Maintenance", "## Licence", "## Sensitive data", "## Build accounting", "## Citation"):
        assert f"\n{heading}\n" in f"\n{body}"
    assert "**Are there tasks for which the dataset should not be used?**" in body
    assert "| `color` | `string` | no | Values: `red`, `blue`. |" in body
    assert "| `boxes[].score` | `float64?` | yes |" in body
    assert "6 input rows = 3 written + 1 failed + 1 filtered + 1 duplicates" in body
    assert "| failed | `image_missing` | 1 |" in body
    assert "| duplicates | `same_sha256` | 1 |" in body
    assert "| `text_from_template` | 3 |" in body
    assert "**All splits:** 8 input rows = 5 written + 1 failed + 1 filtered + 1 duplicates" in body
    assert "| `image.max_side` | `1024` |" in body and "| `min_side` | `64` |" in body
    assert "```bibtex\n@misc{ward2024crowdsourcing," in body
    assert "re-identify" in body


def test_readme_shows_only_non_default_options_of_a_config_model(tmp_path):
    from pydantic import BaseModel

    class Options(BaseModel):
        min_side: int = 0
        view: str = "case"

    shards = write_parquet(tmp_path)
    body = render(tmp_path, card.load_datasheet(SCIN), shards, config=Options(min_side=32))
    assert "| `min_side` | `32` |" in body and "`view`" not in body


def test_accounting_that_does_not_add_up_is_refused(tmp_path):
    shards = write_parquet(tmp_path)
    stats = json.loads(json.dumps(STATS))
    stats["splits"]["train"]["written"] = 2
    with pytest.raises(ValueError, match="do not add up"):
        render(tmp_path, card.load_datasheet(SCIN), shards, stats=stats)


def test_gated_card_declares_the_gate(tmp_path):
    doc = scin_doc()
    doc["hub"].update(gated=True, gated_prompt="Agree to the SCIN Data Use License.",
                      gated_fields={"I will not attempt to re-identify data subjects": "checkbox"})
    sheet = card.load_datasheet(write_card(tmp_path, doc))
    render(tmp_path, sheet, write_parquet(tmp_path))
    data = DatasetCard.load(tmp_path / "README.md").data
    assert data.extra_gated_prompt == "Agree to the SCIN Data Use License."
    assert data.extra_gated_fields == {"I will not attempt to re-identify data subjects": "checkbox"}


LOAD_SCRIPT = textwrap.dedent("""
    import json, shutil, sys
    import datasets, PIL.Image
    from datasets.info import DatasetInfosDict

    folder, bare = sys.argv[1], sys.argv[2]
    declared = DatasetInfosDict.from_directory(folder)["default"].features
    ds = datasets.load_dataset(folder)
    train = ds["train"]
    image = train[0]["image"]
    shutil.copytree(folder + "/data", bare + "/data")  # the same shards without the README
    bare_features = datasets.load_dataset(bare)["train"].features
    print(json.dumps({
        "splits": {name: split.num_rows for name, split in ds.items()},
        "features": train.features.to_dict(),
        "equal_to_declared": train.features == declared,
        "image_is_pil": isinstance(image, PIL.Image.Image),
        "image_size": list(image.size),
        "row1": {k: v for k, v in train[1].items() if k != "image"},
        "bare_image_feature": type(bare_features["image"]).__name__,
        "vldata_imported": any(m == "vldata" or m.startswith("vldata.") for m in sys.modules),
    }))
""")


def test_plain_datasets_loads_the_folder_with_the_declared_features(tmp_path):
    folder = tmp_path / "parquet"
    # no huggingface schema metadata in the shards: the README alone must type every column
    shards = write_parquet(folder, hf_metadata=False)
    render(folder, card.load_datasheet(SCIN), shards)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(folder), str(tmp_path / "bare")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert result["vldata_imported"] is False
    assert result["splits"] == SPLITS
    assert result["equal_to_declared"] is True
    assert result["features"] == schema.hf_features(Toy).to_dict()
    features = result["features"]
    assert features["color"] == {"dtype": "string", "_type": "Value"}
    assert features["count"] == {"dtype": "int64", "_type": "Value"}
    assert features["boxes"]["_type"] == "List"
    assert features["boxes"]["feature"] == {"label": {"dtype": "string", "_type": "Value"},
                                            "score": {"dtype": "float64", "_type": "Value"}}
    assert features["image"]["_type"] == "Image"
    assert result["image_is_pil"] and result["image_size"] == [4, 3]
    assert result["row1"]["count"] is None and result["row1"]["color"] == "red"
    assert result["row1"]["boxes"] == [{"label": "b0", "score": 0.5}]
    # control: without the README the same shards do not decode images
    assert result["bare_image_feature"] != "Image"
