"""Drain on ECS: the chat starts its drain when its own ALB target deregisters (the watcher,
chat/targetwatch.py, against the emulator's elbv2), and a join still in flight when the
drain starts is told to migrate once live instead of being cut with 1001."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any, ClassVar

import boto3
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.chatstack import ChatClient, ChatInstance, ChatStack
from tests.conftest import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def handshakes(inst: ChatInstance) -> int:
    _, body = inst.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith("chat_handshakes_total{"):
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError("no chat_handshakes_total in /metrics")


class HoldingProxy:
    """A TCP forwarder in the test's event loop whose client-to-server direction can be held:
    while `held`, requests to the DynamoDB endpoint wait (a slow store), answers still flow."""

    def __init__(self, target_port: int, only: bytes = b"") -> None:
        self.target_port = target_port
        self.only = only  # hold only chunks containing this (b"": every chunk)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def hold(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, held: bool) -> None:
            try:
                while data := await r.read(65536):
                    if held and self.only in data:
                        await self.flowing.wait()
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    w.close()

        await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_join_in_flight_at_sigterm_gets_migrate_then_1012(chat_stack: ChatStack,
                                                                 moto_server: Service):
    proxy = HoldingProxy(moto_server.port)
    await proxy.start()
    # in a thread: the proxy lives in this event loop, and start() waits for /readyz
    green = await asyncio.to_thread(chat_stack.start, "green", env={
        "AWS_ENDPOINT_URL_DYNAMODB": f"http://127.0.0.1:{proxy.port}",
        "CHAT_DRAIN_SECONDS": "2"})
    try:
        proxy.hold()  # the join's first store call (a user id) now waits
        url = green.ws_url("jf-" + uuid.uuid4().hex[:6], "late")
        joining = asyncio.create_task(ChatClient.connect(url))
        for _ in range(200):
            if await asyncio.to_thread(handshakes, green) >= 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the WebSocket handshake never reached the chat")
        assert not joining.done()
        green.terminate()  # the drain starts with the join between handshake and live
        await asyncio.sleep(1.0)
        proxy.release()
        client = await asyncio.wait_for(joining, 15)
        await client.wait_for(lambda: client.migrates == 1, within=10, what="migrate")
        assert await client.closed(within=15) == 1012
        assert await asyncio.to_thread(green.wait, 30) == 0
        assert '"joining": 1' in green.logs()  # the drain saw the join in flight
    finally:
        proxy.release()
        green.stop()
        await proxy.stop()


async def test_join_waiting_for_history_at_sigterm_gets_history_then_migrate(
        chat_stack: ChatStack, moto_server: Service):
    # hold only the history's Query: the join has sent `welcome` and is in its room
    proxy = HoldingProxy(moto_server.port, only=b"DynamoDB_20120810.Query")
    await proxy.start()
    green = await asyncio.to_thread(chat_stack.start, "green", env={
        "AWS_ENDPOINT_URL_DYNAMODB": f"http://127.0.0.1:{proxy.port}",
        "CHAT_DRAIN_SECONDS": "2"})
    try:
        proxy.hold()
        room = "jh-" + uuid.uuid4().hex[:6]
        ws = await websockets.connect(green.ws_url(room, "slow"), open_timeout=10)
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["type"] == "welcome"
        green.terminate()  # the drain starts while the history is being read
        await asyncio.sleep(2.5)  # past the whole drain window
        proxy.release()
        kinds = []
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                kinds.append(json.loads(raw)["type"])
        assert kinds[0] == "history", kinds  # never a migrate before the history
        assert "migrate" in kinds, kinds
        assert ws.close_code == 1012
        assert await asyncio.to_thread(green.wait, 30) == 0
    finally:
        proxy.release()
        green.stop()
        await proxy.stop()


def _elbv2(url: str) -> Any:
    return boto3.client("elbv2", endpoint_url=url, region_name="ap-northeast-2")


class TaskMetadata:
    """Stands in for the ECS agent's task metadata endpoint v4 (not runnable here): answers
    GET /task with a task document whose container has the IPv4 address 127.0.0.1."""

    DOC: ClassVar[dict[str, Any]] = {
        "Cluster": "c", "TaskARN": "arn:aws:ecs:ap-northeast-2:123456789012:task/c/t1",
        "Containers": [{"Name": "chat", "Networks": [{
            "NetworkMode": "awsvpc", "IPv4Addresses": ["127.0.0.1"]}]}]}

    async def start(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1]
            body = json.dumps(self.DOC).encode() if path == b"/v4/abc/task" else b"{}"
            status = b"200 OK" if path == b"/v4/abc/task" else b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v4/abc"

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize("own_address", ["CHAT_TARGET_ID", "task metadata"])
async def test_deregistered_target_drains_before_sigterm(chat_stack: ChatStack,
                                                         moto_server: Service,
                                                         own_address: str):
    elb = _elbv2(moto_server.url)
    ec2 = boto3.client("ec2", endpoint_url=moto_server.url, region_name="ap-northeast-2")
    vpc = ec2.create_vpc(CidrBlock="10.90.0.0/16")["Vpc"]["VpcId"]
    tg = elb.create_target_group(Name="tw-" + uuid.uuid4().hex[:8], Protocol="HTTP", Port=80,
                                 VpcId=vpc, TargetType="ip")["TargetGroups"][0]
    arn = tg["TargetGroupArn"]
    env = {"CHAT_TARGET_GROUP_ARNS": arn, "CHAT_TARGET_POLL_SECONDS": "0.5",
           "CHAT_DRAIN_SECONDS": "3",
           "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2": moto_server.url}
    metadata = TaskMetadata()
    if own_address == "CHAT_TARGET_ID":
        env["CHAT_TARGET_ID"] = "127.0.0.1"
    else:
        env["ECS_CONTAINER_METADATA_URI_V4"] = await metadata.start()
    # in a thread: the metadata stand-in lives in this event loop
    green = await asyncio.to_thread(chat_stack.start, "green", env=env)
    try:
        target = [{"Id": "127.0.0.1", "Port": green.port}]
        elb.register_targets(TargetGroupArn=arn, Targets=target)
        room = "tw-" + uuid.uuid4().hex[:6]
        clients = [await ChatClient.connect(green.ws_url(room, f"u{i}")) for i in range(3)]
        await asyncio.sleep(1.5)  # a few polls see the target registered
        assert green.get("/readyz")[0] == 200
        assert all(c.migrates == 0 and c.close_code is None for c in clients)
        elb.deregister_targets(TargetGroupArn=arn, Targets=target)
        state = elb.describe_target_health(TargetGroupArn=arn, Targets=target)[
            "TargetHealthDescriptions"][0]["TargetHealth"]
        # moto shows no `draining` for an IP target: unused at once (docs/aws-metrics.md)
        assert (state["State"], state.get("Reason")) == ("unused", "Target.NotRegistered")
        for c in clients:
            await c.wait_for(lambda c=c: c.migrates == 1, within=10, what="migrate")
        for c in clients:
            assert await c.closed(within=10) == 1012
        assert green.proc.poll() is None  # no SIGTERM: the drain came from the watcher
        assert green.get("/readyz")[0] == 503
        logs = green.logs()
        assert '"target_deregistered"' in logs and '"reason": "deregistered"' in logs
        assert '"event": "targetwatch_start", "target": "127.0.0.1"' in logs
    finally:
        green.stop()
        if own_address != "CHAT_TARGET_ID":
            await metadata.stop()
