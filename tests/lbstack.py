"""A weighted local stack for the board's live weights: its own redis-server (no canary
event left by another suite), chat blue and green serving site/, and a real HAProxy in front
of them on the loadbalancer role's own configuration (tests/haproxy_config.py renders
roles/loadbalancer/templates/haproxy.cfg.j2), whose admin listener serves the read-only
stats CSV the chats poll. Free ports only.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.chatstack import ChatInstance, ChatStack, http
from tests.conftest import (
    REPO,
    Service,
    free_port,
    haproxy_cli,
    haproxy_weights,
    start_haproxy,
    start_redis,
    stop_process,
    wait_for_port,
)
from tests.haproxy_config import render_haproxy_cfg

STATS_URI = "/_haproxy/stats"  # the local inventory's local_haproxy_stats_uri

@dataclass
class WeightedStack:
    chats: ChatStack
    redis: Service
    blue: ChatInstance
    green: ChatInstance
    port: int  # HAProxy's public door
    admin: int  # HAProxy's admin listener (stats CSV)
    sock: str  # HAProxy's runtime API, for changes "by hand"
    cfg: Path
    cfg_text: str
    haproxy: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lb_weights(self) -> dict[str, int]:
        return haproxy_weights(self.sock)

    def set_weight(self, color: str, weight: int) -> None:
        haproxy_cli(self.sock, f"set server chat/{color} weight {weight}")

    def stop_haproxy(self) -> None:
        stop_process(self.haproxy)

    def restart_chat(self, color: str) -> ChatInstance:
        old = self.blue if color == "blue" else self.green
        old.stop()
        new = self.chats.start(color, port=old.port, env=old.env, static=REPO / "site")
        if color == "blue":
            self.blue = new
        else:
            self.green = new
        return new


def stats(inst: ChatInstance) -> dict[str, Any]:
    status, body = inst.get("/api/stats")
    assert status == 200, body
    import json
    return dict(json.loads(body))


def wait_weights(inst: ChatInstance, want: dict[str, int], timeout: float = 10.0) -> dict[str, Any]:
    """/api/stats's weights once they hold `want` (and came from HAProxy), else fail."""
    deadline = time.monotonic() + timeout
    got: Any = None
    while time.monotonic() < deadline:
        got = stats(inst)["weights"]
        if got and got.get("source") == "haproxy" and all(got.get(c) == w
                                                          for c, w in want.items()):
            return dict(got)
        time.sleep(0.2)
    raise AssertionError(f"{inst.color}'s /api/stats weights {got}, wanted {want} from haproxy")


@contextmanager
def weighted_stack(moto: Service, workdir: Path, weights: tuple[int, int] = (90, 10),
                   poll_seconds: float = 1.0) -> Iterator[WeightedStack]:
    redis = start_redis(workdir)
    chats = ChatStack(redis.url, moto.url, workdir)
    haproxy = None
    try:
        chats.init_tables()
        port, admin, blue_port, green_port = (free_port() for _ in range(4))
        run_dir = Path(tempfile.mkdtemp(prefix="lbw-"))  # short: UNIX socket paths are limited
        sock = str(run_dir / "haproxy.sock")
        text = render_haproxy_cfg(lb_port=port, admin_port=admin, blue_port=blue_port,
                                  green_port=green_port, run_dir=run_dir, state_dir=workdir,
                                  weights=weights, loadbalancer_local_maxconn=200,
                                  loadbalancer_local_check_inter_ms=500,
                                  loadbalancer_local_check_fall=2,
                                  loadbalancer_local_check_rise=1)
        cfg = workdir / "haproxy.cfg"
        haproxy = start_haproxy(cfg, text)
        wait_for_port(admin)
        env = {"CHAT_WEIGHTS_HAPROXY_URL": f"http://127.0.0.1:{admin}{STATS_URI};csv",
               "CHAT_WEIGHTS_POLL_SECONDS": str(poll_seconds),
               "CHAT_ALLOWED_HOSTS": ""}
        blue = chats.start("blue", port=blue_port, env=env, static=REPO / "site")
        green = chats.start("green", port=green_port, env=env, static=REPO / "site")
        stack = WeightedStack(chats, redis, blue, green, port, admin, sock, cfg, text, haproxy)
        yield stack
        haproxy = stack.haproxy
    finally:
        chats.stop_all()
        if haproxy is not None:
            stop_process(haproxy)
        redis.stop()


__all__ = ["STATS_URI", "WeightedStack", "http", "stats", "wait_weights", "weighted_stack"]
