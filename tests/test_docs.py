"""The repository's docs stand on their own in a clone: every relative link in README.md and docs/*.md
resolves to a file inside the repository, nothing points at the team's briefing folder outside it, and
every "RAW_FORMATS §N.M" citation names a heading that docs/RAW_FORMATS.md has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAW_FORMATS = REPO / "docs" / "RAW_FORMATS.md"

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)  # http:, https:, mailto:, ...
CITATION = re.compile(r"RAW_FORMATS(?:\.md)?\s*§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
FORBIDDEN = ("shared/DESIGN.md", "shared/RAW_FORMATS.md", "../shared")


def markdown_docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def scanned_files() -> list[Path]:
    files = [*markdown_docs(), *sorted((REPO / "cards").glob("*.yaml"))]
    for folder in ("builders", "vldata", "tests"):
        files += sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def links(text: str) -> list[str]:
    """Targets of Markdown links and <img src>, outside code blocks and code spans."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(prose) + IMG_SRC.findall(prose)


def test_link_finder():
    text = ("See [a](docs/A.md#x) and ![b](img.png \"t\"), [c](https://x.org), <img src='y.png'>\n"
            "`[not](a-link.md)`\n```\n[nor](this.md)\n```\n")
    assert links(text) == ["docs/A.md#x", "img.png", "https://x.org", "y.png"]


@pytest.mark.parametrize("doc", markdown_docs(), ids=_rel)
def test_relative_links_resolve_inside_the_repository(doc):
    problems = []
    for target in links(doc.read_text(encoding="utf-8")):
        if EXTERNAL.match(target):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not path:
            continue  # an anchor in the same file
        resolved = (doc.parent / path).resolve()
        if not resolved.is_relative_to(REPO):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
    assert problems == [], f"{_rel(doc)}: {problems}"


def test_nothing_points_outside_the_repository_at_the_briefing():
    problems = [f"{_rel(p)}: mentions {s!r}" for p in scanned_files()
                for s in FORBIDDEN if s in p.read_text(encoding="utf-8")]
    assert problems == []


def raw_formats_sections() -> set[str]:
    return set(HEADING.findall(RAW_FORMATS.read_text(encoding="utf-8")))


def test_raw_formats_has_numbered_headings():
    sections = raw_formats_sections()
    assert {"5", "5.2", "6.4"} <= sections


def test_raw_formats_citations_name_existing_headings():
    sections = raw_formats_sections()
    problems = [f"{_rel(p)}: RAW_FORMATS §{n} has no heading in docs/RAW_FORMATS.md"
                for p in scanned_files() for n in CITATION.findall(p.read_text(encoding="utf-8"))
                if n not in sections]
    assert problems == []


def test_citation_finder():
    text = "see RAW_FORMATS §5.2, docs/RAW_FORMATS.md §4 (x) and RAW_FORMATS.md §6.4."
    assert CITATION.findall(text) == ["5.2", "4", "6.4"]
