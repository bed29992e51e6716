"""A send waiting on storage must not stop the connection's reader: the client's later
frames (and the WebSocket keepalive's pongs, which queue behind unread frames) are still
answered. Found by the fuzz run: a client pipelining sends while DynamoDB was slow was
closed with 1011 by the server's own keepalive."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.chatstack import ChatClient, ChatStack
from tests.conftest import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def pongs(client: ChatClient) -> int:
    return sum(1 for f in client.frames if f.get("type") == "pong")


async def test_ping_is_answered_while_an_earlier_send_waits_on_storage(
        chat_stack: ChatStack, moto_server: Service) -> None:
    inst = await asyncio.to_thread(chat_stack.start, "blue", "v1")
    try:
        client = await ChatClient.connect(inst.ws_url("pipeline", "p"))
        await client.send_json({"type": "ping"})  # the join is complete once this answers
        await client.wait_for(lambda: pongs(client) == 1, what="first pong")
        os.kill(moto_server.proc.pid, signal.SIGSTOP)  # storage stalls, nothing fails fast
        try:
            cid = await client.send("stored once storage answers")
            await asyncio.sleep(0.3)  # the send is now waiting on DynamoDB
            await client.send_json({"type": "ping"})
            await client.wait_for(lambda: pongs(client) == 2, within=3.0,
                                  what="a pong while the send waits on storage")
            assert cid not in client.acks  # no ack before the write is durable
        finally:
            os.kill(moto_server.proc.pid, signal.SIGCONT)
        await client.wait_for(lambda: cid in client.acks, within=60,
                              what="the ack once storage came back")
        await client.close()
    finally:
        await asyncio.to_thread(inst.stop)
