"""The batched sequence assignment: concurrent sends of one room share one counter
ADD, on a real moto server through each DynamoDB client, with every guarantee of one ADD per
send kept: unique consecutive numbers, a number nobody uses is void at once, an ADD error
fails its whole batch, exactly-once retries, nothing left running after close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from chat.config import Config
from chat.store import MessageStore, StoreUnavailable, _Waiter
from tests.conftest import Service
from tests.storestack import make_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Adds:
    """Wraps the client's update_item (only the counter ADDs use it): records each ADD's n,
    can hold the ADDs at a gate and make chosen ones fail."""

    def __init__(self, store: MessageStore) -> None:
        self.original = store.client.update_item
        self.ns: list[int] = []
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail: Callable[[int], bool] = lambda n: False
        store.client.update_item = self

    async def __call__(self, **params: Any) -> Any:
        n = int(params["ExpressionAttributeValues"][":one"]["N"])
        self.ns.append(n)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail(n):
            raise OSError("injected: the ADD failed")
        return await self.original(**params)


def send(store: MessageStore, room: str, client_id: str) -> Any:
    return store.append(room=room, user_id=1, name="n", text=f"text of {client_id}",
                        client_id=client_id, color="blue")


async def settle(store: MessageStore) -> None:
    """Wait for the store's batched ADDs and voids in flight (no timing involved)."""
    while store._adders or store._voiding:
        await asyncio.gather(*store._adders.values(), *store._voiding,
                             return_exceptions=True)


async def stored(store: MessageStore, room: str) -> dict[int, str | None]:
    """seq -> client_id of every item of the room (None: void)."""
    return {int(i["seq"]["N"]): (None if "void" in i else i["client_id"]["S"])
            for i in await store.query(room, since=0, limit=1000)}


async def test_50_concurrent_appends_share_few_adds(store: MessageStore) -> None:
    adds = Adds(store)
    results = await asyncio.gather(*(send(store, "burst", f"c{i}") for i in range(50)))
    # distinct, consecutive, in the order the sends asked
    assert [r.seq for r in results] == list(range(1, 51))
    assert not any(r.duplicate for r in results)
    assert len(adds.ns) < 50 and sum(adds.ns) == 50
    assert await stored(store, "burst") == {i + 1: f"c{i}" for i in range(50)}
    assert await store.latest_seq("burst") == 50


async def test_sends_asking_while_an_add_is_in_flight_share_the_next(
        store: MessageStore) -> None:
    adds = Adds(store)
    adds.gate = asyncio.Event()
    lone = asyncio.create_task(send(store, "r", "lone"))
    await adds.started.wait()
    assert adds.ns == [1]  # a lone send of an idle room: ADD 1 at once
    later = [asyncio.create_task(send(store, "r", f"w{i}")) for i in range(7)]
    await asyncio.sleep(0)
    adds.gate.set()
    assert (await lone).seq == 1
    assert [(await t).seq for t in later] == list(range(2, 9))
    assert adds.ns == [1, 7]  # the seven waiters: one ADD 7


@pytest.mark.parametrize("client", ["ddb", "botocore"])
async def test_a_batch_is_capped(moto_server: Service, client: str) -> None:
    s = make_store(moto_server, client, seq_batch=8)
    await s.start()
    await s.init_tables()
    try:
        adds = Adds(s)
        results = await asyncio.gather(*(send(s, "cap", f"c{i}") for i in range(30)))
        assert sorted(r.seq for r in results) == list(range(1, 31))
        assert max(adds.ns) == 8 and sum(adds.ns) == 30 and len(adds.ns) >= 4
    finally:
        await s.close()


@pytest.mark.parametrize("client", ["ddb", "botocore"])
async def test_the_switch_off_is_one_add_per_send(moto_server: Service, client: str) -> None:
    assert Config.from_env({}).seq_batch == 50
    assert Config.from_env({"CHAT_SEQ_BATCH": "0"}).seq_batch == 0
    with pytest.raises(ValueError):
        Config.from_env({"CHAT_SEQ_BATCH": "-1"})
    s = make_store(moto_server, client, seq_batch=0)
    await s.start()
    await s.init_tables()
    try:
        adds = Adds(s)
        for i in range(3):
            await send(s, "off", f"s{i}")
        results = await asyncio.gather(*(send(s, "off", f"c{i}") for i in range(10)))
        assert len({r.seq for r in results}) == 10
        assert adds.ns == [1] * 13
    finally:
        await s.close()


@pytest.mark.parametrize("when", ["before its number arrived", "after its number arrived"])
async def test_a_send_cancelled_waiting_for_its_number_leaves_it_void(
        store: MessageStore, when: str) -> None:
    adds = Adds(store)
    adds.gate = asyncio.Event()
    task = asyncio.create_task(send(store, "cx", "gone"))
    await adds.started.wait()  # its ADD is in flight
    if when == "before its number arrived":
        task.cancel()
    else:
        hand = store._hand

        def hand_then_cancel(waiter: _Waiter, seq: int) -> None:
            hand(waiter, seq)
            task.cancel()  # the number is handed over, the send not yet resumed

        store._hand = hand_then_cancel  # type: ignore[method-assign]
    adds.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle(store)
    # the number is void in the store: a reader skips it, nobody waits gap_skip for it
    assert await store.range("cx", 1, 1) == {1: None}
    after = await send(store, "cx", "next")
    assert after.seq == 2 and await stored(store, "cx") == {1: None, 2: "next"}


async def test_a_send_cancelled_before_its_batch_takes_no_number(
        store: MessageStore) -> None:
    adds = Adds(store)
    adds.gate = asyncio.Event()
    first = asyncio.create_task(send(store, "q", "first"))
    await adds.started.wait()
    gone = asyncio.create_task(send(store, "q", "gone"))
    kept = asyncio.create_task(send(store, "q", "kept"))
    await asyncio.sleep(0)  # both wait for the next ADD
    gone.cancel()
    adds.gate.set()
    assert (await first).seq == 1 and (await kept).seq == 2
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert adds.ns == [1, 1]
    await settle(store)
    assert await stored(store, "q") == {1: "first", 2: "kept"}


async def test_a_failed_add_fails_its_whole_batch_and_the_next_works(
        store: MessageStore) -> None:
    adds = Adds(store)
    adds.gate = asyncio.Event()
    adds.fail = lambda n: len(adds.ns) == 2  # the second ADD: the three waiters
    first = asyncio.create_task(send(store, "f", "first"))
    await adds.started.wait()
    batch = [asyncio.create_task(send(store, "f", f"b{i}")) for i in range(3)]
    await asyncio.sleep(0)
    adds.gate.set()
    assert (await first).seq == 1
    for t in batch:
        with pytest.raises(StoreUnavailable, match="injected"):
            await t
    assert adds.ns == [1, 3]
    # the next batch works, and the failed ADD took no number
    again = await asyncio.gather(*(send(store, "f", f"b{i}") for i in range(3)))
    assert sorted(r.seq for r in again) == [2, 3, 4]
    await settle(store)
    assert await stored(store, "f") == {1: "first", 2: "b0", 3: "b1", 4: "b2"}


async def test_a_retry_after_a_batched_send_is_exactly_once(store: MessageStore) -> None:
    adds = Adds(store)
    first = await asyncio.gather(*(send(store, "x", f"k{i}") for i in range(10)))
    again = await asyncio.gather(*(send(store, "x", f"k{i}") for i in range(10)))
    assert all(a.duplicate and a.seq == f.seq for a, f in zip(again, first, strict=True))
    assert len(adds.ns) < 20
    await settle(store)
    items = await stored(store, "x")
    messages = [cid for cid in items.values() if cid is not None]
    assert sorted(messages) == sorted(f"k{i}" for i in range(10))  # each stored once
    assert len(items) == 20  # the resends' numbers are void, no gap left open


async def test_concurrent_joins_share_the_add_too(store: MessageStore) -> None:
    adds = Adds(store)
    ids = await asyncio.gather(*(store.next_user_id() for _ in range(20)))
    assert list(ids) == list(range(ids[0], ids[0] + 20))
    assert len(adds.ns) < 20


@pytest.mark.parametrize("client", ["ddb", "botocore"])
async def test_close_leaves_no_task_and_no_waiter_behind(moto_server: Service,
                                                          client: str) -> None:
    s = make_store(moto_server, client)
    await s.start()
    await s.init_tables()
    adds = Adds(s)
    adds.gate = asyncio.Event()  # never opened: the ADD hangs until close cancels it
    sends = [asyncio.create_task(send(s, "z", f"c{i}")) for i in range(3)]
    await adds.started.wait()
    late = asyncio.create_task(send(s, "z", "late"))  # waits for the next batch
    await asyncio.sleep(0)
    await s.close()
    for t in [*sends, late]:
        with pytest.raises(StoreUnavailable):
            await t
    assert not s._adders and not s._waiting and not s._voiding
    with pytest.raises(StoreUnavailable):
        await send(s, "z", "after close")
