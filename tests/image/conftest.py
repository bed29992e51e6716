"""Image fixtures: the image built once per session (scripts/image.sh), the chat stack
(tests/chatstack.py) next to it. Every test here is skipped, with the reason, where buildah is
missing or cannot run (no user namespaces, no storage)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.chatstack import chat_stack
from tests.conftest import REPO

__all__ = ["Built", "buildah", "chat_stack", "image", "image_env", "needs_buildah"]

TAG = "localhost/canary-chat:image-test"


def buildah_unusable() -> str | None:
    """Why buildah cannot build and run images here, or None."""
    if shutil.which("buildah") is None:
        return "buildah is not installed (scripts/setup.sh installs it)"
    r = subprocess.run(["buildah", "info"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        return f"buildah cannot run here: {r.stderr.strip()[:300]}"
    return None


# Why every test here is skipped (None: buildah builds and runs here).
BUILDAH_UNUSABLE = buildah_unusable()
needs_buildah = pytest.mark.skipif(BUILDAH_UNUSABLE is not None, reason=str(BUILDAH_UNUSABLE))


def buildah(*args: str, timeout: float = 120) -> str:
    r = subprocess.run(["buildah", *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)}: {r.stderr[-2000:]}")
    return r.stdout


@dataclass
class Built:
    tag: str
    base: str
    config: dict[str, Any]  # `buildah inspect --type image`'s Docker config (Env, Cmd, ...)
    build_seconds: float


@pytest.fixture(scope="session")
def image() -> Built:
    base = subprocess.run(["bash", "scripts/image.sh", "base"], cwd=REPO, capture_output=True,
                          stdin=subprocess.DEVNULL, text=True, timeout=600)
    assert base.returncode == 0, base.stderr[-3000:]
    t0 = time.monotonic()
    built = subprocess.run(["bash", "scripts/image.sh", "build", TAG], cwd=REPO,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    seconds = time.monotonic() - t0
    info = json.loads(buildah("inspect", "--type", "image", TAG))
    return Built(TAG, base.stdout.strip(), info["Docker"]["config"], seconds)


def image_env(cfg: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in cfg.get("Env") or [])


