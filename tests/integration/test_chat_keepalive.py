"""The lean WebSocket layer (chat/ws/lean.py): one Pinger per process instead of a ping task
per connection, frames handed to the handler as they arrive.

- a client that never answers (no pong, no frame) is pinged and then closed with 1011;
- a client that answers pings but sends nothing stays connected past many timeouts;
- frames a client sends before its join completed are all answered, in order.

The silent client is a raw TCP socket that does the opening handshake by hand: every
WebSocket library answers pings by itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from typing import Any

import pytest

from tests.chatstack import ChatClient, ChatStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FAST_PINGS = {"CHAT_PING_INTERVAL": "1", "CHAT_PING_TIMEOUT": "1"}


async def raw_connect(port: int, query: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.split(b"\r\n")[0].split()[1] == b"101", head
    return reader, writer


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, unfragmented client frame (payloads under 126 bytes)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    assert not b1 & 0x80, "server frames are not masked"
    return b0 & 0x0F, await reader.readexactly(n)


async def frames_until_eof(reader: asyncio.StreamReader, within: float) -> list[tuple[int, bytes]]:
    frames: list[tuple[int, bytes]] = []

    async def collect() -> None:
        try:
            while True:
                frames.append(await read_frame(reader))
        except asyncio.IncompleteReadError:
            return

    await asyncio.wait_for(collect(), within)
    return frames


def texts(frames: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    return [json.loads(p) for op, p in frames if op == 0x1]


async def test_a_client_that_never_answers_is_pinged_then_closed_1011(
        chat_stack: ChatStack) -> None:
    inst = await asyncio.to_thread(chat_stack.start, "blue", "v1", env=FAST_PINGS)
    try:
        reader, writer = await raw_connect(inst.port, "room=keepalive&name=silent")
        t0 = time.monotonic()
        frames = await frames_until_eof(reader, within=20)
        silent_for = time.monotonic() - t0
        writer.close()
        kinds = [f["type"] for f in texts(frames)]
        assert kinds[:2] == ["welcome", "history"], kinds
        pings = [f for f in frames if f[0] == 0x9]
        closes = [f for f in frames if f[0] == 0x8]
        assert pings, "the Pinger never pinged the silent client"
        assert closes, "no close frame before the connection ended"
        code = struct.unpack("!H", closes[0][1][:2])[0]
        assert code == 1011, code
        # not before a ping interval plus a timeout of silence (1 s + 1 s here)
        assert silent_for >= 1.5, silent_for
    finally:
        await asyncio.to_thread(inst.stop)


async def test_a_client_that_answers_pings_stays_connected_while_idle(
        chat_stack: ChatStack) -> None:
    inst = await asyncio.to_thread(chat_stack.start, "blue", "v1", env=FAST_PINGS)
    try:
        # websockets answers the server's pings itself; its own pings are off, so only
        # its pongs tell the server it is alive
        client = await ChatClient.connect(inst.ws_url("keepalive", "idle"), ping_interval=None)
        await asyncio.sleep(6)  # three times interval + timeout
        assert client.close_code is None, client.close_code
        cid = await client.send("still here")
        await client.wait_for(lambda: cid in client.acks, what="ack after the idle time")
        await client.close()
    finally:
        await asyncio.to_thread(inst.stop)


async def test_frames_sent_before_the_join_completed_are_all_answered_in_order(
        chat_stack: ChatStack) -> None:
    inst = await asyncio.to_thread(chat_stack.start, "blue", "v1")
    try:
        reader, writer = await raw_connect(inst.port, "room=early&name=eager")
        # sent at once after the upgrade, while the server still reads the user id,
        # the room's seq and its history from the store
        pings = [client_frame(0x1, json.dumps({"type": "ping", "n": i}).encode())
                 for i in range(3)]
        send = client_frame(0x1, json.dumps({"type": "send", "text": "early bird",
                                             "client_id": "early-1"}).encode())
        writer.write(b"".join(pings) + send)
        await writer.drain()
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while not any(f.get("type") == "ack" for f in got):
            assert time.monotonic() < deadline, got
            op, payload = await asyncio.wait_for(read_frame(reader), 15)
            if op == 0x1:
                got.append(json.loads(payload))
        kinds = [f["type"] for f in got if f["type"] != "presence"]
        assert kinds[:2] == ["welcome", "history"], kinds
        assert kinds[2:5] == ["pong", "pong", "pong"], kinds
        assert "ack" in kinds[5:], kinds
        writer.write(client_frame(0x8, struct.pack("!H", 1000)))
        await writer.drain()
        writer.close()
    finally:
        await asyncio.to_thread(inst.stop)
