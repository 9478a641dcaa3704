"""Arboretum's ten text types: the arbor_process / BioCLIP templates (docs/RAW_FORMATS.md §5.2),
declared once in ``TEXT_TYPES`` and turned into a photo's texts (``texts``), the Record's
``text_<type>`` fields (``FIELDS``) and the webdataset members ``KEY.<type>.txt`` (``MEMBERS``, with
the type in lower case: ``KEY.taxontag.txt``).

It must not read files, fetch, load images or build Records (the builder in ``__init__`` does), and
does no sharding, retries or format code.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

# The ten arbor_process gen_img_txt_pair / BioCLIP make_wds text types, declared once, in the order of
# the Record's ``text_<type>`` fields: type -> (template, description of the text).
# A template's fields: ``common`` (the common name, else the scientific name), ``sci`` (scientificName),
# ``seq`` (the ranks present, space-separated), ``tags`` ("kingdom Animalia phylum ...") and
# ``with_common`` (" with common name {common_name}." with a common name, else ".").
TEXT_TYPES: dict[str, tuple[str, str]] = {
    "com": ("a photo of {common}.", "a photo of {common_name}."),
    "common_name": ("{common}.", "{common_name}."),
    "sci": ("a photo of {sci}.", "a photo of {scientificName}."),
    "sci_com": ("a photo of {sci}{with_common}", "a photo of {scientificName} with common name {common_name}."),
    "scientific_name": ("{sci}.", "{scientificName}."),
    "taxon": ("a photo of {seq}.", "a photo of {kingdom} {phylum} {class} {order} {family} {genus} {species}."),
    "taxonTag": ("a photo of {tags}.", "a photo of kingdom {kingdom} phylum {phylum} class {class} order {order} "
                 "family {family} genus {genus} species {species}."),
    "taxonTag_com": ("a photo of {tags}{with_common}", "the taxonTag text + ' with common name {common_name}.'"),
    "taxon_com": ("a photo of {seq}{with_common}", "the taxon text + ' with common name {common_name}.'"),
    "taxonomic_name": ("{seq}.", "{kingdom} {phylum} {class} {order} {family} {genus} {species}."),
}


def texts(scientific_name: str, ranks: dict[str, str | None], common_name: str | None) -> dict[str, str]:
    """The ten texts of one photo, with the arbor_process templates. Where arbor_process would write
    ``None``: without a common name, ``com``/``common_name`` use the scientific name (BioCLIP's
    fallback) and the ``*_com`` texts end without their "with common name" clause; missing ranks are
    left out of the rank sequences."""
    values = {"common": common_name or scientific_name, "sci": scientific_name,
              "seq": " ".join(ranks[r] for r in RANKS if ranks.get(r)),
              "tags": " ".join(f"{r} {ranks[r]}" for r in RANKS if ranks.get(r)),
              "with_common": f" with common name {common_name}." if common_name else "."}
    return {name: template.format(**values) for name, (template, _) in TEXT_TYPES.items()}


# the Record's text fields, in TEXT_TYPES order, named by the type as arbor_process names it
# (``text_taxonTag``), and the KEY.<type>.txt member of each with the type in lower case
# (``taxontag.txt``): webdataset and open_clip lower-case member suffixes when they read and
# ``datasets`` does not, so a capital in the tar would name the member differently in each
FIELDS: dict[str, Any] = {f"text_{t}": (str, Field(description=f"KEY.{t.lower()}.txt: {d}"))
                          for t, (_, d) in TEXT_TYPES.items()}
MEMBERS: dict[str, str] = {t.lower(): f"text_{t}" for t in TEXT_TYPES}
