"""The documentation's links lead somewhere: every relative link names a file of the repository
(and a heading of it, when it names one), and no page cites the design document, which is not
part of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([*(ROOT / "docs").rglob("*.md"), ROOT / "README.md", ROOT / "RELIABILITY.md"])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = ("http://", "https://", "mailto:")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(target)
    assert broken == []


def test_no_page_cites_the_design_document() -> None:
    """It lives outside the repository: a reader cannot follow "DESIGN.md section 3"."""
    sources = [ROOT / "README.md", ROOT / "RELIABILITY.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "headrace").rglob("*.py")]  # docstrings become reference pages
    citing = [str(p.relative_to(ROOT)) for p in sources if re.search(r"DESIGN(\.md| §)", p.read_text())]
    assert citing == []
