"""Fault scenario 5 of issue 5: a client that stops reading among 500."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from typing import Any

import pytest
import websockets

from loadgen import LoadGenConfig
from tests.chatstack import ChatClient, ChatInstance
from tests.faults.conftest import (
    FaultStack,
    assert_clean,
    outcome,
)
from tests.faults.loadhelp import SLOW_USERS, start, stopped

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# ------------------------------------------------------------------ 5. slow consumer


async def slow_consumer(inst: ChatInstance, room: str) -> tuple[Any, float]:
    """A client that reads its welcome and then never reads again (tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", inst.port))
    ws = await websockets.connect(inst.ws_url(room, "sleepy"), sock=sock, max_queue=1,
                                  compression=None, ping_interval=None)
    await ws.recv()  # welcome; from now on it reads nothing
    return ws, time.monotonic()


async def flood(inst: ChatInstance, room: str, stop: asyncio.Event) -> int:
    """Two members posting 2,000-character messages under the rate limit (~8/s together)."""
    clients = [await ChatClient.connect(inst.ws_url(room, f"talker{i}")) for i in range(2)]
    n = 0
    try:
        while not stop.is_set():
            for c in clients:
                await c.send("긴 메시지 " * 333)
                n += 1
            await asyncio.sleep(0.25)
    finally:
        for c in clients:
            await c.close()
    return n


async def run_500(inst: ChatInstance, with_slow: bool) -> tuple[dict[str, Any], Any]:
    cfg = LoadGenConfig(url=f"ws://127.0.0.1:{inst.port}/ws", users=SLOW_USERS, rooms=5,
                        rate=20.0, duration=0, ramp=10.0, drain=30.0, connect_timeout=30.0)
    lg, task = await start(cfg, within=120)
    stop = asyncio.Event()
    room = f"slow-{uuid.uuid4().hex[:6]}"
    slow = None
    talkers = asyncio.create_task(flood(inst, room, stop))
    closed_after: float | None = None
    try:
        if with_slow:
            ws, t0 = await slow_consumer(inst, room)
            # the server's own record of closing it (the client reads nothing, so it cannot
            # see the close frame behind the data it has not read)
            fails = 0
            while time.monotonic() - t0 < 60:
                fails = sum(1 for ln in inst.logs().splitlines()
                            if '"ws_fail"' in ln and f'"room": "{room}"' in ln)
                if fails:
                    break
                await asyncio.sleep(0.2)
            closed_after = time.monotonic() - t0
            codes = [json.loads(ln).get("code") for ln in inst.logs().splitlines()
                     if '"ws_fail"' in ln and f'"room": "{room}"' in ln]
            slow = (codes[0] if codes else None, round(closed_after, 1))
            ws.transport.abort()
        else:
            await asyncio.sleep(15)
        await asyncio.sleep(5)
    finally:
        stop.set()
        await talkers
        await stopped(lg, task)
    return task.result(), slow


@pytest.mark.timeout(420)
async def test_slow_consumer_among_500_is_closed_1013_and_others_keep_their_latency(
        fault_stack: FaultStack) -> None:
    inst = fault_stack.blue
    base, _ = await run_500(inst, with_slow=False)
    r, slow = await run_500(inst, with_slow=True)
    assert slow is not None
    code, seconds = slow
    p99_base, p99 = base["latency_ms"]["p99"], r["latency_ms"]["p99"]
    s = outcome("slow consumer among 500", r, slow_close_code=code,
                slow_closed_after_s=seconds, p99_without_ms=p99_base, p99_with_ms=p99)
    assert code == 1013, f"slow consumer closed with {code}"
    assert seconds <= 45
    # the others: p99 within 2x of the run without it (floor: 250 ms of scheduling noise on
    # a shared 2-core machine)
    assert p99 <= 2 * max(p99_base, 250.0), (p99, p99_base)
    assert_clean(s, r)


