"""Datasheets and dataset cards.

A dataset's documentation is data: ``cards/NAME.yaml`` answers the questions of "Datasheets for
Datasets" (Gebru et al.) and carries the Hub metadata; ``Datasheet`` validates it, checking licence,
task and size ids against the Hub's own lists kept in ``hub_vocab``. ``render_readme``
turns a datasheet plus what a build measured (features, field table, split sizes, stats, config) into
the ``README.md`` of an output folder: a Hugging Face card whose YAML header (written through
``huggingface_hub.DatasetCardData`` and ``datasets``' own ``DatasetInfosDict``) declares configs and
features so that plain ``datasets.load_dataset`` types every column. This module only renders text; it
never writes files, reads shards or knows any particular dataset.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from vldata.describe import hub_vocab

if TYPE_CHECKING:
    import datasets
    from huggingface_hub import DatasetCardData

# --------------------------------------------------------------------------------------------
# The datasheet model: one sub-model per section; each field is a question, its description the
# question as Gebru et al. ask it (shown in the card). Required questions have no default.


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Motivation(_Section):
    purpose: str = Field(description="For what purpose was the dataset created?")
    creators: str = Field(description="Who created the dataset and on behalf of which entity?")
    funding: str = Field(description="Who funded the creation of the dataset?")
    comments: str | None = Field(None, description="Any other comments?")


class Composition(_Section):
    instances: str = Field(description="What do the instances that comprise the dataset represent?")
    count: str = Field(description="How many instances are there in total (of each type, if appropriate)?")
    sampling: str | None = Field(None, description="Does the dataset contain all possible instances or is it "
                                 "a sample of instances from a larger set?")
    instance_data: str | None = Field(None, description="What data does each instance consist of?")
    labels: str | None = Field(None, description="Is there a label or target associated with each instance?")
    missing_information: str = Field(description="Is any information missing from individual instances?")
    relationships: str | None = Field(None, description="Are relationships between individual instances "
                                      "made explicit?")
    splits: str | None = Field(None, description="Are there recommended data splits?")
    noise: str | None = Field(None, description="Are there any errors, sources of noise, or redundancies "
                              "in the dataset?")
    external_resources: str | None = Field(None, description="Is the dataset self-contained, or does it "
                                           "link to or otherwise rely on external resources?")
    confidentiality: str = Field(description="Does the dataset contain data that might be considered "
                                 "confidential?")
    offensive_content: str | None = Field(None, description="Does the dataset contain data that might be "
                                          "offensive, insulting, threatening, or cause anxiety?")
    subpopulations: str | None = Field(None, description="Does the dataset identify any subpopulations "
                                       "(e.g., by age, gender)?")
    identification: str | None = Field(None, description="Is it possible to identify individuals, directly "
                                       "or indirectly, from the dataset?")
    sensitive_data: str = Field(description="Does the dataset contain data that might be considered "
                                "sensitive in any way (e.g., health data, racial or ethnic origins)?")


class CollectionProcess(_Section):
    acquisition: str = Field(description="How was the data associated with each instance acquired?")
    mechanisms: str | None = Field(None, description="What mechanisms or procedures were used to collect "
                                   "the data?")
    sampling_strategy: str | None = Field(None, description="If the dataset is a sample from a larger set, "
                                          "what was the sampling strategy?")
    collectors: str | None = Field(None, description="Who was involved in the data collection process and "
                                   "how were they compensated?")
    timeframe: str | None = Field(None, description="Over what timeframe was the data collected?")
    ethical_review: str | None = Field(None, description="Were any ethical review processes conducted?")
    source_of_data: str | None = Field(None, description="Was the data collected from the individuals in "
                                       "question directly, or obtained via third parties or other sources?")
    notification: str | None = Field(None, description="Were the individuals in question notified about "
                                     "the data collection?")
    consent: str | None = Field(None, description="Did the individuals in question consent to the "
                                "collection and use of their data?")
    consent_revocation: str | None = Field(None, description="If consent was obtained, were the consenting "
                                           "individuals provided with a mechanism to revoke their consent?")
    impact_analysis: str | None = Field(None, description="Has an analysis of the potential impact of the "
                                        "dataset and its use on data subjects been conducted?")


class Preprocessing(_Section):
    steps: str = Field(description="Was any preprocessing/cleaning/labeling of the data done?")
    raw_data: str | None = Field(None, description="Was the raw data saved in addition to the "
                                 "preprocessed/cleaned/labeled data?")
    software: str | None = Field(None, description="Is the software used to preprocess/clean/label the "
                                 "instances available?")


class Uses(_Section):
    prior_uses: str | None = Field(None, description="Has the dataset been used for any tasks already?")
    intended: str = Field(description="What tasks could the dataset be used for?")
    risks: str = Field(description="Is there anything about the composition of the dataset or the way it "
                       "was collected and preprocessed that might impact future uses?")
    out_of_scope: str = Field(description="Are there tasks for which the dataset should not be used?")


class Distribution(_Section):
    third_parties: str | None = Field(None, description="Will the dataset be distributed to third parties "
                                      "outside of the entity on behalf of which it was created?")
    method: str | None = Field(None, description="How will the dataset be distributed?")
    license_terms: str = Field(description="Will the dataset be distributed under a copyright or other "
                               "intellectual property license, and/or under applicable terms of use?")
    third_party_restrictions: str | None = Field(None, description="Have any third parties imposed "
                                                 "IP-based or other restrictions on the data?")
    export_controls: str | None = Field(None, description="Do any export controls or other regulatory "
                                        "restrictions apply to the dataset or to individual instances?")


class Maintenance(_Section):
    maintainer: str = Field(description="Who will be supporting/hosting/maintaining the dataset?")
    contact: str | None = Field(None, description="How can the owner/curator/manager of the dataset be "
                                "contacted?")
    erratum: str = Field(description="Is there an erratum?")
    updates: str | None = Field(None, description="Will the dataset be updated?")
    retention: str | None = Field(None, description="Are there applicable limits on the retention of the "
                                  "data associated with the instances?")
    older_versions: str | None = Field(None, description="Will older versions of the dataset continue to "
                                       "be supported/hosted/maintained?")
    contributions: str | None = Field(None, description="If others want to extend/augment/build on/"
                                      "contribute to the dataset, is there a mechanism for them to do so?")


class HubMetadata(_Section):
    """What the Hugging Face Hub shows and filters on; ids are checked against ``hub_vocab``."""

    pretty_name: str
    task_categories: list[str] = Field(min_length=1)
    language: list[str] = Field([], description="ISO 639 codes of the text; may stay empty only for a "
                                "multilingual dataset whose languages are not all known.")
    multilinguality: list[str] = []
    tags: list[str] = []
    gated: bool = False
    gated_prompt: str | None = None
    gated_fields: dict[str, str] = {}

    @field_validator("task_categories", "multilinguality")
    @classmethod
    def _hub_ids(cls, values: list[str], info: ValidationInfo) -> list[str]:
        return [hub_vocab.check(info.field_name, v) for v in values]

    @field_validator("language")
    @classmethod
    def _language_codes(cls, values: list[str]) -> list[str]:
        for v in values:
            if not _LANGUAGE.match(v):
                raise ValueError(f"{v!r} is not an ISO 639 language code (two or three lower-case letters)")
        return values

    @field_validator("gated_fields")
    @classmethod
    def _gated_field_types(cls, fields: dict[str, str]) -> dict[str, str]:
        for kind in fields.values():
            hub_vocab.check("gated_field_type", kind)
        return fields

    @model_validator(mode="after")
    def _gating_and_languages(self) -> HubMetadata:
        if self.gated and not self.gated_prompt:
            raise _missing("gated_prompt", "required when gated is true")
        if not self.language and "multilingual" not in self.multilinguality:
            raise _missing("language", "required unless multilinguality is multilingual")
        return self


_LANGUAGE = re.compile(r"^[a-z]{2,3}$")


SECTIONS: dict[str, str] = {
    "motivation": "Motivation",
    "composition": "Composition",
    "collection_process": "Collection process",
    "preprocessing": "Preprocessing, cleaning and labeling",
    "uses": "Uses",
    "distribution": "Distribution",
    "maintenance": "Maintenance",
}


class Datasheet(BaseModel):
    """The validated content of ``cards/NAME.yaml``."""

    model_config = ConfigDict(extra="forbid")

    summary: str
    homepage: str | None = None
    license: str = Field(description='A licence id the Hub accepts (e.g. "cc-by-4.0"), "unknown" or "other".')
    license_name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]*$",
                                     description='Slug of the licence when license is "other".')
    license_link: str | None = Field(None, description='URL of the licence text or terms (required when '
                                     'license is "other").')
    item_license_field: str | None = Field(None, description="Record field carrying per-item licences.")
    citation: str = Field(description="BibTeX entry (or entries) to cite.")
    sensitive_data: list[str] = Field([], description="Statements about sensitive content, shown verbatim.")
    hub: HubMetadata
    motivation: Motivation
    composition: Composition
    collection_process: CollectionProcess
    preprocessing: Preprocessing
    uses: Uses
    distribution: Distribution
    maintenance: Maintenance

    @field_validator("license")
    @classmethod
    def _hub_license(cls, value: str) -> str:
        return hub_vocab.check("license", value)

    @model_validator(mode="after")
    def _other_license_is_named(self) -> Datasheet:
        if self.license == "other":
            for name in ("license_name", "license_link"):
                if not getattr(self, name):
                    raise _missing(name, 'required when license is "other"')
        return self


def _missing(name: str, why: str) -> ValueError:
    # model validators cannot set an error location; this prefix lets load_datasheet name the question.
    return ValueError(f"@{name}@ {why}")


# --------------------------------------------------------------------------------------------
# Loading


def card_file(name: str) -> Path:
    """The datasheet YAML of builder ``name``: the installed ``vldata.cards`` resource, else the
    repository's ``cards/`` folder (an editable or source checkout)."""
    try:
        resource = importlib.resources.files("vldata.cards") / f"{name}.yaml"
        if resource.is_file():
            return Path(str(resource))
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "cards" / f"{name}.yaml"


def load_datasheet(path: str | Path) -> Datasheet:
    """Read and validate a datasheet; problems raise ``StructuralError`` with one line naming the file
    and the question as a dotted path."""
    from vldata.errors import StructuralError

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise StructuralError(f"{path}: unreadable datasheet: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict):
        raise StructuralError(f"{path}: a datasheet must be a YAML mapping")
    try:
        return Datasheet.model_validate(doc)
    except ValidationError as e:
        raise StructuralError(f"{path}: {_describe(e.errors()[0])}") from None


def _describe(error: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "missing":
        return f"missing required answer '{where}'"
    if error["type"] == "extra_forbidden":
        return f"unknown question '{where}'"
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    found = re.search(r"@(\w+)@ (.*)", message)
    if found:  # raised by a model validator via _missing
        where = ".".join([*([where] if where else []), found.group(1)])
        return f"missing required answer '{where}' ({found.group(2)})"
    return f"invalid answer '{where}': {message}"


# --------------------------------------------------------------------------------------------
# Rendering

_SIZE_BUCKETS = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                 (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"),
                 (10**10, "1B<n<10B"), (10**11, "10B<n<100B"), (10**12, "100B<n<1T"))
OUTCOMES = ("written", "failed", "filtered", "duplicates")


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket of ``n`` examples."""
    return hub_vocab.check("size_categories", next((label for bound, label in _SIZE_BUCKETS if n < bound), "n>1T"))


def card_data(sheet: Datasheet, *, features: datasets.Features, splits: dict[str, dict],
              data_files: dict[str, str]) -> DatasetCardData:
    """The YAML header of the card as ``huggingface_hub.DatasetCardData``."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    licence: dict[str, Any] = {"license": sheet.license}
    if sheet.license == "other":
        licence.update(license_name=sheet.license_name, license_link=sheet.license_link)
    gating: dict[str, Any] = {}
    if sheet.hub.gated:
        gating = {"extra_gated_prompt": sheet.hub.gated_prompt}
        if sheet.hub.gated_fields:
            gating["extra_gated_fields"] = dict(sheet.hub.gated_fields)
    total = sum(int(s["num_examples"]) for s in splits.values())
    data = DatasetCardData(
        pretty_name=sheet.hub.pretty_name,
        **licence,
        language=list(sheet.hub.language) or None,
        multilinguality=list(sheet.hub.multilinguality) or None,
        task_categories=list(sheet.hub.task_categories),
        size_categories=[size_category(total)],
        tags=list(sheet.hub.tags),
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": p} for s, p in data_files.items()]}],
        **gating,
    )
    split_dict = SplitDict()
    for name, s in splits.items():
        split_dict.add(SplitInfo(name=name, num_bytes=int(s["num_bytes"]), num_examples=int(s["num_examples"])))
    size = sum(int(s["num_bytes"]) for s in splits.values())
    info = DatasetInfo(features=features, splits=split_dict, download_size=size, dataset_size=size)
    # the same call datasets' push_to_hub makes, so the header reads back exactly as datasets expects
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data


def render_readme(sheet: Datasheet, *, pretty_title: str, fmt: str, features: datasets.Features,
                  field_rows: list[dict], splits: dict[str, dict], data_files: dict[str, str], stats: dict,
                  config: Mapping[str, Any] | BaseModel) -> str:
    """The ``README.md`` of an output folder in format ``fmt`` ("parquet" or "webdataset").

    ``features`` are the folder's HF ``Features``; ``field_rows`` come from ``schema.field_table``;
    ``splits`` maps split -> {"num_examples", "num_bytes"}; ``data_files`` maps split -> glob relative
    to the folder; ``stats`` is the build's ``stats.json``; ``config`` is the builder Config (only
    non-default values are shown) or a mapping of the values to show.
    """
    from huggingface_hub import DatasetCard

    if fmt not in ("parquet", "webdataset"):
        raise ValueError(f"unknown format {fmt!r}")
    if sheet.item_license_field and sheet.item_license_field not in {r["name"] for r in field_rows}:
        raise ValueError(f"the datasheet's item_license_field {sheet.item_license_field!r} is not a field of "
                         "the record")
    header = card_data(sheet, features=features, splits=splits, data_files=data_files)
    body = "\n".join([
        f"# {pretty_title}", "", sheet.summary.strip(), "",
        *_overview(sheet, fmt, splits),
        *_loading(fmt, data_files),
        *_fields(field_rows),
        *_datasheet_sections(sheet),
        *_licence(sheet),
        *_sensitive(sheet),
        *_accounting(stats, config),
        "## Citation", "", "```bibtex", sheet.citation.strip(), "```", "",
    ])
    return str(DatasetCard(f"---\n{header.to_yaml()}\n---\n\n{body}"))


def _overview(sheet: Datasheet, fmt: str, splits: dict[str, dict]) -> list[str]:
    lines = [f"- **Format:** {fmt}"]
    if sheet.homepage:
        lines.append(f"- **Homepage:** {sheet.homepage}")
    lines += [f"- **Split `{name}`:** {int(s['num_examples']):,} examples, {int(s['num_bytes']):,} bytes"
              for name, s in splits.items()]
    return [*lines, ""]


def _loading(fmt: str, data_files: dict[str, str]) -> list[str]:
    lines = ["## Loading", "", "```python", "import datasets", "",
             'ds = datasets.load_dataset("path/to/this/folder")  # or the Hub repository id', "```", ""]
    if fmt == "webdataset":
        first = next(iter(data_files.values()), "train-*.tar")
        split = next(iter(data_files), "train")
        lines += [f"The shards are plain tar files (`{first}`) readable by `webdataset`: each sample has one "
                  "primary image member `KEY.jpg`, `KEY.txt` (the sample's main text) and `KEY.json` "
                  "(every other field; images appear as their format, size and sha256). The primary image "
                  "is stored as it came (JPEG, PNG or WebP, never re-encoded) and always named `KEY.jpg`, so "
                  "that it is one image column here and one key for every training script; decoders read "
                  "its format from the bytes, and `KEY.json` records it. Other images keep their format's "
                  "extension. Member suffixes are lower case.", "",
                  "Beside the tars are the files trainers read instead of counting samples: "
                  f"`_info.json` for timm (`create_dataset(\"wds/NAME\", root=FOLDER, split=\"{split}\", "
                  "target_key=\"FIELD\")`, the target an integer field of `KEY.json`: there is no `KEY.cls`), "
                  "`sizes.json` for open_clip (no `--train-num-samples` needed), and `.nv-meta/` with one "
                  "`<shard>.tar.idx` per tar for Megatron-Energon (`get_train_dataset(FOLDER, ...)` with no "
                  "`energon prepare`; a captioning sample of the primary image and `KEY.txt`).", ""]
    return lines


def _cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _fields(field_rows: list[dict]) -> list[str]:
    rows = [[f"`{r['name']}`", f"`{r['type']}`", "yes" if r["nullable"] else "no", r["description"]]
            for r in field_rows]
    return ["## Fields", "", *_table(["field", "type", "nullable", "description"], rows)]


def _datasheet_sections(sheet: Datasheet) -> list[str]:
    lines = ["## Datasheet", ""]
    for attr, title in SECTIONS.items():
        section = getattr(sheet, attr)
        lines += [f"### {title}", ""]
        for name, info in type(section).model_fields.items():
            answer = getattr(section, name)
            if answer is not None:
                lines += [f"**{info.description}**", "", answer.strip(), ""]
    return lines


def _licence(sheet: Datasheet) -> list[str]:
    if sheet.license == "other":
        text = f"The dataset is distributed under `{sheet.license_name}`: {sheet.license_link}."
    elif sheet.license == "unknown":
        text = "No single licence is known for the dataset as a whole; the terms below apply."
    else:
        text = f"The dataset is distributed under `{sheet.license}` ({hub_vocab.license_name(sheet.license)})."
    if sheet.license_link and sheet.license != "other":
        text += f" Terms: {sheet.license_link}."
    lines = ["## Licence", "", text, "", sheet.distribution.license_terms.strip(), ""]
    if sheet.item_license_field:
        lines += [f"Individual items carry their own licence in the field `{sheet.item_license_field}` (null when "
                  "the source gives none); it applies to that item in addition to the dataset licence.", ""]
    return lines


def _sensitive(sheet: Datasheet) -> list[str]:
    if not sheet.sensitive_data:
        return []
    return ["## Sensitive data", "", *[f"- {' '.join(s.split())}" for s in sheet.sensitive_data], ""]


def _accounting(stats: dict, config: Mapping[str, Any] | BaseModel) -> list[str]:
    lines = ["## Build accounting", "",
             "Every input row has exactly one outcome: `input_rows = written + failed + filtered + duplicates`.", ""]
    for split, s in stats.get("splits", {}).items():
        counts = {k: int(s.get(k, 0)) for k in OUTCOMES}
        input_rows = int(s.get("input_rows", 0))
        if input_rows != sum(counts.values()):
            raise ValueError(f"stats of split {split!r} do not add up: input_rows={input_rows} but "
                             + " + ".join(f"{k}={v}" for k, v in counts.items()))
        lines += [f"### Split `{split}`", "",
                  f"{input_rows:,} input rows = " + " + ".join(f"{v:,} {k}" for k, v in counts.items()), ""]
        reasons = [[outcome, f"`{reason}`", n] for outcome, by_reason in sorted(s.get("reasons", {}).items())
                   for reason, n in sorted(by_reason.items())]
        if reasons:
            lines += _table(["outcome", "reason", "rows"], reasons)
        notes = sorted(s.get("notes", {}).items())
        if notes:
            lines += ["Notes:", "", *_table(["note", "count"], [[f"`{k}`", v] for k, v in notes])]
    total = stats.get("total")
    if total and len(stats.get("splits", {})) > 1:
        lines += [f"**All splits:** {int(total.get('input_rows', 0)):,} input rows = "
                  + " + ".join(f"{int(total.get(k, 0)):,} {k}" for k in OUTCOMES), ""]
    options = _flatten(config.model_dump(mode="json", exclude_defaults=True)
                       if isinstance(config, BaseModel) else dict(config))
    if "shuffle_seed" in stats:  # the order of the samples in the shards (vldata build --shuffle)
        seed = stats["shuffle_seed"]
        lines += [f"**Sample order:** a seeded random permutation of each split's rows (shuffle seed `{seed}`), "
                  "the same in every format." if seed is not None else "**Sample order:** input order.", ""]
    lines += ["### Filters and options that ran", ""]
    if options:
        lines += _table(["option", "value"], [[f"`{k}`", f"`{v}`"] for k, v in sorted(options.items())])
    else:
        lines += ["The builder's defaults (no option changed).", ""]
    return lines


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
