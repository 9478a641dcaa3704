"""MetaCLIP's substring matching as its reference code writes it (facebookresearch/MetaCLIP,
``metaclip/substr_matching.py``): a loop over every entry for every caption. The oracle the tests and
bench/metaclip_match.py hold ``vldata.tools.metaclip`` to; never used by vldata itself."""

from __future__ import annotations


def reference_spacing(text: str) -> str:
    puncts_to_wrap = [",", ".", ";", ":", "?", "!", "`"]
    chars_to_space = ["\t", "\n", "\r"]
    spaced_text = f" {text} "
    for p in puncts_to_wrap:
        spaced_text = spaced_text.replace(p, f" {p} ")
    for c in chars_to_space:
        spaced_text = spaced_text.replace(c, " ")
    return spaced_text


def reference_substr_matching(text: str, metadata: list[str]) -> list[int]:
    text = reference_spacing(text)
    return [entry_id for entry_id, entry in enumerate(metadata) if f" {entry} " in text]
