"""End-to-end: the local target through ansible-playbook, as the README runs it (root).

The stack uses the fixed local ports (6379, 8000, 8080-8082) and /var/lib/canary-chat, so
this module is the only test that may run it; it takes the stack down at the end.

- site.yml brings everything up, printing no warning; a second run reports changed=0 and
  keeps canary weights;
- the rehearsal: 100 simulated users chat while canary.yml steps green 10 -> 50 -> 90 -> 100
  and rollback.yml brings everyone back to blue: nothing lost, duplicated or closed, new
  connections follow the weights at each step, the rollback's weights land within 5 s;
- a bad release (green_fault_rate=0.3) trips the canary gate, which restores the weights;
- the stack locked down (docs/security.md, "Local stack"): the public door serves only what
  a browser needs to allow-listed Hosts, the admin listener (loopback) the rest; Redis and
  the emulator refuse whoever lacks the stack's secrets; every program runs as its own user;
  logs are 0640 without query strings; per-source connection limits at the public door;
  the programs run from root's copies in /opt/canary-chat, so a checkout under a 0700
  directory deploys a working stack.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from http import client as http_client
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.config import Config
from botocore.exceptions import ClientError
from websockets.asyncio.client import connect

from loadgen import LoadGen, LoadGenConfig, run_loadgen
from tests.conftest import REPO, VENV_BIN, WARNING, haproxy_cli

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the local stack is provisioned as root"),
]

LB = "127.0.0.1:8080"
ADMIN = "127.0.0.1:8079"
HAPROXY_SOCKET = "/run/canary-chat/haproxy.sock"
STATE_DIR = Path("/var/lib/canary-chat")
STEPS = [10, 50, 90, 100]
PROBES_PER_STEP = 200
REHEARSAL_BAKE_SECONDS = 10
# The rehearsal's p95 gate. The shared default (500 ms, deploy role) is the AWS figure; on
# a 2-core CI box that also runs the emulator, Redis, both colors, HAProxy and the load
# generator, short-window ack p95 from the histogram's 0.5-1 s bucket is routine. The
# rehearsal proves the mechanics; the bad-release test proves a gate trips.
REHEARSAL_MAX_P95_MS = 2000

RECAP = re.compile(r"^localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                   r"failed=(\d+)", re.M)


def playbook_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PYTHONUNBUFFERED="1")
    return env


def playbook(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), *args], cwd=REPO,
                          env=playbook_env(), capture_output=True, text=True, timeout=timeout)


async def playbook_async(*args: str, limit_s: float = 600) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "ansible-playbook"), *args, cwd=REPO, env=playbook_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return int(proc.returncode or 0), out.decode()


def recap(output: str) -> dict[str, int]:
    m = RECAP.search(output)
    assert m, f"no PLAY RECAP in:\n{output[-3000:]}"
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()),
                    strict=True))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"rc={result.returncode}\n{result.stdout[-5000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def haproxy(command: str) -> str:
    """One command on the local stack's HAProxy runtime API (what traffic_shift uses)."""
    return haproxy_cli(HAPROXY_SOCKET, command)


def weights() -> dict[str, int]:
    return {c: int(haproxy(f"get weight chat/{c}").split()[0]) for c in ("blue", "green")}


def connections(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(r"(?m)^chat_connections(?:\{[^}]*\})? (\S+)$", text))


async def probe(n: int, concurrency: int = 5) -> Counter[str]:
    """Open n short WebSockets through HAProxy; count the colors their welcomes name."""
    room = f"probe-{uuid.uuid4().hex[:8]}"
    colors: Counter[str] = Counter()
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem, connect(f"ws://{LB}/ws?room={room}&name=p{i}", open_timeout=15,
                                close_timeout=2) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 15))
            assert welcome["type"] == "welcome", welcome
            colors[welcome["color"]] += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return colors


async def wait_for_green_weight(target: int, limit_s: float,
                                playbook: asyncio.Task[tuple[int, str]]) -> None:
    """Poll HAProxy until green has `target`; fail with the playbook's output if it ends."""
    deadline = time.monotonic() + limit_s
    while weights()["green"] != target:
        if playbook.done():
            rc, out = playbook.result()
            pytest.fail(f"canary.yml ended (rc={rc}) before green {target}:\n{out[-6000:]}")
        assert time.monotonic() < deadline, f"green never reached {target}: {weights()}"
        await asyncio.sleep(0.1)


async def wait_for_users(gens: list[LoadGen], task: asyncio.Task[Any], n: int) -> None:
    deadline = time.monotonic() + 60
    while not gens or gens[0].stats.connected_users < n:
        assert not task.done(), task.result()
        assert time.monotonic() < deadline, f"{n} users never connected"
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def local_stack() -> Iterator[dict[str, Any]]:
    """site.yml from scratch (initial weights apply), teardown.yml at the end."""
    playbook("teardown.yml", timeout=180)
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / "haproxy.state").unlink()
    t = time.monotonic()
    run = playbook("site.yml")
    info = {"first_run": ok(run), "first_run_stderr": run.stderr,
            "first_run_seconds": time.monotonic() - t}
    try:
        yield info
    finally:
        ok(playbook("teardown.yml", timeout=180))


@pytest.mark.timeout(900)
def test_site_yml_creates_90_10_then_changes_nothing_and_keeps_canary_weights(
        local_stack: dict[str, Any]) -> None:
    assert recap(local_stack["first_run"])["failed"] == 0
    assert weights() == {"blue": 90, "green": 10}
    assert "weights: blue 90 / green 10" in local_stack["first_run"]
    assert "http://127.0.0.1:8080/" in local_stack["first_run"]

    # a canary step, then site.yml again: nothing changes, the step's weights stay
    ok(playbook("canary.yml", "-e", "weight=30", "-e", "bake_seconds=0"))
    assert weights() == {"blue": 70, "green": 30}
    t = time.monotonic()
    second = ok(playbook("site.yml"))
    print(f"site.yml: cold {local_stack['first_run_seconds']:.1f}s, "
          f"warm {time.monotonic() - t:.1f}s")
    assert recap(second)["changed"] == 0, second[-5000:]
    assert weights() == {"blue": 70, "green": 30}
    assert "weights: blue 70 / green 30" in second


def test_site_yml_prints_no_warning(local_stack: dict[str, Any]) -> None:
    """`make demo` on stage: a warning at the top of every playbook run reads like an error
    (cryptography 51 warned on ansible-core's import of its DSA names: requirements-dev.txt
    pins 50)."""
    out = local_stack["first_run"] + local_stack["first_run_stderr"]
    assert not WARNING.findall(out), WARNING.findall(out)


@pytest.mark.timeout(900)
async def test_rehearsal_100_users_through_canary_and_rollback(
        local_stack: dict[str, Any]) -> None:
    # the demo's opening position, blue 90 / green 10 (a no-op after site.yml)
    rc, out = await playbook_async("canary.yml", "-e", "weight=10", "-e", "bake_seconds=0")
    assert rc == 0, out[-5000:]
    assert weights() == {"blue": 90, "green": 10}

    # 100 users join and chat (about 10 of them on green) for the whole rehearsal
    gens: list[LoadGen] = []
    cfg = LoadGenConfig(url=f"ws://{LB}/ws", users=100, rate=20, duration=0, rooms=4,
                        ramp=5, drain=15)
    loadgen = asyncio.create_task(run_loadgen(cfg, on_start=gens.append))
    try:
        await wait_for_users(gens, loadgen, 100)
        # step 10 is where the demo starts: measure its split before canary.yml moves on
        splits: dict[int, Counter[str]] = {STEPS[0]: await probe(PROBES_PER_STEP)}

        canary = asyncio.create_task(playbook_async(
            "canary.yml", "-e", f"bake_seconds={REHEARSAL_BAKE_SECONDS}",
            "-e", f"deploy_max_p95_ms={REHEARSAL_MAX_P95_MS}", limit_s=600))
        try:
            for step in STEPS[1:]:
                await wait_for_green_weight(step, limit_s=180, playbook=canary)
                colors = await probe(PROBES_PER_STEP)
                if weights()["green"] != step:
                    rc, out = await canary
                    pytest.fail(f"weights left green {step} while probing (rc={rc}):\n"
                                + "\n".join(ln for ln in out.splitlines()
                                            if "failed:" in ln or "msg" in ln))
                splits[step] = colors
        finally:
            rc, out = await canary
        assert rc == 0, out[-6000:]
        print("canary.yml:", *[ln for ln in out.splitlines() if "gate " in ln][:12], sep="\n")
        for step, colors in splits.items():
            total = sum(colors.values())
            assert total >= PROBES_PER_STEP
            share = 100.0 * colors["green"] / total
            assert abs(share - step) <= 10, f"step {step}: green got {share:.1f}% ({colors})"
        print("new connections per step:", {s: dict(c) for s, c in splits.items()})

        # rollback: weights back within 5 s of its start, then green emptied onto blue.
        # "Its start" is the rollback play's first task, which the playbook times itself
        # (`weights applied after N s`); the launch-to-weights figure measured here also
        # counts ansible-playbook's own start-up, 2-3 s on a 2-core box under load, and is
        # only bounded loosely.
        t0 = time.monotonic()
        rollback = asyncio.create_task(playbook_async("rollback.yml", limit_s=300))
        while weights() != {"blue": 100, "green": 0}:
            assert not rollback.done(), rollback.result()[1][-5000:]
            await asyncio.sleep(0.05)
        launch_to_weights_s = time.monotonic() - t0
        rc, out = await rollback
        wall_s = time.monotonic() - t0
        assert rc == 0, out[-5000:]
        timed = re.search(r"weights applied after ([0-9.]+)s", out)
        assert timed, out[-3000:]
        applied_s = float(timed.group(1))
        print(f"rollback.yml: weights applied {applied_s:.2f}s after the rollback started "
              f"({launch_to_weights_s:.2f}s after launching ansible-playbook), wall {wall_s:.1f}s;",
              *re.findall(r"green empty after [0-9.]+s", out))
        assert applied_s <= 5.0, f"weights applied only after {applied_s:.2f}s"
        assert launch_to_weights_s <= 15.0
        assert connections(8082) == 0
        after = await probe(50)
        assert after == Counter(blue=50), after
    finally:
        if gens:
            gens[0].stop()
        report = await asyncio.wait_for(loadgen, 120)

    print("loadgen:", json.dumps({k: v for k, v in report.items() if k != "new_connections"}))
    assert report["connected"] >= 100
    assert report["lost"] == 0
    assert report["duplicated"] == 0
    assert report["out_of_order"] == 0
    assert report["unexpected_closes"] == 0
    assert report["acked"] > 0


@pytest.mark.timeout(900)
async def test_bad_release_trips_the_gate_and_sends_everyone_to_blue(
        local_stack: dict[str, Any]) -> None:
    rc, out = await playbook_async("site.yml", "-e", "green_fault_rate=0.3")
    assert rc == 0, out[-5000:]
    try:
        rc, out = await playbook_async("canary.yml", "-e", "weight=10", "-e", "bake_seconds=0")
        assert rc == 0, out[-5000:]
        before = weights()
        assert before == {"blue": 90, "green": 10}

        # users who come and go, so that green gets traffic to judge during the bake
        gens: list[LoadGen] = []
        cfg = LoadGenConfig(url=f"ws://{LB}/ws", users=40, rate=20, duration=0, rooms=2,
                            ramp=2, churn=3.0, drain=5)
        loadgen = asyncio.create_task(run_loadgen(cfg, on_start=gens.append))
        try:
            await wait_for_users(gens, loadgen, 40)
            # the p95 gate out of the way: what must trip is the error-rate gate, on the
            # fault switch, not a busy machine's latency (seen above 2 s at the step's start)
            rc, out = await playbook_async("canary.yml", "-e", "weight=50",
                                           "-e", "bake_seconds=30",
                                           "-e", "deploy_max_p95_ms=60000", limit_s=300)
        finally:
            if gens:
                gens[0].stop()
            await asyncio.wait_for(loadgen, 120)
        assert rc != 0, "the canary passed a green that fails 30% of its sends"
        assert "gate error_rate breached on green" in out, out[-5000:]
        assert "everyone sent to blue (blue 100 / green 0)" in out
        assert weights() == {"blue": 100, "green": 0}
    finally:
        rc, out = await playbook_async("site.yml")
        assert rc == 0, out[-5000:]


# --- the stack locked down (issue 16) ---

def http(addr: str, path: str, method: str = "GET", host: str | None = None,
         headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    """One raw HTTP/1.1 request (any Host header, any path bytes); (status, body)."""
    h, port = addr.split(":")
    conn = http_client.HTTPConnection(h, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else addr)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ws_handshake_status(addr: str, host: str, origin: str) -> int:
    """The status line's code of a WebSocket handshake sent with these Host and Origin."""
    h, port = addr.split(":")
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((h, int(port)), timeout=10) as sock:
        sock.sendall((f"GET /ws?room=rebind&name=rebinder HTTP/1.1\r\nHost: {host}\r\n"
                      f"Origin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        line = sock.makefile("rb").readline().decode()
    return int(line.split()[1])


def admin_token() -> str:
    return (STATE_DIR / "admin_token").read_text().strip()


@pytest.mark.timeout(300)
def test_public_door_serves_only_what_a_browser_needs(local_stack: dict[str, Any]) -> None:
    # the page, its files, the board and the read APIs the page and the board fetch
    for path in ("/", "/index.html", "/app.js", "/style.css", "/board", "/board.js",
                 "/board.css", "/api/stats", "/api/rooms/lobby/messages?since=0"):
        status, _ = http(LB, path)
        assert status == 200, (path, status)
    assert ws_handshake_status(LB, LB, f"http://{LB}") == 101
    # admin, metrics, probes and the color-pinned routes are not there
    token = {"Authorization": f"Bearer {admin_token()}", "Content-Type": "application/json"}
    for method, path in [("GET", "/metrics"), ("POST", "/api/admin/drain"),
                         ("POST", "/api/admin/deploy-event"), ("GET", "/api/admin/drain"),
                         ("GET", "/_color/green/version"), ("GET", "/_color/blue/metrics"),
                         ("GET", "/_color/green/%00"), ("GET", "/healthz"), ("GET", "/readyz"),
                         ("GET", "/version")]:
        status, _ = http(LB, path, method, headers=token, body=b'{"color": "green"}'
                         if method == "POST" else None)
        assert status in (403, 404), (method, path, status)
    assert http(ADMIN, "/readyz")[0] == 200  # nobody was drained by the attempts above
    # another Host (DNS rebinding), on a plain request and on the WebSocket handshake
    for host in ("evil.example:8080", "evil.example", "127.0.0.1:8080.evil.example"):
        assert http(LB, "/", host=host)[0] in (403, 421), host
        assert ws_handshake_status(LB, host, f"http://{host}") != 101, host


@pytest.mark.timeout(300)
def test_admin_listener_on_loopback_serves_admin_metrics_and_pinned_routes(
        local_stack: dict[str, Any]) -> None:
    for color in ("blue", "green"):
        status, body = http(ADMIN, f"/_color/{color}/version")
        assert status == 200 and json.loads(body)["color"] == color
    status, body = http(ADMIN, "/metrics")
    assert status == 200 and b"chat_connections" in body
    event = json.dumps({"action": "e2e-check", "weights": weights()}).encode()
    status, _ = http(ADMIN, "/api/admin/deploy-event", "POST", body=event,
                     headers={"Authorization": f"Bearer {admin_token()}",
                              "Content-Type": "application/json"})
    assert status in (200, 201, 202, 204)
    # still the admin token's job to refuse a caller without it
    status, _ = http(ADMIN, "/api/admin/deploy-event", "POST", body=event,
                     headers={"Content-Type": "application/json"})
    assert status in (401, 403)
    # a foreign Host is refused there too (a rebinding page in the operator's own browser)
    assert http(ADMIN, "/metrics", host="evil.example:8079")[0] in (403, 421)
    # bound to 127.0.0.1 only: another loopback address of this machine finds nothing
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", 8079), timeout=5):
        pass


@pytest.mark.timeout(120)
def test_board_weights_are_haproxys_own_read_from_its_stats_page(
        local_stack: dict[str, Any]) -> None:
    # the read-only stats CSV on the admin listener, not on the public door
    status, body = http(ADMIN, "/_haproxy/stats;csv")
    assert status == 200 and body.startswith(b"# pxname,svname,")
    assert http(LB, "/_haproxy/stats;csv")[0] == 404

    def board_weights_become(want: dict[str, int]) -> None:
        deadline = time.monotonic() + 15
        while True:
            got = json.loads(http(LB, "/api/stats")[1])["weights"] or {}
            if got.get("source") == "haproxy" and {c: got.get(c) for c in want} == want:
                return
            assert time.monotonic() < deadline, (got, want)
            time.sleep(0.3)

    before = weights()
    board_weights_become(before)
    # a weight changed by hand on the runtime API shows on the board, no canary event needed
    haproxy(f"set server chat/green weight {before['green'] + 1}")
    try:
        board_weights_become({**before, "green": before["green"] + 1})
    finally:
        haproxy(f"set server chat/green weight {before['green']}")
    board_weights_become(before)


@pytest.mark.timeout(120)
def test_redis_requires_the_chat_user_which_can_do_only_what_the_chat_does(
        local_stack: dict[str, Any]) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    drain = json.dumps({"cmd": "drain", "color": "green"})
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.publish("chat:control", drain)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.lpush("chat:deploy:events", json.dumps({"action": "forged"}))
    password_file = STATE_DIR / "redis_password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=6379, username="default", password=password).ping()
    chat = redis.Redis(host="127.0.0.1", port=6379, username="chat", password=password,
                       socket_timeout=5)
    assert chat.ping()
    assert chat.lrange("chat:deploy:events", 0, 0) is not None  # its own keys
    # a signed admin call's nonce, claimed once (chat/bus.py claim_admin_nonce)
    nonce = f"chat:admin:nonce:e2e-{uuid.uuid4().hex}"
    assert chat.set(nonce, "1", nx=True, ex=5)
    assert not chat.set(nonce, "1", nx=True, ex=5)
    for forbidden in (lambda: chat.flushall(), lambda: chat.config_get("*"),
                      lambda: chat.keys("*"), lambda: chat.get("other:key"),
                      lambda: chat.publish("elsewhere", "x"), lambda: chat.acl_list(),
                      lambda: chat.execute_command("SHUTDOWN")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()


def ddb(key_id: str, secret: str) -> Any:
    """A DynamoDB client of the local emulator, signing with the given key."""
    return boto3.client("dynamodb", endpoint_url="http://127.0.0.1:8000",
                        region_name="ap-northeast-2", aws_access_key_id=key_id,
                        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))


@pytest.mark.timeout(120)
def test_emulator_refuses_writes_without_the_stack_key(local_stack: dict[str, Any]) -> None:
    creds_file = STATE_DIR / "dynamodb_credentials"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    creds = json.loads(creds_file.read_text())

    forged = {"room": {"S": "lobby"}, "seq": {"N": "999999"}, "text": {"S": "forged"}}
    for key_id, secret, code in [("local", "local", "UnrecognizedClientException"),
                                 (creds["access_key_id"], "wrong",
                                  "InvalidSignatureException")]:
        with pytest.raises(ClientError) as e:
            ddb(key_id, secret).put_item(TableName="messages", Item=forged)
        assert e.value.response["Error"]["Code"] == code
    status, _ = http("127.0.0.1:8000", "/moto-api/reset", "POST", body=b"")
    assert status == 403
    good = ddb(creds["access_key_id"], creds["secret_access_key"])
    assert "Item" not in good.get_item(TableName="messages",
                                       Key={"room": {"S": "lobby"}, "seq": {"N": "999999"}})
    assert good.describe_table(TableName="messages")["Table"]["TableName"] == "messages"


def program_pids() -> dict[str, int]:
    out = subprocess.run([str(VENV_BIN / "supervisorctl"), "-c",
                          str(STATE_DIR / "supervisord.conf"), "status"],
                         capture_output=True, text=True, timeout=30).stdout
    return {m[1]: int(m[2]) for m in re.finditer(r"(?m)^(\S+)\s+RUNNING\s+pid (\d+)", out)}


@pytest.mark.timeout(120)
def test_each_program_runs_as_its_own_unprivileged_user(local_stack: dict[str, Any]) -> None:
    expected = {"redis": "canary-redis", "dynamodb": "canary-dynamodb",
                "chat-blue": "canary-chat", "chat-green": "canary-chat",
                "haproxy": "canary-haproxy"}
    pids = program_pids()
    assert set(pids) == set(expected), pids
    for program, pid in pids.items():
        status = Path(f"/proc/{pid}/status").read_text()
        line = re.search(r"(?m)^Uid:\s+(.*)$", status)
        assert line, status
        uids = {int(u) for u in line[1].split()}
        assert 0 not in uids, (program, uids)
        assert {pwd.getpwuid(u).pw_name for u in uids} == {expected[program]}, program
    # the files holding secrets are root's alone
    for name in ("admin_token", "redis_password", "dynamodb_credentials",
                 "supervisor.d/chat-blue.conf", "supervisor.d/chat-green.conf",
                 "supervisor.d/dynamodb.conf", "redis/redis.conf"):
        mode = (STATE_DIR / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, (name, oct(mode))


@pytest.mark.timeout(120)
async def test_logs_are_0640_and_hold_no_query_strings(local_stack: dict[str, Any]) -> None:
    marker = f"qs{uuid.uuid4().hex[:12]}"
    assert http(LB, f"/api/rooms/lobby/messages?since=0&secret={marker}")[0] == 200
    assert http(LB, f"/?token={marker}")[0] == 200
    assert http(ADMIN, f"/metrics?token={marker}")[0] == 200
    async with connect(f"ws://{LB}/ws?room=logcheck&name=logcheck&token={marker}",
                       open_timeout=15) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "welcome"
    await asyncio.sleep(2)  # HAProxy logs a session when it ends
    logs = sorted((STATE_DIR / "log").iterdir())
    assert logs
    assert stat.S_IMODE((STATE_DIR / "log").stat().st_mode) & 0o007 == 0
    access = (STATE_DIR / "log" / "haproxy-access.log").read_text(errors="replace")
    assert "/api/rooms/lobby/messages" in access and "GET \"/ws\"" in access, access[-2000:]
    for log in logs:
        assert stat.S_IMODE(log.stat().st_mode) == 0o640, (log, oct(log.stat().st_mode))
        text = log.read_text(errors="replace")
        assert marker not in text, log
        assert not re.search(r"/[^\s\"?]*\?[^\s\"]*=", text), (log, re.search(
            r".*/[^\s\"?]*\?[^\s\"]*=.*", text))


async def open_many(n: int, within_s: float) -> tuple[list[Any], int]:
    """Open n WebSockets through the public door, spread over `within_s`; keep the accepted
    ones open. Returns (accepted sockets, refused count)."""
    accepted: list[Any] = []
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        await asyncio.sleep(within_s * i / n)
        try:
            ws = await connect(f"ws://{LB}/ws?room=flood&name=f{i}", open_timeout=30,
                               close_timeout=2)
        except Exception:  # closed by HAProxy before any HTTP answer
            refused += 1
            return
        accepted.append(ws)

    await asyncio.gather(*(one(i) for i in range(n)))
    return accepted, refused


@pytest.mark.timeout(900)
async def test_per_source_limits_at_the_public_door(local_stack: dict[str, Any]) -> None:
    """The defaults (1,000 concurrent, 600 new per 10 s per address) are stage-sized: too
    large to hit in a quick test without flooding a 2-core box. The same rules with small
    limits (-e): 500 WebSockets from one address within 2 s are not all accepted."""
    rc, out = await playbook_async("site.yml", "-e", "loadbalancer_local_src_conn_limit=150",
                                   "-e", "loadbalancer_local_src_conn_rate_limit=300",
                                   "-e", "loadbalancer_local_src_conn_rate_period=60s")
    assert rc == 0, out[-5000:]
    accepted: list[Any] = []
    try:
        accepted, refused = await open_many(500, within_s=2.0)
        print(f"500 WebSockets from one address in 2 s: {len(accepted)} accepted, "
              f"{refused} refused")
        assert 0 < len(accepted) <= 150
        assert refused >= 350
        # the admin listener is another door: the deploy role still gets through
        assert http(ADMIN, "/metrics")[0] == 200
        for ws in accepted:
            await ws.close()
        accepted = []
        await asyncio.sleep(1)
        # none open any more, but 500 tries within the 60 s period: over the rate
        again, refused = await open_many(5, within_s=0.5)
        accepted = again
        assert (len(again), refused) == (0, 5)
    finally:
        for ws in accepted:
            await ws.close()
        rc, out = await playbook_async("site.yml")
        assert rc == 0, out[-5000:]
    # the defaults again: a fresh table, a user gets in
    assert ws_handshake_status(LB, LB, f"http://{LB}") == 101


RUNTIME_DIR = Path("/opt/canary-chat")


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.timeout(900)
def test_a_checkout_under_a_0700_directory_still_deploys_a_working_stack(
        local_stack: dict[str, Any], tmp_path: Path) -> None:
    """The programs run as unprivileged users, but from the runtime copies root makes in
    /opt/canary-chat: a checkout under a 0700 directory (root's home, mktemp -d) rebuilds
    them, and the stack they run works, whatever its users may read."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    checkout = locked / "repo"
    checkout.symlink_to(REPO)
    assert as_user("canary-chat", "test", "-r", str(checkout / "chat" / "app.py")).returncode != 0
    # without copies, the programs have nothing to run but what site.yml takes from there
    for name in ("chat", "site"):
        shutil.rmtree(RUNTIME_DIR / name)
    (RUNTIME_DIR / "dynamodb_emulator.py").unlink()
    before = program_pids()

    out = ok(playbook("site.yml", "-e", f"local_project_dir={checkout}"))
    assert recap(out)["failed"] == 0
    assert stat.S_IMODE(locked.stat().st_mode) == 0o700
    # the copies are back, readable by the program users; the programs using them restarted
    copy = RUNTIME_DIR / "chat" / "app.py"
    assert as_user("canary-chat", "test", "-r", str(copy)).returncode == 0
    after = program_pids()
    for program in ("chat-blue", "chat-green", "dynamodb"):
        assert after[program] != before[program], program
        cwd = os.readlink(f"/proc/{after[program]}/cwd")
        cmdline = Path(f"/proc/{after[program]}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].decode() == f"{RUNTIME_DIR}/venv/bin/python", (program, cmdline)
        assert all(str(REPO) not in a.decode() and str(locked) not in a.decode()
                   for a in cmdline), (program, cmdline)
        assert not cwd.startswith((str(REPO), str(locked))), (program, cwd)
    # the runtime venv comes from the system python, which every user may execute
    assert "home = /usr/bin" in (RUNTIME_DIR / "venv" / "pyvenv.cfg").read_text()
    # a working stack: the page, WebSockets through HAProxy, the emulator's tables
    assert http(LB, "/", host=LB)[0] == 200
    assert sum(asyncio.run(probe(20)).values()) == 20
    creds = json.loads((STATE_DIR / "dynamodb_credentials").read_text())
    good = ddb(creds["access_key_id"], creds["secret_access_key"])
    assert good.describe_table(TableName="messages")["Table"]["TableStatus"] == "ACTIVE"
