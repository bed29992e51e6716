"""Drain (admin API and SIGTERM) with a load generator running, and Redis/DynamoDB outages."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from loadgen import LoadGen, LoadGenConfig, run_loadgen
from tests.chatstack import ChatClient, ChatInstance, ChatStack
from tests.conftest import Service, start_moto, start_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def ws_base(inst: ChatInstance) -> str:
    return f"ws://127.0.0.1:{inst.port}/ws"


def connections(inst: ChatInstance) -> int:
    _, body = inst.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith("chat_connections{"):
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError("no chat_connections in /metrics")


async def until(pred, within: float = 20.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.05)


async def drain_under_load(stack: ChatStack, blue: ChatInstance, green: ChatInstance,
                           trigger) -> dict:
    """Run 20 users on green and blue; call trigger() once green carries users."""
    holder: list[LoadGen] = []
    cfg = LoadGenConfig(url=ws_base(green), extra_urls=[ws_base(blue)], users=20, rate=10,
                        duration=9, ramp=1.0, drain=4, rooms=2, seed=7,
                        room_prefix="dr-" + uuid.uuid4().hex[:6])
    run = asyncio.create_task(run_loadgen(cfg, on_start=holder.append))
    await until(lambda: connections(green) >= 8, what="users on green")
    await asyncio.sleep(1.5)  # let messages flow on both colors first
    await trigger()
    report = await run
    return report


async def test_admin_drain_moves_every_client_with_nothing_lost(chat_stack: ChatStack):
    blue, green = chat_stack.start("blue"), chat_stack.start("green")
    try:
        async def drain() -> None:
            status, body = chat_stack.admin(blue, "/api/admin/drain", {"color": "green"})
            assert status == 202 and body["color"] == "green"
            await until(lambda: green.get("/readyz")[0] == 503, what="green not ready")
            assert json.loads(green.get("/readyz")[1])["reason"] == "draining"
            assert blue.get("/readyz")[0] == 200

        report = await drain_under_load(chat_stack, blue, green, drain)
        assert report["lost"] == 0 and report["duplicated"] == 0
        assert report["out_of_order"] == 0
        assert report["migrations"] >= 8
        assert report["unexpected_closes"] == 0, report["close_codes"]
        assert report["acked"] > 40
        assert connections(green) == 0
        assert report["connections_by_color"].get("green", 0) == 0
        # a drained color refuses new WebSockets until undrained
        with pytest.raises(Exception, match="503"):
            await ChatClient.connect(green.ws_url("x", "late"))
        status, _ = chat_stack.admin(green, "/api/admin/undrain", {"color": "green"})
        assert status == 202
        await until(lambda: green.get("/readyz")[0] == 200, what="green ready again")
        back = await ChatClient.connect(green.ws_url("x", "late"))
        await back.close()
    finally:
        blue.stop()
        green.stop()


async def test_sigterm_drains_then_exits_with_nothing_lost(chat_stack: ChatStack):
    blue, green = chat_stack.start("blue"), chat_stack.start("green")
    try:
        def green_unready() -> bool:
            try:
                return green.get("/readyz")[0] == 503
            except OSError:
                return True  # the listener may already be closed: also "not ready"

        async def sigterm() -> None:
            green.terminate()
            await until(green_unready, what="green not ready")

        report = await drain_under_load(chat_stack, blue, green, sigterm)
        assert await asyncio.to_thread(green.wait, 30) == 0
        assert report["lost"] == 0 and report["duplicated"] == 0
        assert report["out_of_order"] == 0
        assert report["migrations"] >= 8
        assert report["unexpected_closes"] == 0, report["close_codes"]
        assert '"drain_start"' in green.logs() and '"reason": "shutdown"' in green.logs()
    finally:
        blue.stop()
        green.stop()


async def test_drain_closes_clients_that_do_not_move_with_1012(chat_stack: ChatStack):
    green = chat_stack.start("green")
    try:
        stubborn = await ChatClient.connect(green.ws_url("stay-" + uuid.uuid4().hex[:6], "s"))
        status, _ = chat_stack.admin(green, "/api/admin/drain", {"color": "green"})
        assert status == 202
        await stubborn.wait_for(lambda: stubborn.migrates == 1, what="migrate")
        assert await stubborn.closed(within=10) == 1012
    finally:
        green.stop()


@pytest.fixture
def own_redis(tmp_path: Path):
    svc = start_redis(tmp_path)
    yield svc
    svc.stop()


async def test_redis_restart_delays_messages_but_loses_none(own_redis: Service,
                                                           moto_server: Service,
                                                           tmp_path: Path):
    stack = ChatStack(own_redis.url, moto_server.url, tmp_path / "stack")
    stack.init_tables()
    blue, green = stack.start("blue"), stack.start("green")
    redis = own_redis
    try:
        room = "rr-" + uuid.uuid4().hex[:6]
        a = await ChatClient.connect(blue.ws_url(room, "a"))
        b = await ChatClient.connect(green.ws_url(room, "b"))
        redis.stop()
        await until(lambda: green.get("/readyz")[0] == 503, what="readyz 503")
        assert "redis" in json.loads(green.get("/readyz")[1])["reason"]
        cid = await a.send("while redis is down")
        await a.wait_for(lambda: cid in a.acks, what="ack without redis")
        await b.wait_for(lambda: a.acks[cid] in b.messages, within=15,
                         what="delivery from the store while redis is down")
        redis = start_redis(tmp_path, own_redis.port)
        await until(lambda: green.get("/readyz")[0] == 200, what="ready again")
        await until(lambda: blue.get("/readyz")[0] == 200, what="blue ready again")
        first_cid = cid
        for i in range(3):
            cid = await a.send(f"after restart {i}")
        await b.wait_for(lambda: len(b.seqs) == 4, within=15, what="live after restart")
        assert b.seqs == sorted(b.seqs) and len(set(b.seqs)) == 4
        # idempotency lives in DynamoDB: a resend after the Redis restart is recognised
        before = a.acks[first_cid]
        a.acks.pop(first_cid)
        await a.send("while redis is down", client_id=first_cid)
        await a.wait_for(lambda: first_cid in a.acks, what="ack of the resend")
        assert a.acks[first_cid] == before
        await a.close()
        await b.close()
    finally:
        stack.stop_all()
        redis.stop()


async def test_dynamodb_down_answers_unavailable_and_readyz_503(redis_server: Service,
                                                               tmp_path: Path):
    moto = start_moto()
    stack = ChatStack(redis_server.url, moto.url, tmp_path / "stack")
    try:
        stack.init_tables()
        blue = stack.start("blue")
        c = await ChatClient.connect(blue.ws_url("dd-" + uuid.uuid4().hex[:6], "c"))
        moto.stop()
        await c.send("nowhere to go", client_id="retry-me")
        await c.wait_for(lambda: c.errors, within=30, what="error frame")
        assert c.errors[0]["code"] == "unavailable"
        assert c.close_code is None  # the connection stays open
        status, body = blue.get("/readyz")
        assert status == 503 and "dynamodb" in json.loads(body)["reason"]
        await c.close()
    finally:
        stack.stop_all()
        moto.stop()


async def test_migrate_is_paced_over_the_drain_window(chat_stack: ChatStack):
    green = chat_stack.start("green", env={"CHAT_DRAIN_SECONDS": "3"})
    try:
        room = "pace-" + uuid.uuid4().hex[:6]
        clients = [await ChatClient.connect(green.ws_url(room, f"c{i}")) for i in range(10)]
        loop = asyncio.get_running_loop()
        got: dict[int, float] = {}

        def record() -> bool:
            for i, c in enumerate(clients):
                if c.migrates and i not in got:
                    got[i] = loop.time()
            return len(got) == len(clients)

        status, _ = chat_stack.admin(green, "/api/admin/drain", {"color": "green"})
        assert status == 202
        await until(record, within=10, what="every client got migrate")
        # jittered over the first 80% of the window, not all in the same instant
        assert max(got.values()) - min(got.values()) > 0.3
        for c in clients:
            assert await c.closed(within=10) == 1012  # nobody moved: closed at the end
    finally:
        green.stop()
