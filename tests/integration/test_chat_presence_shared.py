"""Presence writes and reads shared by a room's concurrent joins (chat/aio.py `SharedCalls`), on
a real redis-server: a storm of joins costs a few Redis round trips, the count written is
always the current one, and a read never answers a caller that asked after it started."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chat.bus import RoomBus
from chat.config import Config
from tests.conftest import Service

pytestmark = pytest.mark.integration


async def _nothing() -> None:
    return None


@pytest.fixture
async def bus(redis_server: Service) -> AsyncIterator[RoomBus]:
    b = RoomBus(Config(redis_url=redis_server.url, instance_id="blue-t-" + uuid.uuid4().hex[:6]),
                on_message=lambda room, frame: None, on_presence=lambda room: None,
                on_control=lambda command: None, on_reconnect=_nothing)
    yield b
    await b.close()


class Counting:
    """Wraps one Redis client method: counts its calls; with `gate`, holds each answer
    after Redis gave it (the call is done, its caller not told yet)."""

    def __init__(self, bus: RoomBus, name: str) -> None:
        self.original = getattr(bus.redis, name)
        self.n = 0
        self.answered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        setattr(bus.redis, name, self)

    async def __call__(self, *args: Any) -> Any:
        self.n += 1
        result = await self.original(*args)
        self.answered.set()
        if self.gate is not None:
            await self.gate.wait()
        return result


async def test_a_storm_of_joins_shares_presence_writes_and_reads(bus: RoomBus) -> None:
    room = "ps-" + uuid.uuid4().hex[:6]
    writes, reads = Counting(bus, "hset"), Counting(bus, "hgetall")

    async def join() -> dict[str, int]:
        await bus.presence_changed(room, +1)
        return await bus.presence(room)

    got = await asyncio.gather(*(join() for _ in range(50)))
    assert writes.n < 10 and reads.n < 10  # not one of each per join
    assert got[-1] == {"blue": 50}  # the last joiner reads every join's count
    raw = await bus.redis.hget(f"chat:presence:{room}", bus.config.instance_id)
    assert json.loads(raw)["n"] == 50  # the count written is the current one


async def test_a_read_asked_while_one_is_in_flight_waits_for_the_next(bus: RoomBus) -> None:
    room = "pr-" + uuid.uuid4().hex[:6]
    reads = Counting(bus, "hgetall")
    reads.gate = asyncio.Event()
    first = asyncio.create_task(bus.presence(room))
    await asyncio.wait_for(reads.answered.wait(), 5)  # Redis said: nobody; not told yet
    await asyncio.wait_for(bus.presence_changed(room, +1), 5)
    later = asyncio.create_task(bus.presence(room))
    await asyncio.sleep(0.05)
    assert reads.n == 1 and not later.done()
    reads.gate.set()
    assert await first == {}
    assert await later == {"blue": 1}  # never older than its request
    assert reads.n == 2


async def test_close_answers_the_waiting_callers_from_the_local_count(
        redis_server: Service) -> None:
    b = RoomBus(Config(redis_url=redis_server.url), on_message=lambda room, frame: None,
                on_presence=lambda room: None, on_control=lambda command: None,
                on_reconnect=_nothing)
    await b.presence_changed("pc", +1)
    reads = Counting(b, "hgetall")
    reads.gate = asyncio.Event()  # never opened: the read hangs until close
    first = asyncio.create_task(b.presence("pc"))
    await asyncio.wait_for(reads.answered.wait(), 5)
    later = asyncio.create_task(b.presence("pc"))
    await asyncio.sleep(0)
    await b.close()
    assert await first == {"blue": 1} and await later == {"blue": 1}
    assert not b._presence_reads.runners and not b._presence_reads.waiting
