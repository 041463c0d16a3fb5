"""The documentation builds strictly and the README stays a map.

`mkdocs build --strict` fails on a broken link, a missing anchor, a page left out of the navigation or a
navigation entry without its page, so building the site checks every cross-reference of docs/."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def nav_pages() -> list[str]:
    """Every page named in mkdocs.yml's navigation, as paths under docs/."""
    cfg = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    return [next(iter(entry.values())) for entry in cfg["nav"]]


def test_every_docs_page_is_in_the_navigation_and_every_entry_exists():
    pages = nav_pages()
    on_disk = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert sorted(pages) == on_disk


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="mkdocs and mkdocs-material are not installed (pip install mkdocs mkdocs-material)")
def test_the_docs_build_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for page in nav_pages():
        built = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert built.is_file(), f"{page} was not built"


def test_readme_is_a_map_of_at_most_250_lines_whose_links_exist():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    targets = [m.group(1) for m in LINK.finditer(text) if not m.group(1).startswith(("http://", "https://"))]
    assert targets, "README.md links to no page"
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    # Each page of the site is reachable from the README.
    assert not {f"docs/{p}" for p in nav_pages() if p != "index.md"} - set(targets)


def test_every_command_has_an_example_in_the_readme():
    from mmvid.cli import app  # the package registers every command on import

    text = README.read_text(encoding="utf-8")
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert names
    missing = [n for n in names if f"`mmvid {n}" not in text]
    assert not missing, f"README.md gives no example of: {missing}"
