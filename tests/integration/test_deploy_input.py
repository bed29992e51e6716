"""canary.yml / rollback.yml refuse bad input and unreachable parts before anything moves.

One stack per module on free ports (redis-server, the DynamoDB emulator, chat blue and green,
a real HAProxy on the loadbalancer role's rendered configuration (tests/haproxy_config.py) with
its runtime socket), and the local inventory pointed at it with -e
(local_state_dir holds the admin token, local_run_dir the HAProxy socket, the three ports).
Each bad value of each extra variable must end the play with one message naming the
variable, the value and what is allowed, while the weights, green's drain state and the
deploy board's events stay as they were and no task that calls, changes or waits runs.
Each unreachable part (HAProxy socket missing, a chat down, the AWS endpoint down) must end
the play with one message naming it and how to start it.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.chatstack import ADMIN_TOKEN, ChatInstance, ChatStack
from tests.conftest import (
    REPO,
    VENV_BIN,
    Service,
    free_port,
    haproxy_cli,
    haproxy_status,
    haproxy_weights,
    start_haproxy,
    stop_process,
    wait_for_port,
)
from tests.haproxy_config import render_haproxy_cfg
from tests.integration.test_traffic_shift_haproxy import run_module

pytestmark = pytest.mark.integration

# Task titles of everything that calls the chat, moves weights or waits: none may run when
# the input is refused.
ACTING_TASKS = ("Move the weights", "Call the chat admin API", "Wait until",
                "Record on the deploy board", "Save it as HAProxy", "Ask HAProxy")


@dataclass
class Stack:
    chat: ChatStack
    blue: ChatInstance
    green: ChatInstance
    sock: str
    state_dir: Path
    run_dir: str
    lb_port: int
    admin_port: int

    def extra(self, **over: Any) -> list[str]:
        values: dict[str, Any] = {
            "local_state_dir": str(self.state_dir), "local_run_dir": self.run_dir,
            "local_bind_address": "127.0.0.1", "local_lb_port": self.lb_port,
            "local_admin_port": self.admin_port,
            "local_blue_port": self.blue.port, "local_green_port": self.green.port,
            "bake_seconds": 0, **over}
        args: list[str] = []
        for k, v in values.items():
            args += ["-e", f"{k}={v}"]
        return args

    def snapshot(self) -> dict[str, Any]:
        stats = self.blue.get_json("/api/stats")
        return {"weights": haproxy_weights(self.sock),
                "green_ready": self.green.get("/readyz")[0],
                "events": stats.get("events", [])}


@pytest.fixture(scope="module")
def stack(chat_stack: ChatStack, chat_pair: tuple[ChatInstance, ChatInstance],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    blue, green = chat_pair
    work = tmp_path_factory.mktemp("deploy-input")
    state = work / "state"
    state.mkdir()
    (state / "admin_token").write_text(ADMIN_TOKEN + "\n")
    run_dir = tempfile.mkdtemp(prefix="dpi-")  # UNIX socket paths are short
    sock = os.path.join(run_dir, "haproxy.sock")
    lb_port, admin_port = free_port(), free_port()
    proc = start_haproxy(work / "haproxy.cfg", render_haproxy_cfg(
        lb_port=lb_port, admin_port=admin_port, blue_port=blue.port, green_port=green.port,
        run_dir=run_dir, state_dir=state, loadbalancer_local_check_inter_ms=300,
        loadbalancer_local_check_fall=2, loadbalancer_local_check_rise=1))
    try:
        wait_for_port(lb_port)
        wait_for_port(admin_port)
        for color in ("blue", "green"):
            for _ in range(100):
                if os.path.exists(sock) and haproxy_status(sock, color).startswith("UP"):
                    break
                subprocess.run(["sleep", "0.1"], check=True)
        yield Stack(chat_stack, blue, green, sock, state, run_dir, lb_port, admin_port)
    finally:
        stop_process(proc)


def play(playbook: str, args: list[str], inventory: str = "inventories/local",
         check: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", inventory, playbook, *args]
    if check:
        cmd.append("--check")
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1"})


def tasks_run(stdout: str) -> list[str]:
    """Titles of the tasks that ran on the host (not those only shown as skipped)."""
    ran = []
    for section in re.split(r"^TASK ", stdout, flags=re.M)[1:]:
        title = section.split("]", 1)[0].lstrip("[")
        if re.search(r"^(ok|changed|fatal|included): ", section, re.M):
            ran.append(title)
    return ran


def failure_messages(out: str) -> list[str]:
    """The play's failures: one `fatal:` per failed task."""
    return [line for line in out.splitlines() if line.startswith("fatal:")]


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert len(failure_messages(out)) == 1, out[-3000:]
    # the [ERROR] line holds the whole message on one line
    errors = [line for line in out.splitlines() if line.startswith("[ERROR]")]
    assert errors, out[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    ran = tasks_run(proc.stdout)
    assert not [t for t in ran if any(a in t for a in ACTING_TASKS)], ran
    return errors[0]


# Each bad value of each variable, with what the message must say is allowed. The values of
# one group go into one run (the check names every bad value in its one message), which
# keeps the module's wall time to a few ansible-playbook runs.
BAD_GROUPS: list[tuple[str, list[tuple[str, str, str]]]] = [
    ("canary.yml", [
        ("weight", "abc", "whole number from 0 to 100"),
        ("bake_seconds", "abc", "whole number from 0 to 86400"),
        ("deploy_min_sends", "-3", "whole number from 0 to 1000000"),
        ("deploy_allow_idle", "sure", "true or false"),
        ("deploy_on_breach", "red", "one of blue, previous"),
        ("deploy_max_error_rate", "2", "number from 0 to 1"),
        ("local_blue_port", "70000", "whole number from 1 to 65535"),
    ]),
    ("canary.yml", [
        ("weight", "150", "whole number from 0 to 100"),
        ("bake_seconds", "-1", "whole number from 0 to 86400"),
        ("deploy_min_sends", "many", "whole number from 0 to 1000000"),
        ("local_green_port", "x", "whole number from 1 to 65535"),
        ("local_lb_port", "0", "whole number from 1 to 65535"),
    ]),
    ("canary.yml", [("weight", "-5", "whole number from 0 to 100")]),
    ("canary.yml", [("weight", "12.5", "whole number from 0 to 100")]),
    ("rollback.yml", [
        ("drain", "maybe", "true or false"),
        ("deploy_drain_timeout", "-10", "whole number from 1 to 86400"),
        ("local_lb_port", "http", "whole number from 1 to 65535"),
    ]),
]


@pytest.mark.parametrize(("playbook", "bad"), BAD_GROUPS,
                         ids=[f"{p}-" + ",".join(f"{n}={v}" for n, v, _ in b)
                              for p, b in BAD_GROUPS])
def test_bad_values_are_refused_before_anything_moves(
        stack: Stack, playbook: str, bad: list[tuple[str, str, str]]) -> None:
    before = stack.snapshot()
    proc = play(playbook, stack.extra(**{name: value for name, value, _ in bad}))
    error = assert_refused(proc, "Refused before anything", f"({len(bad)} bad value")
    # each variable with its value and, right after it, what is allowed
    for name, value, allowed in bad:
        assert re.search(re.escape(f"{name}='{value}': allowed is ") + "(a )?" + re.escape(allowed),
                         error), (name, error)
    assert stack.snapshot() == before


def test_several_bad_values_are_named_in_one_message(stack: Stack) -> None:
    before = stack.snapshot()
    proc = play("canary.yml", stack.extra(weight="abc", bake_seconds="-2", drain="perhaps"))
    error = assert_refused(proc, "weight='abc'", "bake_seconds='-2'", "drain='perhaps'",
                           "3 bad values")
    assert "deploy_bake_seconds" not in error  # the knob is named by the -e variable fed
    assert stack.snapshot() == before


def test_the_same_ports_twice_are_refused(stack: Stack) -> None:
    proc = play("canary.yml", stack.extra(weight=50, local_green_port=stack.blue.port))
    assert_refused(proc, "four different ports")


def test_check_mode_reports_the_step_and_moves_nothing(stack: Stack) -> None:
    """--check: no undrain, no wait on live health, weights and board unchanged, and the
    module's check-mode answer (the weights it would set) printed."""
    before = stack.snapshot()
    proc = play("canary.yml", stack.extra(weight=50), check=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    ran = tasks_run(proc.stdout)
    assert [t for t in ran if "Move the weights" in t], ran
    assert not [t for t in ran if "Call the chat admin API" in t or "Wait until" in t], ran
    assert "-> blue 50 / green 50" in out, out[-3000:]
    assert stack.snapshot() == before


def test_check_mode_does_not_undrain_a_drained_green(stack: Stack) -> None:
    """After a rollback green is drained: --check neither undrains it nor waits for it, so the
    module's pre-check reports it unhealthy, saying that a real run undrains it first, and
    green stays drained."""
    status, _ = stack.chat.admin(stack.green, "/api/admin/drain", {"color": "green"})
    assert status in (200, 202), status
    try:
        for _ in range(100):
            if haproxy_status(stack.sock, "green").startswith("DOWN"):
                break
            subprocess.run(["sleep", "0.1"], check=True)
        before = stack.snapshot()
        assert before["green_ready"] == 503
        proc = play("canary.yml", stack.extra(weight=50), check=True)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-3000:]
        assert "healthy" in out, out[-3000:]
        flat = " ".join(out.split())  # the callback wraps long messages
        assert ("(--check reads green as it is now: a real run first undrains green and waits "
                "until it is healthy)") in flat, out[-3000:]
        ran = tasks_run(proc.stdout)
        assert not [t for t in ran if "Call the chat admin API" in t or "Wait until" in t], ran
        assert stack.snapshot() == before
    finally:
        status, _ = stack.chat.admin(stack.green, "/api/admin/undrain", {"color": "green"})
        assert status in (200, 202), status
        for _ in range(100):
            if haproxy_status(stack.sock, "green").startswith("UP"):
                break
            subprocess.run(["sleep", "0.1"], check=True)


def test_check_mode_rollback_reports_and_moves_nothing(stack: Stack) -> None:
    before = stack.snapshot()
    proc = play("rollback.yml", stack.extra(), check=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    ran = tasks_run(proc.stdout)
    assert [t for t in ran if "Move the weights" in t], ran
    assert not [t for t in ran if "Call the chat admin API" in t or "Wait" in t], ran
    assert "weights blue 100 / green 0" in out, out[-3000:]  # what it would set
    assert stack.snapshot() == before


def test_the_stack_takes_a_valid_rollback(stack: Stack) -> None:
    """The control: the same -e values with a valid input do reach the stack (so the
    refusals above are refusals, not a stack the playbook could not touch anyway)."""
    haproxy_cli(stack.sock, "set server chat/blue weight 90;set server chat/green weight 10")
    proc = play("rollback.yml", stack.extra(drain="false"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert haproxy_weights(stack.sock) == {"blue": 100, "green": 0}
    haproxy_cli(stack.sock, "set server chat/blue weight 90;set server chat/green weight 10")


class StuckMetrics(BaseHTTPRequestHandler):
    """A /metrics that keeps reporting 3 connections: a green that never empties."""

    def do_GET(self) -> None:
        body = b"chat_connections 3\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_drain_wait_prints_the_connections_left_and_its_limit(stack: Stack) -> None:
    """rollback.yml's drain wait names its limit, prints green's connections after each
    round, and at the limit fails saying how many are left (green's /metrics is pointed at
    a server that always reports 3 connections)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StuckMetrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = play("rollback.yml", stack.extra(local_green_port=server.server_address[1],
                                                deploy_drain_timeout=6))
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-3000:]
        assert "at most seconds 6]" in out, out[-3000:]
        assert re.search(r"green: 3 connection\(s\) left\s+after \d+ s of at most\s+6 s", out), \
            out[-3000:]
        assert len(failure_messages(out)) == 1, out[-3000:]
        assert "green still holds 3 connection(s) after 6 s (deploy_drain_timeout)" in out
        assert haproxy_weights(stack.sock) == {"blue": 100, "green": 0}
    finally:
        server.shutdown()
        server.server_close()
        status, _ = stack.chat.admin(stack.green, "/api/admin/undrain", {"color": "green"})
        assert status in (200, 202), status
        haproxy_cli(stack.sock, "set server chat/blue weight 90;set server chat/green weight 10")


def test_rollback_with_green_down_says_so_and_completes(stack: Stack) -> None:
    """A rollback while green's chat is down (its port refuses connections): the weights go
    to blue, the drain wait says green is not running (so it holds no connection) and how to
    look at it, and the play ends well instead of waiting deploy_drain_timeout."""
    closed = free_port()
    try:
        proc = play("rollback.yml", stack.extra(local_green_port=closed))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert haproxy_weights(stack.sock) == {"blue": 100, "green": 0}
        flat = " ".join(out.split())  # the callback wraps long messages
        assert (f"green does not answer at http://127.0.0.1:{closed}/metrics (connection refused):"
                " it is not running") in flat, out[-3000:]
        assert f"supervisorctl -c {stack.state_dir}/supervisord.conf status" in flat, out[-3000:]
        assert not failure_messages(out), out[-3000:]
    finally:
        status, _ = stack.chat.admin(stack.green, "/api/admin/undrain", {"color": "green"})
        assert status in (200, 202), status
        haproxy_cli(stack.sock, "set server chat/blue weight 90;set server chat/green weight 10")


def test_socket_missing_is_named_with_how_to_start(stack: Stack, tmp_path: Path) -> None:
    empty_run = tempfile.mkdtemp(prefix="dpn-")
    before = stack.snapshot()
    proc = play("rollback.yml", stack.extra(local_run_dir=empty_run))
    assert_refused(proc, f"{empty_run}/haproxy.sock did not answer", "make demo",
                   f"supervisorctl -c {stack.state_dir}/supervisord.conf status")
    assert stack.snapshot() == before


def test_chat_down_is_named_with_how_to_start(stack: Stack) -> None:
    closed = free_port()  # nothing listens there: green's chat is down
    before = stack.snapshot()
    proc = play("canary.yml", stack.extra(weight=50, local_green_port=closed))
    assert_refused(proc, f"chat green did not answer at http://127.0.0.1:{closed}/metrics",
                   f"supervisorctl -c {stack.state_dir}/supervisord.conf start chat-green")
    assert stack.snapshot() == before


def test_aws_endpoint_down_is_named_with_what_to_check() -> None:
    closed = free_port()
    proc = play("rollback.yml", ["-e", f"aws_endpoint_url=http://127.0.0.1:{closed}"],
                inventory="inventories/aws")
    assert_refused(proc, f"aws_endpoint_url=http://127.0.0.1:{closed} could not be reached",
                   "AWS credentials", "aws_endpoint_url")


def test_aws_without_the_alb_says_to_create_it(moto_server: Service) -> None:
    proc = play("rollback.yml", ["-e", f"aws_endpoint_url={moto_server.url}",
                                 "-e", "deploy_aws_name=no-such-alb"],
                inventory="inventories/aws")
    assert_refused(proc, f"aws_endpoint_url={moto_server.url} answered but has no ALB named "
                         "no-such-alb", "site.yml")


@pytest.mark.parametrize("weight", [150, -1])
def test_the_module_refuses_an_out_of_range_weight_before_connecting(weight: int) -> None:
    """traffic_shift's one weight range check (weights_for) runs before its driver connects:
    a socket path that does not exist is never reached."""
    result = run_module({"driver": "haproxy", "weight": weight, "bake_seconds": 0,
                         "haproxy_socket": "/nonexistent/haproxy.sock"})
    assert result.get("failed") is True, result
    assert result["msg"] == f"weight must be between 0 and 100, got {weight}", result


@pytest.mark.parametrize("value", ["abc", "2", "-0.1"])
def test_site_refuses_a_bad_green_fault_rate_before_provisioning(value: str) -> None:
    """site.yml's first play checks green_fault_rate; nothing else runs (--check as well, so
    a broken check could not provision the fixed local stack from a test)."""
    proc = play("site.yml", ["-e", f"green_fault_rate={value}"], check=True)
    assert_refused(proc, f"green_fault_rate='{value}'", "number from 0 to 1",
                   "Refused before anything")
    assert tasks_run(proc.stdout) == ["Check the compute values (green_fault_rate)",
                                      "canarychat.platform.compute : Check green_fault_rate "
                                      "before anything is provisioned"], proc.stdout[-2000:]
