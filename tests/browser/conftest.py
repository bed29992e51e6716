"""Browser fixtures: Debian's chromium through Playwright, and blue + green chat instances
serving site/ (real redis-server and moto server underneath, free ports)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.chatstack import ChatInstance, ChatStack, chat_stack
from tests.conftest import REPO, free_port, start_haproxy, stop_process, wait_for_http

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


HAPROXY_CFG = """\
global
    maxconn 200
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend site
    bind 127.0.0.1:{port}
    # the pinned mark (X-Canary-Pinned) is the load balancer's to set, never the client's
    http-request del-header X-Canary-Pinned
    default_backend chat
backend chat
    balance roundrobin
    option httpchk GET /readyz
    timeout check 3s
    default-server inter 300ms fall 2 rise 1
    server primary 127.0.0.1:{green} check
    server backup 127.0.0.1:{blue} check backup
"""


@contextmanager
def haproxy_front(primary: ChatInstance, backup: ChatInstance, workdir: Path) -> Iterator[str]:
    """A real HAProxy on a free port: ``primary`` while it is ready, else ``backup``."""
    port = free_port()
    proc = start_haproxy(workdir / f"haproxy-{port}.cfg", HAPROXY_CFG.format(
        port=port, green=primary.port, blue=backup.port))
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def green_first_proxy(site_pair: tuple[ChatInstance, ChatInstance],
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """HAProxy in front of both colors: green while it is ready, else blue."""
    blue, green = site_pair
    with haproxy_front(green, blue, tmp_path_factory.mktemp("haproxy")) as url:
        yield url
