"""The README's links, the docs paths named in configs and the documented command lines lead to what exists (docs/ is an MkDocs site)."""

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


#: A documented command line: ``grasp-dl <job>`` and its arguments, up to a comment or the line's end.
COMMAND = re.compile(r"^\s*(?:\$ )?grasp-dl (train|predict|evaluate|survey) ([^#\n`]*)", re.MULTILINE)


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, job, key=value overrides) of every command line in the README, the docs and the config comments."""
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md")), *sorted((ROOT / "conf").rglob("*.yaml"))]
    found = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        if page.suffix == ".yaml":  # a comment's command: the text after '# '
            text = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
        for job, rest in COMMAND.findall(text):
            words = rest.split()
            if "..." in words or any(w.startswith(("[", "-")) for w in words):
                continue  # an elided or optional argument, a flag or a sweep: not one whole command
            keep = [w for w in words if "=" in w and not w.startswith(("hydra/", "hparams_search"))]
            # the shell drops the quotes; <run> is a placeholder
            overrides = [re.sub(r"<[^>]*>", "X", w.replace("'", "").replace('"', "")) for w in keep]
            found.append((page.relative_to(ROOT).as_posix(), job, overrides))
    return found


def test_every_documented_command_line_composes_with_the_shipped_configs(tmp_path):
    """Each key=value of a documented command is a key the job's config has (a 'catalog=' once crept in)."""
    from hydra_configs import compose_config

    commands = _documented_commands()
    assert len(commands) > 20 and {job for _, job, _ in commands} >= {"train", "predict", "survey"}
    for where, job, overrides in commands:
        try:
            compose_config(job, overrides, tmp_path)
        except Exception as error:  # noqa: BLE001 - the message names the page and the command
            pytest.fail(f"{where}: grasp-dl {job} {' '.join(overrides)}: {type(error).__name__}: {error}")
