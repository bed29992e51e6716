"""Browser fixtures: Debian's chromium through Playwright, and blue + green chat instances
serving site/ (real redis-server and moto server underneath, free ports)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.chatstack import ChatInstance, ChatStack, chat_stack
from tests.conftest import REPO, free_port, start_haproxy, stop_process, wait_for_http
from tests.haproxy_config import render_haproxy_cfg

__all__ = ["browser", "chat_stack", "green_first_proxy", "haproxy_front", "site_pair"]

# The CI machine is small and shared: give each expectation room (they return as soon as
# they hold, so this only lengthens a failure).
expect.set_options(timeout=15_000)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope: Playwright's sync API keeps an event loop running in the main thread
    # while it is open, and pytest-asyncio cannot run async tests under it; it must be
    # closed before the session moves on to the other suites.
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site_pair(chat_stack: ChatStack) -> tuple[ChatInstance, ChatInstance]:
    """Blue (v1) and green (v2), each serving the web client and the board."""
    site = REPO / "site"
    return (chat_stack.start("blue", static=site), chat_stack.start("green", static=site))


@contextmanager
def haproxy_front(primary: ChatInstance, backup: ChatInstance, workdir: Path) -> Iterator[str]:
    """A real HAProxy on free ports, on the loadbalancer role's configuration
    (tests/haproxy_config.py): ``primary`` at weight 100 and ``backup`` at weight 0, with the
    role's fallback on, so ``backup`` takes the users while ``primary`` is not ready. The
    URL is that of its public door."""
    port, admin = free_port(), free_port()
    servers = {primary.color: primary.port, backup.color: backup.port}
    assert set(servers) == {"blue", "green"}, "one instance of each color"
    run_dir = tempfile.mkdtemp(prefix="brw-")  # UNIX socket paths are short
    proc = start_haproxy(workdir / f"haproxy-{port}.cfg", render_haproxy_cfg(
        lb_port=port, admin_port=admin, blue_port=servers["blue"],
        green_port=servers["green"], run_dir=run_dir, state_dir=workdir,
        weights=(100, 0) if primary.color == "blue" else (0, 100),
        loadbalancer_local_fallback=True, loadbalancer_local_maxconn=200,
        loadbalancer_local_check_inter_ms=300, loadbalancer_local_check_fall=2,
        loadbalancer_local_check_rise=1))
    try:
        wait_for_http(f"http://127.0.0.1:{admin}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def green_first_proxy(site_pair: tuple[ChatInstance, ChatInstance],
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """HAProxy in front of both colors: green while it is ready, else blue."""
    blue, green = site_pair
    with haproxy_front(green, blue, tmp_path_factory.mktemp("haproxy")) as url:
        yield url
