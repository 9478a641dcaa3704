"""The values the Hugging Face Hub accepts in a dataset card's YAML header, kept offline.

A card is checked against these lists before it is rendered, so a typo in a licence id or a task
category fails at build time with the bad value named, instead of silently losing the Hub's filters.
Each list names its source; refresh a list by copying it again from that source (and keep the
commit). This module is data plus lookups: it never reads the network or any file.
"""

from __future__ import annotations

# Licence identifiers, with the SPDX id where one exists (used for Croissant's licence URL).
# Source: huggingface/hub-docs, docs/hub/repositories-licenses.md, the table between the
# "region licenses" markers, at commit 008d54d08fd9d5d05ed2840bebb0b61111326a15 (the list
# https://huggingface.co/docs/hub/repositories-licenses shows). SPDX ids: the licence ids of the
# SPDX list (as shipped in `packaging.licenses`) that equal the Hub id case-insensitively.
LICENSES: dict[str, tuple[str, str | None]] = {
    "apache-2.0": ("Apache license 2.0", "Apache-2.0"),
    "mit": ("MIT", "MIT"),
    "openrail": ("OpenRAIL license family", None),
    "bigscience-openrail-m": ("BigScience OpenRAIL-M", None),
    "creativeml-openrail-m": ("CreativeML OpenRAIL-M", None),
    "bigscience-bloom-rail-1.0": ("BigScience BLOOM RAIL 1.0", None),
    "bigcode-openrail-m": ("BigCode Open RAIL-M v1", None),
    "afl-3.0": ("Academic Free License v3.0", "AFL-3.0"),
    "artistic-2.0": ("Artistic license 2.0", "Artistic-2.0"),
    "bsl-1.0": ("Boost Software License 1.0", "BSL-1.0"),
    "bsd": ("BSD license family", None),
    "bsd-2-clause": ('BSD 2-clause "Simplified" license', "BSD-2-Clause"),
    "bsd-3-clause": ('BSD 3-clause "New" or "Revised" license', "BSD-3-Clause"),
    "bsd-3-clause-clear": ("BSD 3-clause Clear license", "BSD-3-Clause-Clear"),
    "c-uda": ("Computational Use of Data Agreement", None),
    "cc": ("Creative Commons license family", None),
    "cc0-1.0": ("Creative Commons Zero v1.0 Universal", "CC0-1.0"),
    "cc-by-2.0": ("Creative Commons Attribution 2.0", "CC-BY-2.0"),
    "cc-by-2.5": ("Creative Commons Attribution 2.5", "CC-BY-2.5"),
    "cc-by-3.0": ("Creative Commons Attribution 3.0", "CC-BY-3.0"),
    "cc-by-4.0": ("Creative Commons Attribution 4.0", "CC-BY-4.0"),
    "cc-by-sa-3.0": ("Creative Commons Attribution Share Alike 3.0", "CC-BY-SA-3.0"),
    "cc-by-sa-4.0": ("Creative Commons Attribution Share Alike 4.0", "CC-BY-SA-4.0"),
    "cc-by-nc-2.0": ("Creative Commons Attribution Non Commercial 2.0", "CC-BY-NC-2.0"),
    "cc-by-nc-3.0": ("Creative Commons Attribution Non Commercial 3.0", "CC-BY-NC-3.0"),
    "cc-by-nc-4.0": ("Creative Commons Attribution Non Commercial 4.0", "CC-BY-NC-4.0"),
    "cc-by-nd-4.0": ("Creative Commons Attribution No Derivatives 4.0", "CC-BY-ND-4.0"),
    "cc-by-nc-nd-3.0": ("Creative Commons Attribution Non Commercial No Derivatives 3.0", "CC-BY-NC-ND-3.0"),
    "cc-by-nc-nd-4.0": ("Creative Commons Attribution Non Commercial No Derivatives 4.0", "CC-BY-NC-ND-4.0"),
    "cc-by-nc-sa-2.0": ("Creative Commons Attribution Non Commercial Share Alike 2.0", "CC-BY-NC-SA-2.0"),
    "cc-by-nc-sa-3.0": ("Creative Commons Attribution Non Commercial Share Alike 3.0", "CC-BY-NC-SA-3.0"),
    "cc-by-nc-sa-4.0": ("Creative Commons Attribution Non Commercial Share Alike 4.0", "CC-BY-NC-SA-4.0"),
    "cdla-sharing-1.0": ("Community Data License Agreement – Sharing, Version 1.0", "CDLA-Sharing-1.0"),
    "cdla-permissive-1.0": ("Community Data License Agreement – Permissive, Version 1.0", "CDLA-Permissive-1.0"),
    "cdla-permissive-2.0": ("Community Data License Agreement – Permissive, Version 2.0", "CDLA-Permissive-2.0"),
    "wtfpl": ("Do What The F*ck You Want To Public License", "WTFPL"),
    "ecl-2.0": ("Educational Community License v2.0", "ECL-2.0"),
    "epl-1.0": ("Eclipse Public License 1.0", "EPL-1.0"),
    "epl-2.0": ("Eclipse Public License 2.0", "EPL-2.0"),
    "etalab-2.0": ("Etalab Open License 2.0", "etalab-2.0"),
    "eupl-1.1": ("European Union Public License 1.1", "EUPL-1.1"),
    "agpl-3.0": ("GNU Affero General Public License v3.0", "AGPL-3.0"),
    "gfdl": ("GNU Free Documentation License family", None),
    "gpl": ("GNU General Public License family", None),
    "gpl-2.0": ("GNU General Public License v2.0", "GPL-2.0"),
    "gpl-3.0": ("GNU General Public License v3.0", "GPL-3.0"),
    "lgpl": ("GNU Lesser General Public License family", None),
    "lgpl-2.1": ("GNU Lesser General Public License v2.1", "LGPL-2.1"),
    "lgpl-3.0": ("GNU Lesser General Public License v3.0", "LGPL-3.0"),
    "isc": ("ISC", "ISC"),
    "lppl-1.3c": ("LaTeX Project Public License v1.3c", "LPPL-1.3c"),
    "ms-pl": ("Microsoft Public License", "MS-PL"),
    "mpl-2.0": ("Mozilla Public License 2.0", "MPL-2.0"),
    "odc-by": ("Open Data Commons License Attribution family", None),
    "odbl": ("Open Database License family", None),
    "openrail++": ("Open Rail++-M License", None),
    "osl-3.0": ("Open Software License 3.0", "OSL-3.0"),
    "postgresql": ("PostgreSQL License", "PostgreSQL"),
    "ofl-1.1": ("SIL Open Font License 1.1", "OFL-1.1"),
    "ncsa": ("University of Illinois/NCSA Open Source License", "NCSA"),
    "unlicense": ("The Unlicense", "Unlicense"),
    "zlib": ("zLib License", "Zlib"),
    "pddl": ("Open Data Commons Public Domain Dedication and License", None),
    "lgpl-lr": ("Lesser General Public License For Linguistic Resources", None),
    "deepfloyd-if-license": ("DeepFloyd IF Research License Agreement", None),
    "llama2": ("Llama 2 Community License Agreement", None),
    "gemma": ("Gemma Terms of Use", None),
    "unknown": ("Unknown", None),
    "other": ("Other", None),
}

# Task categories (the Hub's pipeline types) offered for datasets.
# Source: huggingface/huggingface.js, packages/tasks/src/pipelines.ts (PIPELINE_DATA keys), at
# commit 0057f4042b57b833d296ed4cf1c76cfd6619d00d; hub-docs datasetcard.md points to this file as
# "Full list". Types marked `hideInDatasets: true` there (biology, audio-text-to-text,
# image-text-to-text, document-question-answering, keypoint-detection, visual-document-retrieval,
# any-to-any, other) are left out: the Hub does not offer them for datasets.
TASK_CATEGORIES: tuple[str, ...] = (
    "text-classification", "token-classification", "table-question-answering", "question-answering",
    "zero-shot-classification", "translation", "summarization", "feature-extraction", "text-generation",
    "text2text-generation", "fill-mask", "sentence-similarity", "text-to-speech", "text-to-audio",
    "automatic-speech-recognition", "audio-to-audio", "audio-classification", "voice-activity-detection",
    "depth-estimation", "image-classification", "object-detection", "image-segmentation", "text-to-image",
    "image-to-text", "image-to-image", "image-to-video", "unconditional-image-generation",
    "video-classification", "reinforcement-learning", "robotics", "tabular-classification",
    "tabular-regression", "tabular-to-text", "table-to-text", "multiple-choice", "text-ranking",
    "text-retrieval", "time-series-forecasting", "text-to-video", "visual-question-answering",
    "zero-shot-image-classification", "graph-ml", "mask-generation", "zero-shot-object-detection",
    "text-to-3d", "image-to-3d", "image-feature-extraction", "video-text-to-text",
)

# size_categories buckets, smallest first.
# Source: the installed huggingface_hub, DatasetCardData's docstring (repocard_data.py): "Options
# are: 'n<1K', '1K<n<10K', ..., 'n>1T', and 'other'"; the same buckets as hub-docs datasetcard.md.
SIZE_CATEGORIES: tuple[str, ...] = (
    "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
    "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T", "other",
)

# multilinguality values. Source: the same DatasetCardData docstring ("Options are: 'monolingual',
# 'multilingual', 'translation', 'other'").
MULTILINGUALITY: tuple[str, ...] = ("monolingual", "multilingual", "translation", "other")

# Field types of extra_gated_fields that take no further options. Source: huggingface/hub-docs,
# docs/hub/datasets-gated.md ("Customize requested information") at commit
# 0020dbde2b8aa802b85db1f1361e06bed0cf3dec; `select` is left out because it needs an options list.
GATED_FIELD_TYPES: tuple[str, ...] = ("text", "checkbox", "date_picker", "country")

SOURCES = "the sources named in vldata/hub_vocab.py"


def check(kind: str, value: str) -> str:
    """``value`` if the Hub accepts it as a ``kind`` ("license", "task_categories",
    "size_categories", "multilinguality", "gated_field_type"); else ValueError naming it. Licence ids
    are compared and returned in lower case, as the Hub writes them."""
    allowed = {"license": LICENSES, "task_categories": TASK_CATEGORIES, "size_categories": SIZE_CATEGORIES,
               "multilinguality": MULTILINGUALITY, "gated_field_type": GATED_FIELD_TYPES}[kind]
    normal = value.lower() if kind == "license" else value
    if normal not in allowed:
        raise ValueError(f"{value!r} is not a {kind} value the Hugging Face Hub accepts (see {SOURCES})")
    return normal


def spdx_id(license_id: str) -> str | None:
    """The SPDX id of a Hub licence id, or None for families, custom and unknown licences."""
    entry = LICENSES.get(license_id.lower())
    return entry[1] if entry else None


def license_name(license_id: str) -> str:
    """The full name the Hub shows for a licence id."""
    return LICENSES[license_id.lower()][0]
