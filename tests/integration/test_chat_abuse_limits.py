"""Abuse limits of one chat instance (issue 16, items 3 and 5), on real redis-server and
the DynamoDB emulator: the Host allow-list refuses a DNS-rebinding handshake, repeated
rate-limit violations close the socket with 1008, joins abandoned half-way leave no
connection record or presence behind, and slow headers time out."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import boto3
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.chatstack import ChatClient, ChatStack, http

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_host_allow_list_refuses_a_rebinding_handshake(chat_stack: ChatStack) -> None:
    inst = chat_stack.start("blue", version="hosts",
                            env={"CHAT_ALLOWED_HOSTS": "127.0.0.1,localhost"})
    try:
        # what a page on evil.example sends after its name re-resolved to 127.0.0.1
        with socket.create_connection(("127.0.0.1", inst.port), timeout=10) as sock:
            sock.sendall(b"GET /ws?room=r&name=n HTTP/1.1\r\nHost: evil.example:8080\r\n"
                         b"Origin: http://evil.example:8080\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 421 ")
        ok = await websockets.connect(inst.ws_url("r", "n"), open_timeout=10)
        assert json.loads(await ok.recv())["type"] == "welcome"
        await ok.close()
        assert http("GET", inst.url + "/api/stats", headers={"Host": "evil.example"})[0] == 421
        assert http("GET", inst.url + "/", headers={"Host": "evil.example"})[0] == 421
        assert http("GET", inst.url + "/api/stats", headers={"Host": "LOCALHOST:1"})[0] == 200
        assert http("GET", inst.url + "/readyz", headers={"Host": "evil.example"})[0] == 200
    finally:
        inst.stop()


async def test_repeated_rate_limit_violations_close_with_1008(chat_stack: ChatStack) -> None:
    inst = chat_stack.start("blue", version="strikes", env={"CHAT_RATE_STRIKES": "20"})
    try:
        ws = await websockets.connect(inst.ws_url("strikes", "flood"), open_timeout=10)
        limited = 0
        with pytest.raises(ConnectionClosed):
            for _ in range(2000):
                await ws.send('{"type":"ping"}')
            async for raw in ws:
                frame = json.loads(raw)
                limited += frame.get("code") == "rate_limited"
        assert ws.close_code == 1008, ws.close_code
        assert limited <= 20
        # a well-behaved client on the same instance is untouched
        calm = await websockets.connect(inst.ws_url("strikes", "calm"), open_timeout=10)
        for _ in range(5):
            await calm.send('{"type":"ping"}')
        await asyncio.sleep(0.5)
        assert calm.close_code is None
        await calm.close()
    finally:
        inst.stop()


async def _abandon(port: int, i: int) -> None:
    """A WebSocket handshake dropped right after the 101 or after a few bytes of welcome."""
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"GET /ws?room=churn&name=u{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        await w.drain()
        await r.readuntil(b"\r\n\r\n")
        if i % 2:
            await r.read(10)
        w.transport.abort()
    except OSError:
        pass


async def test_joins_abandoned_half_way_leave_no_connection_record(
        chat_stack: ChatStack) -> None:
    inst = chat_stack.start("blue", version="abandon")
    try:
        for k in range(0, 1000, 50):
            await asyncio.gather(*(_abandon(inst.port, i) for i in range(k, k + 50)))
        ddb = boto3.client("dynamodb", endpoint_url=chat_stack.dynamodb_url,
                           region_name="ap-northeast-2")

        def left() -> int:
            return int(ddb.scan(TableName="connections", Select="COUNT",
                                FilterExpression="version = :v",
                                ExpressionAttributeValues={":v": {"S": "abandon"}})["Count"])
        deadline = time.monotonic() + 30
        while (n := left()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        assert n == 0, f"{n} connection records left behind"
        _, body = inst.get("/metrics")
        assert 'chat_connections{color="blue",version="abandon"} 0' in body.decode()
        # and no presence left: the next user in the room finds itself alone
        c = await ChatClient.connect(inst.ws_url("churn", "after"))
        try:
            await c.wait_for(lambda: bool(c.presence), 10, "presence")
            assert c.presence[-1]["online"] == 1, c.presence
        finally:
            await c.close()
    finally:
        inst.stop()


def test_slow_headers_time_out(chat_stack: ChatStack) -> None:
    inst = chat_stack.start("blue", version="slow", env={"CHAT_REQUEST_TIMEOUT": "2"})
    try:
        with socket.create_connection(("127.0.0.1", inst.port), timeout=15) as s:
            s.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            t0 = time.monotonic()
            answer = b""
            while chunk := s.recv(4096):  # the server answers 408 and closes
                answer += chunk
            waited = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert waited < 10
    finally:
        inst.stop()
