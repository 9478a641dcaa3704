"""Every datasheet in cards/ validates, names its missing answers, uses only Hub-accepted ids, and
renders into README.md and croissant.json files that plain `datasets` and mlcroissant accept."""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from fakes.toy import SPLITS, Toy, write_parquet, write_webdataset
from vldata.describe import card, hub_vocab, schema
from vldata.errors import StructuralError
from vldata.describe.croissant import croissant_document, validate_croissant

CARDS = sorted((Path(__file__).resolve().parents[1] / "cards").glob("*.yaml"))
NAMES = [c.stem for c in CARDS]
STATS = {"splits": {s: {"input_rows": n, "written": n, "failed": 0, "filtered": 0, "duplicates": 0,
                        "reasons": {}, "notes": {}} for s, n in SPLITS.items()}}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def doc_of(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_card(tmp_path: Path, name: str, doc: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def required_answers(model: type, prefix: str = "") -> list[str]:
    """Dotted paths of the questions a datasheet must answer (no default)."""
    out = []
    for name, info in model.model_fields.items():
        if info.is_required():
            out.append(prefix + name)
            sub = info.annotation
            if isinstance(sub, type) and issubclass(sub, card._Section):
                out += required_answers(sub, f"{prefix}{name}.")
    return out


def test_the_six_datasets_have_cards():
    assert {"wit", "open_images", "medtrinity", "arboretum", "scin"} <= set(NAMES)


# --------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("path", CARDS, ids=NAMES)
def test_card_validates_without_placeholders(path):
    sheet = card.load_datasheet(path)
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"\b(todo|tbd|fixme|placeholder|lorem|xxx)\b", text, re.IGNORECASE)
    assert sheet.citation.lstrip().startswith("@") and "title" in sheet.citation and "year" in sheet.citation
    assert sheet.citation.count("{") == sheet.citation.count("}")


@pytest.mark.parametrize("path", CARDS, ids=NAMES)
def test_removing_any_required_answer_names_it(tmp_path, path):
    required = required_answers(card.Datasheet)
    assert {"license", "citation", "motivation.funding", "uses.out_of_scope", "composition.sensitive_data",
            "hub.pretty_name", "distribution.license_terms"} <= set(required)
    for answer in required:
        doc = doc_of(path)
        *parents, leaf = answer.split(".")
        node = doc
        for p in parents:
            node = node[p]
        if leaf not in node:
            continue  # a question with a default that this card leaves out
        del node[leaf]
        bad = write_card(tmp_path, path.stem, doc)
        with pytest.raises(StructuralError) as err:
            card.load_datasheet(bad)
        assert str(err.value) == f"{bad}: missing required answer '{answer}'"


@pytest.mark.parametrize("path", CARDS, ids=NAMES)
def test_conditional_answers_are_required(tmp_path, path):
    doc = doc_of(path)
    doc.update(license="other", license_name="some-terms")
    doc.pop("license_link", None)
    with pytest.raises(StructuralError, match=r"missing required answer 'license_link'"):
        card.load_datasheet(write_card(tmp_path, path.stem, doc))

    doc = doc_of(path)
    doc["hub"].update(gated=True)
    doc["hub"].pop("gated_prompt", None)
    with pytest.raises(StructuralError, match=r"missing required answer 'hub.gated_prompt'"):
        card.load_datasheet(write_card(tmp_path, path.stem, doc))

    doc = doc_of(path)
    doc["hub"].update(language=[], multilinguality=["monolingual"])
    with pytest.raises(StructuralError, match=r"missing required answer 'hub.language'"):
        card.load_datasheet(write_card(tmp_path, path.stem, doc))


# --------------------------------------------------------------------------------------------
# Hub vocabularies


@pytest.mark.parametrize("path", CARDS, ids=NAMES)
def test_card_ids_are_values_the_hub_accepts(path):
    sheet = card.load_datasheet(path)
    assert sheet.license in hub_vocab.LICENSES
    assert set(sheet.hub.task_categories) <= set(hub_vocab.TASK_CATEGORIES)
    assert set(sheet.hub.multilinguality) <= set(hub_vocab.MULTILINGUALITY)
    assert set(sheet.hub.gated_fields.values()) <= set(hub_vocab.GATED_FIELD_TYPES)
    assert all(re.fullmatch(r"[a-z]{2,3}", lang) for lang in sheet.hub.language)
    if sheet.license == "other":
        assert sheet.license_name and sheet.license_link.startswith("https://")


@pytest.mark.parametrize(("field", "value"), [
    ("license", "cc-by-sa-3"), ("license", "CC-BY-4.0-ish"),
    ("hub.task_categories", "image-captioning"), ("hub.task_categories", "image-text-to-text"),
    ("hub.multilinguality", "bilingual"), ("hub.language", "english"),
    ("hub.gated_fields", "dropdown"),
])
def test_a_value_the_hub_does_not_accept_is_named(tmp_path, field, value):
    doc = doc_of(CARDS[NAMES.index("wit")])
    if field == "license":
        doc["license"] = value
    elif field == "hub.gated_fields":
        doc["hub"].update(gated=True, gated_prompt="Agree.", gated_fields={"Affiliation": value})
    else:
        doc["hub"][field.split(".")[1]] = ["image-to-text", value] if "task" in field else [value]
    path = write_card(tmp_path, "wit", doc)
    with pytest.raises(StructuralError) as err:
        card.load_datasheet(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid answer '{field}'") and repr(value) in message
    assert "\n" not in message


def test_licence_ids_are_case_insensitive_and_stored_lower_case(tmp_path):
    doc = doc_of(CARDS[NAMES.index("open_images")])
    doc["license"] = "CC-BY-4.0"
    assert card.load_datasheet(write_card(tmp_path, "open_images", doc)).license == "cc-by-4.0"


def test_every_computed_size_category_is_a_hub_bucket():
    sizes = [0, 1, 999, 1000, 5033, 10**5, 161_630, 10**6, 25_016_845, 37_600_000, 134_600_000, 5_850_000_000,
             10**11, 10**12, 10**13]
    buckets = [card.size_category(n) for n in sizes]
    assert set(buckets) <= set(hub_vocab.SIZE_CATEGORIES)
    assert card.size_category(25_016_845) == "10M<n<100M" and card.size_category(134_600_000) == "100M<n<1B"
    assert [b for b in hub_vocab.SIZE_CATEGORIES if b != "other"] == list(dict.fromkeys(
        card.size_category(10**k) for k in range(2, 14)))


def _docstring_options(name: str) -> list[str]:
    doc = " ".join(inspect.getdoc(DatasetCardData).split())
    text = doc[doc.index(f"{name} (`"):]
    text = text[:text.index(".", text.index("Options are:"))]
    return re.findall(r"'([^']+)'", text)


def test_kept_lists_match_what_the_installed_huggingface_hub_documents():
    assert list(hub_vocab.SIZE_CATEGORIES) == _docstring_options("size_categories")
    assert list(hub_vocab.MULTILINGUALITY) == _docstring_options("multilinguality")


def test_kept_lists_are_well_formed():
    assert len(hub_vocab.LICENSES) == len(set(hub_vocab.LICENSES)) == 69
    assert all(k == k.lower() for k in hub_vocab.LICENSES)
    for hub_id, (_, spdx) in hub_vocab.LICENSES.items():
        assert spdx is None or spdx.lower() == hub_id
    assert len(hub_vocab.TASK_CATEGORIES) == len(set(hub_vocab.TASK_CATEGORIES))
    assert {"image-to-text", "zero-shot-image-classification", "object-detection"} <= set(hub_vocab.TASK_CATEGORIES)
    assert "image-text-to-text" not in hub_vocab.TASK_CATEGORIES  # hidden for datasets on the Hub
    assert hub_vocab.spdx_id("cc-by-sa-3.0") == "CC-BY-SA-3.0" and hub_vocab.spdx_id("unknown") is None


# --------------------------------------------------------------------------------------------
# Rendering each card: README for plain datasets, Croissant for mlcroissant

LOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import datasets, PIL.Image
    from datasets.info import DatasetInfosDict

    out = {}
    for folder in sys.argv[1:]:
        declared = DatasetInfosDict.from_directory(folder)["default"].features
        ds = datasets.load_dataset(folder)
        train = ds["train"]
        out[folder] = {
            "splits": {name: split.num_rows for name, split in ds.items()},
            "equal_to_declared": train.features == declared,
            "image_is_pil": all(isinstance(train[0][k], PIL.Image.Image)
                                for k, f in train.features.items() if isinstance(f, datasets.Image)),
            "image_columns": sum(isinstance(f, datasets.Image) for f in train.features.values()),
            "license_of_row0": train[0]["license"] if "license" in train.features else train[0]["json"]["license"],
        }
    out["vldata_imported"] = any(m == "vldata" or m.startswith("vldata.") for m in sys.modules)
    print(json.dumps(out))
""")


def render_folder(folder: Path, sheet: card.Datasheet, fmt: str) -> dict:
    shards = write_parquet(folder, hf_metadata=False) if fmt == "parquet" else write_webdataset(folder)
    image_suffixes = ["jpg"]  # the primary image member, whatever its format
    features = schema.hf_features(Toy) if fmt == "parquet" else schema.wds_features(Toy, image_suffixes)
    glob = "data/{}-*.parquet" if fmt == "parquet" else "{}-*.tar"
    readme = card.render_readme(
        sheet, pretty_title=sheet.hub.pretty_name, fmt=fmt, features=features, field_rows=schema.field_table(Toy),
        splits={s: {"num_examples": SPLITS[s], "num_bytes": shards[s][0]["num_bytes"]} for s in SPLITS},
        data_files={s: glob.format(s) for s in SPLITS}, stats=STATS, config={})
    (folder / "README.md").write_text(readme, encoding="utf-8")
    doc = croissant_document(sheet, name=folder.parent.name, version="1.0.0", fmt=fmt, record_type=Toy,
                             shards=shards)
    (folder / "croissant.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return doc


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """Every card rendered for the toy record, in both formats: {name: OUT}."""
    root = tmp_path_factory.mktemp("cards")
    for path in CARDS:
        sheet = card.load_datasheet(path)
        for fmt in ("parquet", "webdataset"):
            render_folder(root / path.stem / fmt, sheet, fmt)
    return {path.stem: root / path.stem for path in CARDS}


def test_readme_headers_read_back_with_the_card_values(rendered):
    for name, out in rendered.items():
        sheet = card.load_datasheet(CARDS[NAMES.index(name)])
        for fmt in ("parquet", "webdataset"):
            data = DatasetCard.load(out / fmt / "README.md").data
            assert data.license == sheet.license
            assert data.task_categories == sheet.hub.task_categories
            assert data.size_categories == ["n<1K"]
            assert data.pretty_name == sheet.hub.pretty_name
            assert (data.to_dict().get("extra_gated_prompt") is not None) == sheet.hub.gated
            if sheet.hub.gated:
                assert data.extra_gated_fields == sheet.hub.gated_fields
            if sheet.license == "other":
                assert data.license_name == sheet.license_name and data.license_link == sheet.license_link
            body = (out / fmt / "README.md").read_text(encoding="utf-8")
            assert "## Datasheet" in body and "## Build accounting" in body and "## Citation" in body
            if sheet.item_license_field:
                assert f"carry their own licence in the field `{sheet.item_license_field}`" in body


def test_medtrinity_is_gated_and_says_its_captions_are_generated(rendered):
    data = DatasetCard.load(rendered["medtrinity"] / "parquet" / "README.md").data
    assert data.extra_gated_prompt and any(v == "checkbox" for v in data.extra_gated_fields.values())
    body = (rendered["medtrinity"] / "parquet" / "README.md").read_text(encoding="utf-8")
    assert "machine-generated" in body and "hallucinat" in body


def test_plain_datasets_loads_every_rendered_folder(rendered, tmp_path):
    folders = [str(out / fmt) for out in rendered.values() for fmt in ("parquet", "webdataset")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, *folders], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("vldata_imported") is False
    for folder in folders:
        got = result[folder]
        assert got["splits"] == SPLITS, folder
        assert got["equal_to_declared"] and got["image_is_pil"] and got["image_columns"] == 1, folder
        assert got["license_of_row0"] == "https://creativecommons.org/licenses/by/2.0/", folder


def test_every_rendered_croissant_validates_offline(rendered):
    for name, out in rendered.items():
        sheet = card.load_datasheet(CARDS[NAMES.index(name)])
        for fmt in ("parquet", "webdataset"):
            path = out / fmt / "croissant.json"
            assert validate_croissant(path) == [], (name, fmt)
            doc = json.loads(path.read_text(encoding="utf-8"))
            assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
            spdx = hub_vocab.spdx_id(sheet.license)
            assert doc["license"] == (f"https://spdx.org/licenses/{spdx}.html" if spdx else sheet.license_link)
            assert doc["rai:dataUseCases"] == [sheet.uses.intended.strip()]
            assert set(sheet.sensitive_data) <= set(doc["rai:personalSensitiveInformation"])
            files = [d for d in doc["distribution"] if d["@type"] == "cr:FileObject"]
            assert files and all(f["sha256"] and f["contentSize"].endswith(" B") for f in files)


def test_a_card_naming_a_licence_field_the_record_lacks_is_refused(tmp_path):
    doc = doc_of(CARDS[NAMES.index("wit")])
    doc["item_license_field"] = "image_licence"
    sheet = card.load_datasheet(write_card(tmp_path, "wit", doc))
    with pytest.raises(ValueError, match="item_license_field 'image_licence' is not a field of the record"):
        render_folder(tmp_path / "out" / "parquet", sheet, "parquet")


def test_mlcroissant_cli_validates_every_rendered_croissant_offline(rendered):
    from concurrent.futures import ThreadPoolExecutor

    cli = Path(sys.executable).with_name("mlcroissant")
    offline = {**os.environ, "NO_PROXY": "", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    # the CLI does what validate_croissant does (checked in-process above for both formats); once per card here
    paths = [out / "parquet" / "croissant.json" for out in rendered.values()]

    def validate(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(cli), "validate", "--jsonld", str(path)], capture_output=True, text=True,
                              env=offline, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for path, proc in zip(paths, pool.map(validate, paths)):
            assert proc.returncode == 0, (path, proc.stderr[-2000:])
            assert "error" not in proc.stderr.lower(), (path, proc.stderr[-2000:])
