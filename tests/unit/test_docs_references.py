"""Every test the documentation cites exists: a `tests/...` path (a glob must match a file),
a test file named by itself (`test_x.py`), and a test named by itself (`test_x`, or a prefix
written `test_x_...`) - in README.md and docs/*.md, so a reader never looks for proof that is
not there."""

from __future__ import annotations

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
