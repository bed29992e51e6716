"""Welcome's `seq` (MessageStore.latest_seq), on a real moto server: the consistent GetItems of
a room's concurrent joins are shared, but only a read that starts after a caller asked answers
it, so the value is never older than the request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat.store import MessageStore, StoreUnavailable
from tests.conftest import Service
from tests.storestack import make_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Reads:
    """Wraps the client's get_item (only latest_seq uses it here): counts the reads, can
    hold each answer after DynamoDB gave it (the read is done, its caller not told yet) and
    make chosen reads fail."""

    def __init__(self, store: MessageStore) -> None:
        self.original = store.client.get_item
        self.n = 0
        self.answered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail: Any = lambda n: False
        store.client.get_item = self

    async def __call__(self, **params: Any) -> Any:
        assert params["ConsistentRead"] is True
        self.n += 1
        n = self.n
        if self.fail(n):
            raise OSError("injected: the read failed")
        result = await self.original(**params)
        self.answered.set()
        if self.gate is not None:
            await self.gate.wait()
        return result


async def test_concurrent_joins_of_a_room_share_one_read(store: MessageStore) -> None:
    await store._add("room#a", 7)
    reads = Reads(store)
    got = await asyncio.gather(*(store.latest_seq("a") for _ in range(30)),
                               store.latest_seq("b"))
    assert list(got) == [7] * 30 + [0]
    assert reads.n == 2  # one for room a, one for room b


async def test_a_join_asking_while_a_read_is_in_flight_waits_for_the_next(
        store: MessageStore) -> None:
    await store._add("room#r", 3)
    reads = Reads(store)
    reads.gate = asyncio.Event()
    first = asyncio.create_task(store.latest_seq("r"))
    await asyncio.wait_for(reads.answered.wait(), 5)  # DynamoDB said 3; not delivered yet
    assert await store._add("room#r") == 4  # a send takes 4 after that read
    later = [asyncio.create_task(store.latest_seq("r")) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert reads.n == 1  # they wait: the read in flight started before they asked
    reads.gate.set()
    assert await first == 3
    assert [await t for t in later] == [4] * 5  # never older than their request
    assert reads.n == 2  # the five shared the next read


async def test_a_failed_read_fails_its_callers_and_the_next_read_is_new(
        store: MessageStore) -> None:
    await store._add("room#f", 2)
    reads = Reads(store)
    reads.fail = lambda n: n == 1
    joins = [asyncio.create_task(store.latest_seq("f")) for _ in range(4)]
    for t in joins:
        with pytest.raises(StoreUnavailable):
            await t
    assert reads.n == 1
    assert await store.latest_seq("f") == 2
    assert reads.n == 2


async def test_a_cancelled_join_leaves_the_others_their_read(store: MessageStore) -> None:
    reads = Reads(store)
    reads.gate = asyncio.Event()
    gone = asyncio.create_task(store.latest_seq("c"))
    stays = asyncio.create_task(store.latest_seq("c"))
    await asyncio.wait_for(reads.answered.wait(), 5)
    gone.cancel()
    reads.gate.set()
    assert await stays == 0
    assert gone.cancelled() and not store._latest_seq.runners


@pytest.mark.parametrize("client", ["ddb", "botocore"])
async def test_close_fails_the_waiting_joins_and_leaves_no_task(moto_server: Service,
                                                                client: str) -> None:
    s = make_store(moto_server, client)
    await s.start()
    await s.init_tables()
    reads = Reads(s)
    reads.gate = asyncio.Event()  # never opened: the read hangs until close cancels it
    first = asyncio.create_task(s.latest_seq("z"))
    await asyncio.wait_for(reads.answered.wait(), 5)
    later = asyncio.create_task(s.latest_seq("z"))  # waits for the next read
    await asyncio.sleep(0)
    await s.close()
    for t in (first, later):
        with pytest.raises(StoreUnavailable):
            await t
    assert not s._latest_seq.runners and not s._latest_seq.waiting
    with pytest.raises(StoreUnavailable):
        await s.latest_seq("z")
