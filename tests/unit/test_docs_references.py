"""Every test the documentation cites exists: a `tests/...` path (a glob must match a file),
a test file named by itself (`test_x.py`), and a test named by itself (`test_x`, or a prefix
written `test_x_...`) - in README.md and docs/*.md, so a reader never looks for proof that is
not there; and every section cited by its title (`docs/aws.md, "The 4-minute demo"`), in the
docs or in a comment, is a heading or list item of that doc."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PATH = re.compile(r"tests/[\w./*-]*\w(?:\.py|/|\*)?")
NAME = re.compile(r"(?<![\w/])(test_\w+)(\.py|\*|\.\.\.|…)?")


def _test_sources() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "tests").rglob("*.py"))


SOURCES = _test_sources()
TEST_FILES = {p.name for p in (REPO / "tests").rglob("test_*.py")}


def _defined(name: str, prefix: bool) -> bool:
    tail = r"\w*" if prefix else r"\b"
    return re.search(rf"\b(?:def|class) {re.escape(name)}{tail}", SOURCES) is not None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_test_exists(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = []
    for m in PATH.finditer(text):
        path = m.group(0)
        if "*" in path:
            if not list(REPO.glob(path)):
                missing.append(path)
        elif not (REPO / path).exists():
            missing.append(path)
    for m in NAME.finditer(text):
        name, suffix = m.group(1), m.group(2)
        if suffix == ".py":
            ok = f"{name}.py" in TEST_FILES
        elif suffix == "*":
            ok = any(f.startswith(name) for f in TEST_FILES)
        elif suffix in ("...", "…") or name.endswith("_"):
            ok = _defined(name.rstrip("_"), prefix=True)
        else:
            ok = _defined(name, prefix=False) or f"{name}.py" in TEST_FILES
        if not ok:
            missing.append(name + (suffix or ""))
    assert not missing, f"{doc.relative_to(REPO)} cites what tests/ does not hold: {missing}"


# A section cited by its title, as `docs/aws.md, "The 4-minute demo"`, in any text file of
# the project: the docs, the roles' comments, the code.
SECTION = re.compile(r"((?:docs/)?[\w-]+\.md),? [\"“]([^\"”\n]{3,80})[\"”]")
LEAD = re.compile(r"^(?:#+|-|\*\*)\s*")
TEXT_SUFFIXES = {".md", ".py", ".yml", ".yaml", ".j2", ".js", ".sh"}
# not the project's text: git's store, the virtualenv, installed packages, tool caches
SKIP_DIRS = {".git", ".venv", "node_modules", "collections", "__pycache__", ".pytest_cache",
             ".mypy_cache", ".ruff_cache", ".hypothesis", "output"}


def _project_text_files() -> list[Path]:
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        out.extend(Path(root) / f for f in sorted(files) if Path(f).suffix in TEXT_SUFFIXES)
    return out


@functools.cache
def _section_leads(doc: Path) -> tuple[str, ...]:
    """The headings and list items' first words of a doc, without Markdown marks."""
    return tuple(LEAD.sub("", line).replace("`", "").replace("**", "").strip()
                 for line in doc.read_text(encoding="utf-8").splitlines() if LEAD.match(line))


def test_every_cited_section_exists() -> None:
    missing = []
    for path in _project_text_files():
        for m in SECTION.finditer(path.read_text(encoding="utf-8", errors="replace")):
            name, title = m.group(1), m.group(2).replace("`", "")
            doc = (
                REPO / name
                if name.startswith("docs/") or name == "README.md"
                else REPO / "docs" / name
            )
            if not doc.exists() or not any(s.startswith(title) for s in _section_leads(doc)):
                missing.append(f'{path.relative_to(REPO)}: {name}, "{title}"')
    assert not missing, f"sections cited that the docs do not hold: {missing}"
