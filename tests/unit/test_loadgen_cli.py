"""`python -m chat loadgen` runs the top-level loadgen package from a checkout, and says what to
do where that package is absent (the service image holds chat/ only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)


def test_chat_loadgen_runs_the_loadgen_package_from_the_checkout() -> None:
    p = _run(["-m", "chat", "loadgen", "--help"], REPO)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: python -m chat loadgen")
    assert "--churn" in p.stdout and "--json" in p.stdout
    q = _run(["-m", "loadgen", "--help"], REPO)
    assert q.returncode == 0, q.stderr
    assert q.stdout == p.stdout


def test_chat_loadgen_without_the_package_says_where_to_run_it(tmp_path: Path) -> None:
    # what the image holds: chat/ alone in the working directory
    shutil.copytree(REPO / "chat", tmp_path / "chat",
                    ignore=shutil.ignore_patterns("__pycache__"))
    p = _run(["-m", "chat", "loadgen", "--help"], tmp_path)
    assert p.returncode == 2
    assert "loadgen package is not installed here" in p.stderr
    assert "checkout of the repository" in p.stderr
    assert "Traceback" not in p.stderr
