"""Every relative link in README.md and docs/*.md leads somewhere: the file exists, and so does
the heading an anchor names. CI also builds the site with `mkdocs build --strict`, which checks
the same and more; this runs in the quick suite, in a second, without building anything. Every
page of docs/ is also in the site's nav.

Pages are rendered with Python-Markdown (what mkdocs renders them with) and the toc extension's
heading ids, so a link inside code is not a link, and an anchor is checked against the id mkdocs
gives the heading.
"""
from __future__ import annotations

from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import markdown
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("a", "img") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs.get("href") or attrs.get("src"))
        if attrs.get("id"):
            self.ids.add(attrs["id"])


@cache
def _parse(page: Path) -> _Collector:
    html = markdown.markdown(page.read_text(encoding="utf-8"), extensions=["tables", "toc"])
    collector = _Collector()
    collector.feed(html)
    return collector


def _broken(page: Path, docs: Path = DOCS) -> list[str]:
    broken = []
    for link in _parse(page).links:
        parts = urlsplit(link)
        if parts.scheme or parts.netloc:
            continue                          # a web address: not checked (nothing downloads)
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif page.parent == docs and not target.is_relative_to(docs):
            broken.append(f"{link}: leaves docs/, which the site cannot serve")
        elif parts.fragment and target.suffix == ".md" and parts.fragment not in _parse(target).ids:
            broken.append(f"{link}: {target.name} has no heading #{parts.fragment}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings(page):
    assert not _broken(page), f"{page.relative_to(ROOT)}: {_broken(page)}"


def test_every_page_is_in_the_site_nav():
    def pages(nav):
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                yield from pages(value) if isinstance(value, list) else [value]

    nav = set(pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
    assert nav == {p.name for p in DOCS.glob("*.md")}


def test_the_checker_finds_a_broken_link_anchor_and_escape(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\n## Second part\n")
    (tmp_path / "outside.md").write_text("# Outside\n")
    page = docs / "b.md"
    page.write_text("[ok](a.md#second-part) [gone](missing.md) [bad anchor](a.md#third) [out](../outside.md) "
                    "`[in code](nowhere.md)` [web](https://example.org/x.md) [here](#b)\n\n# B\n")
    assert _broken(page, docs) == ["missing.md: no such file", "a.md#third: a.md has no heading #third",
                                   "../outside.md: leaves docs/, which the site cannot serve"]
