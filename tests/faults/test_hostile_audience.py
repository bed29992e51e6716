"""A hostile audience can neither veto nor fake a canary step (issue 16, item 2).

While 100 simulated users chat through HAProxy and traffic_shift bakes a 90/10 -> 50/50
step, a bounded attacker on 127.0.0.1 sends, through the local stack's HAProxy doors (the
public one, and the admin listener for what only that one passes to a chat), what broke the
gate before: NUL paths (`/_color/green/%00`, `/%00`), an admin call with
`Authorization: Bearer \\xff`, sends whose text is a lone surrogate, the same URLs as a
page's `<img>` tags would fetch them, and valid requests pinned to green
(`/_color/green/version`, which must not dilute the rate).
A healthy green passes the step; a green with CHAT_FAULT_RATE=0.3 still trips it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import websockets

from loadgen import LoadGenConfig
from tests.faults.conftest import FaultStack
from tests.faults.loadhelp import start, stopped
from tests.faults.test_canary_fault import traffic_shift

pytestmark = [pytest.mark.faults, pytest.mark.integration]

BAKE_SECONDS = 12
ATTACK_MAX = 400  # requests and frames at most
IMG = (b"Accept: image/avif,image/webp,*/*\r\nSec-Fetch-Dest: image\r\n"
       b"Sec-Fetch-Mode: no-cors\r\nSec-Fetch-Site: cross-site\r\n"
       b"Referer: https://evil.example/\r\n")


def _raw(port: int, request: bytes) -> int:
    """One request written as bytes to 127.0.0.1:`port`, with that Host; its status (0: no
    answer)."""
    request = request.replace(HOST, b"Host: 127.0.0.1:%d\r\n" % port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(request)
            head = s.recv(64)
    except OSError:
        return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


HOST = b"Host: @\r\n"  # replaced by the Host the door serves (127.0.0.1:<its port>)


def _get(path: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\n" + HOST + extra + b"Connection: close\r\n\r\n"


# (name, door, request). Each goes through the door of the local stack's HAProxy that takes
# it to a chat, so the chat itself answers it: the public door (`www`) for what a browser
# may ask there, the admin listener on 127.0.0.1 for the rest (the pinned /_color/ paths,
# the admin API, paths outside the public door's allow-list, which it refuses itself).
HOSTILE = [
    ("nul_pinned", "admin", _get(b"/_color/green/%00")),
    ("nul", "admin", _get(b"/%00")),
    ("nul_api", "public", _get(b"/api/rooms/%00/messages")),
    ("img_nul_pinned", "admin", _get(b"/_color/green/%00", IMG)),
    ("img_nul", "admin", _get(b"/app.js%00", IMG)),
    ("bad_bearer", "admin", b"POST /api/admin/drain HTTP/1.1\r\n" + HOST
                            + b"Authorization: Bearer \xff\r\nContent-Length: 0\r\n"
                            b"Connection: close\r\n\r\n"),
    ("bad_bearer_pinned", "admin", b"POST /_color/green/api/admin/drain HTTP/1.1\r\n" + HOST
                                   + b"Authorization: Bearer \xff\r\n"
                                   b"Content-Length: 0\r\nConnection: close\r\n\r\n"),
    ("pinned_valid", "admin", _get(b"/_color/green/version")),
    ("pinned_valid_api", "admin", _get(b"/_color/green/api/stats")),
    ("img_pinned_valid", "admin", _get(b"/_color/green/version", IMG)),
]


class Attacker:
    """HTTP requests at ~`rate`/s (through HAProxy's public door or admin listener, as
    HOSTILE says) and lone-surrogate sends over a WebSocket through the public door, until
    stopped or ATTACK_MAX is reached."""

    def __init__(self, lb_port: int, admin_port: int, rate: float = 15.0) -> None:
        self.port, self.rate = lb_port, rate
        self.doors = {"public": lb_port, "admin": admin_port}
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.frames: Counter[str] = Counter()
        self.sent = 0
        self.stopping = threading.Event()
        self.http_thread = threading.Thread(target=self._http, daemon=True)

    def _http(self) -> None:
        i = 0
        while not self.stopping.is_set() and self.sent < ATTACK_MAX:
            name, door, request = HOSTILE[i % len(HOSTILE)]
            self.statuses[(name, _raw(self.doors[door], request))] += 1
            self.sent += 1
            i += 1
            self.stopping.wait(1.0 / self.rate)

    async def ws_sends(self) -> None:
        """Lone-surrogate texts, a few connections' worth, each kept under the rate limit."""
        url = f"ws://127.0.0.1:{self.port}/ws?room=attack&name=mallory"
        while not self.stopping.is_set() and self.sent < ATTACK_MAX:
            try:
                async with websockets.connect(url, open_timeout=10) as ws:
                    for _ in range(8):
                        if self.stopping.is_set():
                            return
                        await ws.send(json.dumps({"type": "send", "text": "\udc80",
                                                  "client_id": uuid.uuid4().hex}))
                        self.sent += 1
                        await asyncio.sleep(0.3)
                    deadline = time.monotonic() + 2
                    while time.monotonic() < deadline:
                        try:
                            frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                        except TimeoutError:
                            continue
                        if frame["type"] == "error":
                            self.frames[frame["code"]] += 1
            except (OSError, websockets.exceptions.WebSocketException):
                await asyncio.sleep(0.5)

    def start(self) -> None:
        self.http_thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.http_thread.join(10)


async def canary_step_under_attack(
        stack: FaultStack, green_env: dict[str, str]
) -> tuple[dict[str, Any], Attacker, dict[str, int], dict[str, Any]]:
    """(traffic_shift's result, the attacker, weights after the step, loadgen report)."""
    green = await asyncio.to_thread(stack.ensure_green, green_env)
    stack.set_weights(90, 10)
    cfg = LoadGenConfig(url=stack.ws_url, users=100, rate=20.0, duration=0, ramp=4.0,
                        drain=30.0, backoff_base=0.1, backoff_cap=1.0)
    lg, task = await start(cfg)
    attacker = Attacker(stack.lb_port, stack.admin_port)
    attacker.start()
    frames = asyncio.create_task(attacker.ws_sends())
    try:
        res = await asyncio.to_thread(traffic_shift, {
            "driver": "haproxy", "weight": 50, "haproxy_socket": stack.sock,
            "metrics_urls": {"blue": f"{stack.blue.url}/metrics",
                             "green": f"{green.url}/metrics"},
            "bake_seconds": BAKE_SECONDS, "poll_interval": 1, "max_p95_ms": 5000})
        weights = stack.weights()
    finally:
        attacker.stop()
        await asyncio.wait_for(frames, 15)
        await stopped(lg, task)
        stack.set_weights(50, 50)
    return res, attacker, weights, task.result()


def assert_attack_answered_as_client_faults(attacker: Attacker) -> None:
    by_name: dict[str, set[int]] = {}
    for (name, status), _ in attacker.statuses.items():
        by_name.setdefault(name, set()).add(status)
    assert attacker.sent >= 60, attacker.statuses  # the attack really ran
    for name, statuses in by_name.items():
        if name.endswith("valid") or name.endswith("valid_api"):
            assert statuses == {200}, (name, statuses)
        else:
            assert statuses and all(400 <= s < 500 for s in statuses), (name, statuses)
    assert attacker.frames and set(attacker.frames) == {"invalid"}, attacker.frames


@pytest.mark.timeout(240)
async def test_healthy_green_passes_a_step_under_hostile_requests(
        fault_stack: FaultStack) -> None:
    res, attacker, weights, load = await canary_step_under_attack(fault_stack, {})
    print(f"\nHOSTILE healthy: {dict(attacker.statuses)} frames={dict(attacker.frames)} "
          f"msg={res.get('msg')} load errors={load['errors']} closes={load['close_codes']}")
    assert not res.get("failed"), res
    assert weights == {"blue": 50, "green": 50}
    assert_attack_answered_as_client_faults(attacker)
    # the audience at demo rates never meets the abuse limits
    assert "rate_limited" not in load["errors"] and "1008" not in load["close_codes"], load


@pytest.mark.timeout(240)
async def test_bad_green_still_trips_under_hostile_requests(fault_stack: FaultStack) -> None:
    res, attacker, weights, _ = await canary_step_under_attack(
        fault_stack, {"CHAT_FAULT_RATE": "0.3"})
    print(f"\nHOSTILE bad green: {dict(attacker.statuses)} msg={res.get('msg')}")
    try:
        assert res.get("failed") is True and res.get("rolled_back") is True, res
        assert "error_rate" in res["msg"] and "green" in res["msg"], res["msg"]
        assert weights == {"blue": 100, "green": 0}  # a breach sends everyone to blue
    finally:
        await asyncio.to_thread(fault_stack.ensure_green)
