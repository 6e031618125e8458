"""The README's links and the docs paths named in configs lead to pages that exist (docs/ is an MkDocs site)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "src"


def _relative_links(markdown: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown)
    return [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_stays_short_and_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= 10_000
    blocks = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    assert blocks[0].endswith("pip install -e '.[dev]' && grasp-dl train")
    # .ci/run runs exactly this command
    assert blocks[1] == ". .venv/bin/activate && python -m pytest -n auto --dist loadfile"
    assert blocks[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md"))])
def test_every_relative_link_exists(page):
    path = ROOT / page
    missing = [t for t in _relative_links(path.read_text(encoding="utf-8")) if not (path.parent / t).exists()]
    assert missing == [], f"{page} links to missing files: {missing}"


def test_every_page_in_the_site_navigation_exists():
    nav = re.findall(
        r"^\s+-\s+(?:[^:\n]+:\s+)?(\S+\.(?:md|ipynb))\s*$", (ROOT / "docs" / "mkdocs.yml").read_text(), re.M
    )
    assert len(nav) > 10
    assert [p for p in nav if not (DOCS / p).is_file()] == []


def test_docs_paths_named_in_configs_and_code_exist():
    named = set()
    for path in [*ROOT.joinpath("conf").rglob("*.yaml"), *ROOT.joinpath("grasp_dl").rglob("*.py")]:
        named |= set(re.findall(r"docs/src/[\w/.-]+\.md", path.read_text(encoding="utf-8")))
    assert named, "no config names a docs page any more: drop this test"
    assert sorted(p for p in named if not (ROOT / p).is_file()) == []
