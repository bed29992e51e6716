"""Shared fixtures: real redis-server and moto server processes on free 127.0.0.1 ports.

Every fixture picks its own free port, so suites never collide with each other or with a
running local stack (which uses the fixed ports 6379/8000/8080-8082).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# A warning in a playbook's output: Ansible's `[WARNING]:` / `[DEPRECATION WARNING]:` lines
# and Python's `...Warning: ...` (on stage, a warning reads like an error)
WARNING = re.compile(r"(?im)^.*(?:\[(?:DEPRECATION )?WARNING\]|\w+Warning:).*$")

# Import the collection's code as Ansible does: through the collections/ansible_collections
# symlink tree.
if str(REPO / "collections") not in sys.path:
    sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.canarychat.platform.plugins.module_utils.haproxy_runtime import (  # noqa: E402
    RuntimeAPI,
    parse_get_weight,
    parse_show_stat,
    stat_row,
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_for_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except Exception as e:  # any failure means "not yet"
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} not answering after {timeout}s: {last}")


def haproxy_cli(sock: str, command: str) -> str:
    """One command on HAProxy's runtime API (a unix socket); its whole answer. The
    collection's own client (plugins/module_utils/haproxy_runtime.py)."""
    return RuntimeAPI(sock, timeout=5).run(command)


def haproxy_weights(sock: str) -> dict[str, int]:
    """The current weights of chat/blue and chat/green."""
    return {c: parse_get_weight(haproxy_cli(sock, f"get weight chat/{c}"))
            for c in ("blue", "green")}


def haproxy_status(sock: str, color: str) -> str:
    """chat/<color>'s status column of `show stat` (UP, DOWN, ...)."""
    row = stat_row(parse_show_stat(haproxy_cli(sock, "show stat")), "chat", color)
    if row is None:
        raise AssertionError(f"no chat/{color} in show stat")
    return str(row["status"])


@dataclass
class Service:
    port: int
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_haproxy(cfg: Path, text: str) -> subprocess.Popen[bytes]:
    """A real HAProxy in the foreground on the configuration `text` (written to `cfg`)."""
    exe = shutil.which("haproxy")
    if exe is None:
        pytest.fail("haproxy is not installed (scripts/setup.sh installs it)")
    cfg.write_text(text)
    return subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def start_redis(tmp: Path, port: int | None = None) -> Service:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
    port = port or free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return Service(port, proc, f"redis://127.0.0.1:{port}/0")


def start_moto(port: int | None = None, env: dict[str, str] | None = None) -> Service:
    """The local stack's DynamoDB emulator (moto's server with the patches of
    roles/data/files/moto_patches/), with the same arguments as `moto_server`."""
    port = port or free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "python"), str(REPO / "roles" / "data" / "files" / "dynamodb_emulator.py"),
         "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )
    wait_for_http(f"http://127.0.0.1:{port}/moto-api/")
    return Service(port, proc, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_redis(tmp_path_factory.mktemp("redis"))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Service]:
    svc = start_moto()
    yield svc
    svc.stop()


@pytest.fixture(autouse=True)
def _stdin_stays_blocking() -> Iterator[None]:
    """Every test starts with a blocking stdin, and fails if it leaves stdin non-blocking.

    Child processes share this process's stdin; one that sets O_NONBLOCK on it (buildah run
    does) makes every later `ansible-playbook` refuse to start. Children should get their own
    stdin (`stdin=subprocess.DEVNULL`); this finds the one that did not, and keeps the rest of
    the run from failing for it.
    """
    os.set_blocking(0, True)
    yield
    if not os.get_blocking(0):
        os.set_blocking(0, True)
        pytest.fail("stdin was left non-blocking: give the test's child processes "
                    "stdin=subprocess.DEVNULL")


@pytest.fixture(autouse=True, scope="session")
def _aws_test_env() -> Iterator[None]:
    """No test may reach real AWS: dummy credentials, Seoul region."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="ap-northeast-2", AWS_REGION="ap-northeast-2")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
