"""Croissant metadata of a built folder.

``croissant_document`` describes one output folder (parquet or webdataset) as a Croissant 1.1 JSON-LD
document (``conformsTo`` set explicitly): the dataset's identity and licence from its datasheet,
Croissant RAI properties where a datasheet answer maps onto one directly, one ``cr:FileObject`` per
shard (with its sha256 and size), file sets that say where records live, and record sets whose fields
are derived from the builder's ``Record`` by ``schema.croissant_fields``. ``validate_croissant`` runs
mlcroissant's own static validation in-process. This module never reads shards and never downloads.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from typing import Any

from vldata.describe import hub_vocab, schema
from vldata.layout import IMAGE_EXTENSIONS
from vldata.describe.card import Datasheet

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"

# The standard Croissant 1.1 @context: the 1.0 context plus arrayShape, containedIn, isArray and
# language-tagged name/description, as the spec's 1.1 example datasets and mlcroissant's
# ``make_context`` for 1.1 write it (a test keeps the two equal).
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "name": {"@container": "@language"},
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

ENCODING = {"parquet": "application/x-parquet", "webdataset": "application/x-tar"}
_IMAGE_GLOBS = tuple(f"*.{ext}" for ext in sorted(set(IMAGE_EXTENSIONS.values())))


def croissant_document(sheet: Datasheet, *, name: str, version: str, fmt: str, record_type: type[schema.Record],
                       shards: dict[str, list[dict]], url: str | None = None,
                       date_published: str | None = None) -> dict:
    """The Croissant JSON-LD of a folder in format ``fmt`` ("parquet" or "webdataset").

    ``shards`` maps split -> [{"path", "num_samples", "num_bytes", "sha256"}] with paths relative to
    the folder; ``version`` is MAJOR.MINOR.PATCH; ``url`` defaults to the datasheet's homepage.
    """
    if fmt not in ENCODING:
        raise ValueError(f"unknown format {fmt!r}")
    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": name,
        "description": sheet.summary.strip(),
        "version": version,
        "citeAs": sheet.citation.strip(),
        "keywords": [*sheet.hub.task_categories, *sheet.hub.tags],
    }
    if sheet.hub.language:
        doc["inLanguage"] = list(sheet.hub.language)
    licence = _license(sheet)
    if licence:
        doc["license"] = licence
    if url or sheet.homepage:
        doc["url"] = url or sheet.homepage
    if date_published:
        doc["datePublished"] = date_published
    doc.update(rai_properties(sheet))
    files = [_file_object(s, fmt) for split in shards for s in shards[split]]
    if fmt == "parquet":
        file_sets, record_sets = _parquet_layout(record_type, shards)
    else:
        file_sets, record_sets = _webdataset_layout(record_type, [f["@id"] for f in files])
    doc["distribution"] = [*files, *file_sets]
    doc["recordSet"] = record_sets
    return doc


def _license(sheet: Datasheet) -> str | None:
    """The SPDX URL of the licence when it has one, else the datasheet's licence link."""
    spdx = hub_vocab.spdx_id(sheet.license)
    return f"https://spdx.org/licenses/{spdx}.html" if spdx else sheet.license_link


def rai_properties(sheet: Datasheet) -> dict[str, Any]:
    """Croissant RAI properties answered directly by the datasheet."""
    c, u = sheet.collection_process, sheet.uses
    collection = [x.strip() for x in (c.acquisition, c.mechanisms, c.timeframe) if x]
    sensitive = [sheet.composition.sensitive_data.strip(), *sheet.sensitive_data]
    limitations = [x.strip() for x in (u.out_of_scope, sheet.composition.noise) if x]
    out: dict[str, Any] = {
        "rai:dataCollection": "\n\n".join(collection),
        "rai:dataCollectionMissingData": sheet.composition.missing_information.strip(),
        "rai:dataPreprocessingProtocol": [sheet.preprocessing.steps.strip()],
        "rai:dataUseCases": [u.intended.strip()],
        "rai:dataBiases": [u.risks.strip()],
        "rai:dataLimitations": limitations,
        "rai:personalSensitiveInformation": sensitive,
    }
    if sheet.preprocessing.raw_data:
        out["rai:dataCollectionRawData"] = sheet.preprocessing.raw_data.strip()
    if sheet.composition.labels:
        out["rai:dataAnnotationProtocol"] = [sheet.composition.labels.strip()]
    if c.impact_analysis:
        out["rai:dataSocialImpact"] = c.impact_analysis.strip()
    plan = [x.strip() for x in (sheet.maintenance.maintainer, sheet.maintenance.updates) if x]
    out["rai:dataReleaseMaintenancePlan"] = "\n\n".join(plan)
    return out


def _file_object(shard: dict, fmt: str) -> dict:
    path = str(shard["path"])
    return {"@type": "cr:FileObject", "@id": path, "name": path, "contentUrl": path,
            "encodingFormat": ENCODING[fmt], "contentSize": f"{int(shard['num_bytes'])} B",
            "sha256": shard["sha256"]}


def _parquet_layout(record_type: type[schema.Record], shards: dict[str, list[dict]]) -> tuple[list, list]:
    paths = [PurePosixPath(s["path"]) for split in shards for s in shards[split]]
    globs = sorted({str(p.parent / f"*{p.suffix}") for p in paths})
    file_set = {"@type": "cr:FileSet", "@id": "parquet-files", "name": "parquet-files",
                "description": "The parquet shards of every split.", "encodingFormat": ENCODING["parquet"],
                "includes": globs or ["data/*.parquet"]}
    source = {"fileSet": {"@id": "parquet-files"}}
    fields = schema.croissant_fields(record_type, "default", source)
    if shards and all(f["name"] != "split" for f in fields):  # a Record may have its own `split`
        splits = "|".join(re.escape(s) for s in shards)
        fields.append({"@type": "cr:Field", "@id": "default/split", "name": "split",
                       "description": "The split a record belongs to, from its shard's file name.",
                       "dataType": "sc:Text",
                       "source": {**source, "extract": {"fileProperty": "filename"},
                                  "transform": {"regex": rf"^({splits})-.*\.parquet$"}}})
    record_set = {"@type": "cr:RecordSet", "@id": "default", "name": "default",
                  "description": f"One {record_type.__name__} per row.", "key": {"@id": "default/key"},
                  "field": fields}
    return [file_set], [record_set]


def _webdataset_layout(record_type: type[schema.Record], tars: list[str]) -> tuple[list, list]:
    """Tars as FileObjects; their members as file sets; one record set per kind of member, all keyed
    by the sample key. mlcroissant can read file properties of archived members but does not parse
    JSON inside archives, so ``samples`` is descriptive while ``texts`` and ``images`` are readable;
    they carry no ``references`` to ``samples`` because mlcroissant would then have to read it first."""
    contained = [{"@id": t} for t in tars]

    def members(ident: str, description: str, encoding: list[str], includes: list[str]) -> dict:
        return {"@type": "cr:FileSet", "@id": ident, "name": ident, "description": description,
                "containedIn": contained, "encodingFormat": encoding, "includes": includes}

    file_sets = [
        members("json-members", "KEY.json: every field but key and text; images appear as their info.",
                ["application/json"], ["*.json"]),
        members("text-members", "KEY.txt (the sample's main text) and any extra KEY.<name>.txt.",
                ["text/plain"], ["*.txt"]),
        members("image-members", "KEY.jpg (the primary image, bytes as stored whatever their format) and KEY.<field>.<ext> (other images).",
                [f"image/{f}" for f in IMAGE_EXTENSIONS], list(_IMAGE_GLOBS)),
    ]

    def field(record_set: str, name: str, file_set: str, data_type: str, description: str,
              prop: str, regex: str | None = None) -> dict:
        source: dict[str, Any] = {"fileSet": {"@id": file_set}, "extract": {"fileProperty": prop}}
        if regex:
            source["transform"] = {"regex": regex}
        return {"@type": "cr:Field", "@id": f"{record_set}/{name}", "name": name, "description": description,
                "dataType": data_type, "source": source}

    def member_set(ident: str, file_set: str, data_type: str, description: str) -> dict:
        return {"@type": "cr:RecordSet", "@id": ident, "name": ident, "description": description,
                "key": {"@id": f"{ident}/member"},
                "field": [field(ident, "member", file_set, "sc:Text", "The member's file name.", "filename"),
                          field(ident, "key", file_set, "sc:Text", "The key of the sample it belongs to.",
                                "filename", r"^([A-Za-z0-9_-]+)\."),
                          field(ident, "content", file_set, data_type, "The member's content.", "content")]}

    samples = {"@type": "cr:RecordSet", "@id": "samples", "name": "samples",
               "description": f"One {record_type.__name__} per sample, from its KEY.json member.",
               "key": {"@id": "samples/key"},
               "field": [field("samples", "key", "json-members", "sc:Text", "Unique, deterministic sample key.",
                               "filename", r"^([A-Za-z0-9_-]+)\.json$"),
                         *schema.croissant_fields(record_type, "samples", {"fileSet": {"@id": "json-members"}},
                                                  layout="json")]}
    texts = member_set("texts", "text-members", "sc:Text", "Text members; `KEY.txt` is the sample's main text.")
    images = member_set("images", "image-members", "sc:ImageObject",
                        f"Image members; `KEY.jpg` is the primary image `{record_type.primary_image}`.")
    return file_sets, [samples, texts, images]


def validate_croissant(path: str | Path, *, warnings: bool = False) -> list[str]:
    """mlcroissant's static validation of a local Croissant file, as ``mlcroissant validate`` runs it;
    returns the error messages (and the warnings, prefixed ``warning:``, when asked). Empty = valid."""
    import mlcroissant as mlc

    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file"]
    ctx = mlc.Context()
    absl_logger = logging.getLogger("absl")  # mlcroissant logs every issue; we return them instead
    level = absl_logger.level
    absl_logger.setLevel(logging.CRITICAL)
    try:
        metadata = mlc.Metadata.from_file(ctx=ctx, file=path)
        mlc.Dataset.from_metadata(metadata)  # also builds the operation graph, like the CLI
    except mlc.ValidationError:
        pass
    except Exception as e:  # mlcroissant raises plain exceptions on malformed documents
        if not ctx.issues.errors:
            return [f"{type(e).__name__}: {' '.join(str(e).split())}"]
    finally:
        absl_logger.setLevel(level)
    issues = sorted(ctx.issues.errors)
    if warnings:
        issues += [f"warning: {w}" for w in sorted(ctx.issues.warnings)]
    return issues
