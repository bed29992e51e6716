"""The fault-injection stack: redis-server, moto server (behind a switchable TCP forwarder),
chat blue and green, and a real HAProxy in front of them, all on FREE 127.0.0.1 ports.

HAProxy runs the local stack's own configuration, the loadbalancer role's template
(roles/loadbalancer/templates/haproxy.cfg.j2, rendered by tests/haproxy_config.py): the
public door `www` (the users' WebSockets), the admin listener (the color-pinned paths
/_color/<color>/, /metrics, the admin API), one backend `chat` with servers `blue` and
`green`, and the runtime API socket `traffic_shift` drives. Only ports, paths, the health
check pace and a test module's own knobs (`HAPROXY_KNOBS` in it) differ. Nothing here
touches the fixed local-stack ports.

Each test module gets its own stack (a heavy scenario must not leave its backlog to the
next one). Each scenario prints a one-line JSON summary (and appends it to $FAULTS_RESULTS
when set): the figures docs/reliability.md records.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loadgen import LoadGen
from tests.chatstack import ChatInstance, ChatStack, http
from tests.conftest import (
    REPO,
    Service,
    free_port,
    haproxy_cli,
    haproxy_status,
    haproxy_weights,
    start_haproxy,
    start_moto,
    start_redis,
    stop_process,
    wait_for_http,
    wait_for_port,
)
from tests.haproxy_config import render_haproxy_cfg

# The role's template (tests/haproxy_config.py) with faster health checks, so a restarted or
# failing color is seen within about a second: checks every 500 ms, down after 2, up after 2.
FAST_CHECKS: dict[str, Any] = {
    "loadbalancer_local_check_inter_ms": 500,
    "loadbalancer_local_check_fall": 2,
    "loadbalancer_local_check_rise": 2,
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class FaultStack:
    workdir: Path
    redis: Service
    moto: Service
    proxy: subprocess.Popen[bytes]
    proxy_port: int
    chat: ChatStack
    blue: ChatInstance
    green: ChatInstance
    lb_port: int = 0  # the public door
    admin_port: int = 0  # the admin listener
    sock: str = ""
    haproxy: subprocess.Popen[bytes] | None = None
    green_env: dict[str, str] = field(default_factory=dict)

    # ---- load balancer

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.lb_port}/ws"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start_haproxy(self, weights: tuple[int, int] = (50, 50), **knobs: Any) -> None:
        """HAProxy on the role's configuration; `knobs` override role variables."""
        self.lb_port, self.admin_port = free_port(), free_port()
        run_dir = tempfile.mkdtemp(prefix="flt-")  # UNIX socket paths are short
        self.sock = os.path.join(run_dir, "haproxy.sock")
        self.haproxy = start_haproxy(self.workdir / "haproxy.cfg", render_haproxy_cfg(
            lb_port=self.lb_port, admin_port=self.admin_port, blue_port=self.blue.port,
            green_port=self.green.port, run_dir=run_dir, state_dir=self.workdir,
            weights=weights, **{**FAST_CHECKS, **knobs}))
        wait_for_port(self.lb_port)
        wait_for_port(self.admin_port)
        deadline = time.monotonic() + 20  # the UNIX socket may come a moment after the ports
        while not os.path.exists(self.sock):
            assert time.monotonic() < deadline, f"no runtime API socket {self.sock}"
            time.sleep(0.05)
        self.wait_status("blue", "UP")
        self.wait_status("green", "UP")

    def cli(self, command: str) -> str:
        return haproxy_cli(self.sock, command)

    def weights(self) -> dict[str, int]:
        return haproxy_weights(self.sock)

    def set_weights(self, blue: int, green: int) -> None:
        self.cli(f"set server chat/blue weight {blue};set server chat/green weight {green}")

    def status(self, color: str) -> str:
        return haproxy_status(self.sock, color)

    def wait_status(self, color: str, want: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not (got := self.status(color)).startswith(want):
            assert time.monotonic() < deadline, f"chat/{color} stayed {got}, wanted {want}"
            time.sleep(0.1)

    # ---- chat processes

    def ensure_green(self, env: dict[str, str] | None = None) -> ChatInstance:
        """Green running (on its port, so HAProxy's config holds) with exactly ``env``."""
        env = env or {}
        if self.green.proc.poll() is None and env == self.green_env:
            return self.green
        self.green.stop()
        self.chat.instances.remove(self.green)
        if self.green.log_path.exists():  # keep the old log: the new one has the same name
            self.green.log_path.rename(self.green.log_path.with_suffix(f".{time.time():.0f}"))
        self.green = self.chat.start("green", port=self.green.port, env=env)
        self.green_env = env
        self.wait_status("green", "UP")
        return self.green

    def ready(self, inst: ChatInstance) -> tuple[int, Any]:
        status, body, _ = http("GET", inst.url + "/readyz", timeout=10)
        return status, json.loads(body or b"{}")

    def wait_ready(self, inst: ChatInstance, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.ready(inst)[0] != 200:
            assert time.monotonic() < deadline, f"{inst.color} not ready: {self.ready(inst)}"
            time.sleep(0.1)

    # ---- faults

    def restart_redis(self) -> None:
        """Stop redis-server and start a fresh one on the same port (pub/sub state gone)."""
        self.redis.stop()
        self.redis = start_redis(self.workdir, port=self.redis.port)

    def dynamodb_down(self) -> None:
        self.proxy.send_signal(signal.SIGUSR1)

    def dynamodb_up(self) -> None:
        self.proxy.send_signal(signal.SIGUSR2)
        wait_for_port(self.proxy_port)

    def error_lines(self) -> list[str]:
        """Log lines at level ERROR or above from both chat processes (JSON logs)."""
        bad = []
        for inst in (self.blue, self.green):
            for line in inst.logs().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    if "Traceback" in line or "ERROR" in line:
                        bad.append(f"{inst.color}: {line}")
                    continue
                if str(rec.get("level", "")).upper() in ("ERROR", "CRITICAL"):
                    bad.append(f"{inst.color}: {line}")
        return bad

    def stop(self) -> None:
        if self.haproxy is not None:
            stop_process(self.haproxy)
            shutil.rmtree(os.path.dirname(self.sock), ignore_errors=True)
        self.chat.stop_all()
        stop_process(self.proxy)
        self.moto.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def fault_stack(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """The stack of one test module; its HAProxy takes the module's `HAPROXY_KNOBS`."""
    work = tmp_path_factory.mktemp("faults")
    redis = start_redis(work)
    moto = start_moto()
    proxy_port = free_port()
    proxy = subprocess.Popen([sys.executable, str(Path(__file__).with_name("tcpproxy.py")),
                              str(proxy_port), str(moto.port)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack: FaultStack | None = None
    try:
        wait_for_port(proxy_port)
        chat = ChatStack(redis.url, f"http://127.0.0.1:{proxy_port}", work,
                         env={"CHAT_DRAIN_SECONDS": "4"})
        chat.init_tables()
        blue = chat.start("blue")
        green = chat.start("green")
        stack = FaultStack(work, redis, moto, proxy, proxy_port, chat, blue, green)
        stack.start_haproxy(**getattr(request.module, "HAPROXY_KNOBS", {}))
        wait_for_http(f"{stack.admin_url}/healthz")
        yield stack
    finally:
        if stack is not None:
            stack.stop()
        else:
            for p in (proxy,):
                if p.poll() is None:
                    p.kill()
            moto.stop()
            redis.stop()


# ------------------------------------------------------------------ reporting


def snapshot_conns(lg: LoadGen) -> dict[int, Any]:
    """Which connection each user is on now (to tell when it has moved to a new one)."""
    return {u.index: u.conn for u in lg.users}


def recovered(lg: LoadGen, old: dict[int, Any], affected: set[int]) -> int:
    """How many of the affected users are on a live connection opened after the fault."""
    n = 0
    for u in lg.users:
        if u.index in affected and u.conn is not None and u.conn is not old.get(u.index) \
                and not u.conn.closed.is_set():
            n += 1
    return n


def outcome(name: str, report: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The figures every scenario prints (and asserts on)."""
    summary = {
        "scenario": name, "users": report["users"], "sent": report["sent"],
        "acked": report["acked"], "lost": report["lost"], "duplicated": report["duplicated"],
        "out_of_order": report["out_of_order"],
        "not_recovered": report["users"] - report["held_to_delivery"],
        "unexpected_closes": report["unexpected_closes"], "retries": report["retries"],
        "errors": report["errors"], "p99_ms": report["latency_ms"]["p99"], **extra,
    }
    line = json.dumps(summary, sort_keys=False)
    print(f"\nFAULT RESULT {line}")
    out = os.environ.get("FAULTS_RESULTS")
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return summary


def assert_clean(summary: dict[str, Any], report: dict[str, Any]) -> None:
    assert summary["lost"] == 0 and summary["duplicated"] == 0 \
        and summary["out_of_order"] == 0, (report["lost_seqs"], report["order_anomalies"][:8])
    assert summary["not_recovered"] == 0, (report["disconnected_at_end"],
                                           report["never_connected"])
    assert summary["acked"] == summary["sent"], "a send was never acknowledged"
