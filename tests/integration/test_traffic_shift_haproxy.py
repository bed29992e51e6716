"""traffic_shift's haproxy driver against a real HAProxy 2.6, run as Ansible runs it.

Each test starts HAProxy on free ports, on the loadbalancer role's configuration
(tests/haproxy_config.py): one backend `chat` holding servers `blue` and
`green`, which point at two tiny in-process HTTP servers standing in for the chat: they
answer /readyz (200, or 503 when "down"), /metrics in the chat's format (counters that grow
on every scrape, with errors when "faulty") and any other path with 200 (500 when
"failing"). The module runs through `ansible localhost -m canarychat.platform.traffic_shift`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REPO,
    VENV_BIN,
    free_port,
    haproxy_cli,
    haproxy_status,
    haproxy_weights,
    start_haproxy,
    stop_process,
    wait_for_port,
)
from tests.haproxy_config import render_haproxy_cfg

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ a stand-in chat


@dataclass
class FakeChat:
    color: str
    ready: bool = True
    faulty: bool = False  # /metrics shows failed sends and slow acks
    failing: bool = False  # HTTP answers 500 (seen by HAProxy's hrsp_5xx)
    idle: bool = False  # nobody chats: the counters stay where they are
    sends_ok: int = 0
    sends_error: int = 0
    acks_fast: int = 0  # <= 10 ms
    acks_slow: int = 0  # > 1 s
    lock: threading.Lock = field(default_factory=threading.Lock)

    def metrics(self) -> str:
        with self.lock:  # every scrape: 20 more sends happened since the last one
            if self.idle:
                pass
            elif self.faulty:
                self.sends_ok += 10
                self.sends_error += 10
                self.acks_slow += 10
            else:
                self.sends_ok += 20
                self.acks_fast += 20
            lab = f'color="{self.color}",version="v"'
            acks = self.acks_fast + self.acks_slow
            return "\n".join([
                "# TYPE chat_sends_total counter",
                f'chat_sends_total{{{lab},outcome="ok"}} {self.sends_ok}',
                f'chat_sends_total{{{lab},outcome="error"}} {self.sends_error}',
                "# TYPE chat_ack_latency_seconds histogram",
                f'chat_ack_latency_seconds_bucket{{{lab},le="0.01"}} {self.acks_fast}',
                f'chat_ack_latency_seconds_bucket{{{lab},le="1.0"}} {self.acks_fast}',
                f'chat_ack_latency_seconds_bucket{{{lab},le="+Inf"}} {acks}',
                f'chat_ack_latency_seconds_count{{{lab}}} {acks}',
                "",
            ])


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """HAProxy's health checks hang up without reading the body: not an error."""


def serve(chat: FakeChat) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/readyz":
                code, body = (200, b"ready") if chat.ready else (503, b"unready")
            elif self.path == "/metrics":
                code, body = 200, chat.metrics().encode()
            else:
                code, body = (500, b"boom") if chat.failing else (200, chat.color.encode())
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = QuietServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


# ------------------------------------------------------------------ HAProxy


def wait_for_socket(path: str, timeout: float = 20.0) -> None:
    """Until HAProxy's runtime API socket exists: HAProxy may answer on its TCP listeners a
    moment before it has put the UNIX socket in place."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"no runtime API socket {path}"
        time.sleep(0.05)


@dataclass
class Stack:
    blue: FakeChat
    green: FakeChat
    socket_path: str
    tcp_port: int
    frontend_port: int
    metrics_urls: dict[str, str]

    def cli(self, command: str) -> str:
        return haproxy_cli(self.socket_path, command)

    def weights(self) -> dict[str, int]:
        return haproxy_weights(self.socket_path)

    def set_weights(self, blue: int, green: int) -> None:
        self.cli(f"set server chat/blue weight {blue};set server chat/green weight {green}")
        assert self.weights() == {"blue": blue, "green": green}

    def status(self, color: str) -> str:
        return haproxy_status(self.socket_path, color)

    def wait_status(self, color: str, want: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while (got := self.status(color)) != want:
            assert time.monotonic() < deadline, f"chat/{color} stayed {got}, wanted {want}"
            time.sleep(0.05)

    def get(self, path: str = "/") -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.frontend_port}{path}",
                                        timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """HAProxy on the role's configuration; an indirect parameter overrides role knobs."""
    knobs = getattr(request, "param", {})
    blue, green = FakeChat("blue"), FakeChat("green")
    servers = [serve(blue), serve(green)]
    tmp = tempfile.mkdtemp(prefix="ts-haproxy-")  # short: UNIX socket paths are limited
    sock = os.path.join(tmp, "haproxy.sock")
    fe, tcp = free_port(), free_port()
    # the loadbalancer role's configuration, with checks every 100 ms that flip at once
    proc = start_haproxy(Path(tmp, "haproxy.cfg"), render_haproxy_cfg(
        lb_port=fe, admin_port=free_port(), blue_port=servers[0][1], green_port=servers[1][1],
        run_dir=tmp, state_dir=tmp, runtime_api_tcp_port=tcp,
        loadbalancer_local_check_inter_ms=100, loadbalancer_local_check_fall=1,
        loadbalancer_local_check_rise=1, **knobs))
    try:
        wait_for_port(fe)
        wait_for_socket(sock)
        s = Stack(blue, green, sock, tcp, fe,
                  {c: f"http://127.0.0.1:{p}/metrics" for c, (_, p) in zip(
                      ("blue", "green"), servers, strict=True)})
        s.wait_status("blue", "UP")
        s.wait_status("green", "UP")
        yield s
    finally:
        stop_process(proc)
        for server, _ in servers:
            server.shutdown()
            server.server_close()
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ running the module


def run_module(args: dict[str, Any], *flags: str,
               module: str = "canarychat.platform.traffic_shift") -> dict[str, Any]:
    """Run traffic_shift (or another module of ours) as Ansible does (ad-hoc, local
    connection); its result."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [str(VENV_BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}",
         "-m", module, "-a", json.dumps(args), *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    try:
        out = json.loads(proc.stdout)
        return out["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        raise AssertionError(f"ansible failed: rc={proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}") from None


def shift_args(stack: Stack, weight: int, **extra: Any) -> dict[str, Any]:
    return {"driver": "haproxy", "weight": weight, "haproxy_socket": stack.socket_path,
            "metrics_urls": stack.metrics_urls, **extra}


# ------------------------------------------------------------------ tests


FALLBACK = {"loadbalancer_local_fallback": True}


@pytest.mark.parametrize("stack", [{}, FALLBACK], indirect=True, ids=["", "fallback"])
def test_weights_applied_read_back_and_followed_by_haproxy(stack: Stack) -> None:
    res = run_module(shift_args(stack, 50, bake_seconds=1, poll_interval=0.3))
    assert not res.get("failed"), res
    assert res["changed"] is True
    assert res["weights_before"] == {"blue": 90, "green": 10}
    assert res["weights_after"] == {"blue": 50, "green": 50}
    assert stack.weights() == {"blue": 50, "green": 50}
    # HAProxy balances by the new weights: round robin 1:1 now.
    colors = [stack.get("/")[1] for _ in range(20)]
    assert colors.count("green") == 10 and colors.count("blue") == 10
    # Gates were read: healthy from HAProxy, error rate and p95 from /metrics, all passing.
    seen = {(g["gate"], g["source"]) for g in res["gates"]}
    assert {("healthy", "haproxy"), ("error_rate", "metrics"), ("p95_ms", "metrics"),
            ("error_rate", "haproxy")} <= seen
    assert all(g["ok"] is not False for g in res["gates"])
    metric_rates = [g for g in res["gates"] if g["gate"] == "error_rate"
                    and g["source"] == "metrics"]
    assert metric_rates and all(g["value"] == 0.0 and g["color"] == "green"
                                for g in metric_rates)
    t = res["timings"]
    assert set(t) == {"apply_seconds", "verify_seconds", "bake_seconds", "total_seconds"}
    assert t["bake_seconds"] >= 1


@pytest.mark.parametrize("stack", [FALLBACK], indirect=True)
def test_fallback_serves_a_color_at_weight_0_while_the_weighted_one_is_down(
        stack: Stack) -> None:
    stack.set_weights(0, 100)
    assert {stack.get("/") for _ in range(6)} == {(200, "green")}
    stack.green.ready = False
    stack.wait_status("green", "DOWN")
    assert {stack.get("/") for _ in range(6)} == {(200, "blue")}
    stack.green.ready = True
    stack.wait_status("green", "UP")
    assert {stack.get("/") for _ in range(6)} == {(200, "green")}
    assert stack.weights() == {"blue": 0, "green": 100}


def test_without_fallback_a_color_at_weight_0_gets_nothing(stack: Stack) -> None:
    stack.set_weights(0, 100)
    stack.green.ready = False
    stack.wait_status("green", "DOWN")
    assert {stack.get("/")[0] for _ in range(3)} == {503}


def test_same_weights_again_is_unchanged(stack: Stack) -> None:
    res = run_module(shift_args(stack, 10))
    assert not res.get("failed"), res
    assert res["changed"] is False
    assert stack.weights() == {"blue": 90, "green": 10}


def test_check_mode_reports_the_change_and_changes_nothing(stack: Stack) -> None:
    res = run_module(shift_args(stack, 50), "--check", "--diff")
    assert not res.get("failed"), res
    assert res["changed"] is True
    assert res["weights_after"] == {"blue": 50, "green": 50}
    assert res["diff"] == {"before": {"weights": {"blue": 90, "green": 10}},
                           "after": {"weights": {"blue": 50, "green": 50}}}
    assert stack.weights() == {"blue": 90, "green": 10}


def test_metrics_gate_breach_sends_everyone_to_blue_and_names_the_gate(stack: Stack) -> None:
    stack.green.faulty = True  # half of green's sends fail from now on
    res = run_module(shift_args(stack, 50, bake_seconds=20, poll_interval=0.3))
    assert res.get("failed") is True
    assert "gate error_rate breached on green (source metrics)" in res["msg"]
    assert "threshold 0.05" in res["msg"] and "measured 0.5 >" in res["msg"]
    assert "everyone sent to blue (blue 100 / green 0)" in res["msg"]
    assert res["rolled_back"] is True
    assert res["weights_after"] == {"blue": 100, "green": 0}
    assert stack.weights() == {"blue": 100, "green": 0}
    assert res["breach"]["gate"] == "error_rate" and res["breach"]["value"] == 0.5


def test_on_breach_previous_restores_the_previous_weights(stack: Stack) -> None:
    stack.green.faulty = True
    res = run_module(shift_args(stack, 50, bake_seconds=20, poll_interval=0.3,
                                on_breach="previous"))
    assert res.get("failed") is True
    assert "gate error_rate breached on green (source metrics)" in res["msg"]
    assert "previous weights restored (blue 90 / green 10)" in res["msg"]
    assert res["weights_after"] == {"blue": 90, "green": 10}
    assert stack.weights() == {"blue": 90, "green": 10}


def test_a_green_nobody_uses_fails_with_insufficient_data(stack: Stack) -> None:
    stack.green.idle = True  # green's /metrics answers, its sends never grow
    res = run_module(shift_args(stack, 50, bake_seconds=1, poll_interval=0.3))
    assert res.get("failed") is True
    assert res["msg"].startswith("gate sends breached on green (source metrics): insufficient "
                                 "data: measured 0 < threshold 20 sends during the bake")
    assert stack.weights() == {"blue": 100, "green": 0}

    stack.set_weights(90, 10)
    res = run_module(shift_args(stack, 50, bake_seconds=1, poll_interval=0.3,
                                allow_idle=True))
    assert not res.get("failed"), res
    assert stack.weights() == {"blue": 50, "green": 50}
    sends = res["gates"][-1]
    assert sends["gate"] == "sends" and sends["value"] == 0 and sends["ok"] is None


def test_p95_gate_breach(stack: Stack) -> None:
    stack.green.faulty = True
    res = run_module(shift_args(stack, 50, max_error_rate=1.0, bake_seconds=20,
                                poll_interval=0.3))
    assert res.get("failed") is True
    assert "gate p95_ms breached on green (source metrics)" in res["msg"]
    assert "threshold 500" in res["msg"]
    assert stack.weights() == {"blue": 100, "green": 0}


def test_haproxy_5xx_counters_are_a_second_gate_source(stack: Stack) -> None:
    """Green's /metrics look clean, but its HTTP answers through HAProxy are 500s."""
    stack.set_weights(50, 50)
    stack.green.failing = True
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            stack.get("/api/stats")
            time.sleep(0.02)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        res = run_module(shift_args(stack, 90, bake_seconds=20, poll_interval=0.3))
    finally:
        stop.set()
        t.join(5)
    assert res.get("failed") is True
    assert "gate error_rate breached on green (source haproxy)" in res["msg"]
    assert stack.weights() == {"blue": 100, "green": 0}


def test_precheck_refuses_when_green_is_down(stack: Stack) -> None:
    stack.green.ready = False
    stack.wait_status("green", "DOWN")
    res = run_module(shift_args(stack, 50))
    assert res.get("failed") is True
    assert res["msg"].startswith("pre-check refused the step: gate healthy breached on green")
    assert "measured 0 < threshold 1" in res["msg"]
    assert res["changed"] is False
    assert stack.weights() == {"blue": 90, "green": 10}


def test_rollback_ignores_the_gates(stack: Stack) -> None:
    stack.set_weights(50, 50)
    stack.green.faulty = stack.green.failing = True
    stack.blue.ready = False  # even blue looking unhealthy does not block a rollback
    stack.wait_status("blue", "DOWN")
    res = run_module(shift_args(stack, 0, rollback=True, bake_seconds=30))
    assert not res.get("failed"), res
    assert res["changed"] is True and res["gates"] == []
    assert res["weights_after"] == {"blue": 100, "green": 0}
    assert stack.weights() == {"blue": 100, "green": 0}
    assert res["timings"]["bake_seconds"] == 0


def test_unreachable_runtime_api_fails_cleanly(stack: Stack) -> None:
    res = run_module(shift_args(stack, 50, haproxy_socket=stack.socket_path + ".nope"))
    assert res.get("failed") is True
    assert "cannot connect to the HAProxy runtime API" in res["msg"]


def test_runtime_api_over_tcp(stack: Stack) -> None:
    res = run_module(shift_args(stack, 30, haproxy_socket=f"127.0.0.1:{stack.tcp_port}"))
    assert not res.get("failed"), res
    assert stack.weights() == {"blue": 70, "green": 30}


def test_a_wrong_server_name_fails_before_anything_moves(stack: Stack) -> None:
    res = run_module(shift_args(stack, 50, green_server="greeen"))
    assert res.get("failed") is True
    assert "HAProxy cannot read the weight of chat/greeen" in res["msg"]
    assert stack.weights() == {"blue": 90, "green": 10}
