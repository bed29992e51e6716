"""User ids leased in blocks (CHAT_USER_ID_BLOCK), on a real moto server: unique across
instances and restarts, the next block leased once before the current one runs out, a failed
lease fails only the joins waiting for it, nothing left running after close."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from chat.config import Config
from chat.store import MessageStore, StoreUnavailable
from tests.conftest import Service
from tests.integration.test_store_batching import Adds

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def config(moto_server: Service, suffix: str, block: int, client: str = "ddb") -> Config:
    return Config(dynamodb_endpoint=moto_server.url, table_messages=f"m-{suffix}",
                  table_connections=f"c-{suffix}", table_user_counter=f"u-{suffix}",
                  dynamodb_client=client, user_id_block=block)


async def started(cfg: Config) -> MessageStore:
    s = MessageStore(cfg)
    await s.start()
    await s.init_tables()
    return s


@pytest.fixture
async def tables(moto_server: Service) -> str:
    """A fresh set of tables (a fresh `user` counter); returns their suffix."""
    suffix = uuid.uuid4().hex[:6]
    s = await started(config(moto_server, suffix, 10))
    await s.close()
    return suffix


@pytest.fixture(params=["ddb", "botocore"])
async def store(request: pytest.FixtureRequest, moto_server: Service, tables: str
                ) -> AsyncIterator[MessageStore]:
    s = await started(config(moto_server, tables, 10, request.param))
    yield s
    await s.close()


def test_the_block_is_read_from_the_environment_and_checked() -> None:
    assert Config.from_env({}).user_id_block == 100
    assert Config.from_env({"CHAT_USER_ID_BLOCK": "1"}).user_id_block == 1
    for bad in ("0", "-5", "10001"):
        with pytest.raises(ValueError):
            Config.from_env({"CHAT_USER_ID_BLOCK": bad})


async def test_ids_come_from_blocks_of_one_add_each(store: MessageStore) -> None:
    adds = Adds(store)
    ids = [await store.next_user_id() for _ in range(25)]
    assert ids == list(range(1, 26))  # one instance alone: its blocks follow each other
    assert set(adds.ns) == {10}  # every ADD leases a whole block ...
    assert len(adds.ns) == 3  # ... and 25 ids took three of them (the third prefetched)


async def test_the_next_block_is_leased_once_before_the_current_runs_out(
        store: MessageStore) -> None:
    adds = Adds(store)
    assert [await store.next_user_id() for _ in range(5)] == [1, 2, 3, 4, 5]
    assert adds.ns == [10]
    adds.gate = asyncio.Event()  # the next ADD hangs until the gate opens
    adds.started.clear()
    assert await store.next_user_id() == 6  # 4 left, under half a block: lease the next
    await asyncio.wait_for(adds.started.wait(), 5)
    # while that lease is in flight the joins take the rest of the block at once, and
    # start no second lease
    assert [await asyncio.wait_for(store.next_user_id(), 1) for _ in range(4)] == [7, 8, 9, 10]
    waiting = [asyncio.create_task(store.next_user_id()) for _ in range(12)]
    await asyncio.sleep(0.1)
    assert not any(t.done() for t in waiting)  # nothing left: they wait for the lease
    assert adds.ns == [10, 10]  # still one lease in flight, shared
    adds.gate.set()
    got = await asyncio.gather(*waiting)
    assert got == list(range(11, 23))  # the second block, then a third one leased for them
    assert adds.ns == [10, 10, 10]


async def test_ids_are_unique_across_instances_and_restarts(moto_server: Service,
                                                           tables: str) -> None:
    a = await started(config(moto_server, tables, 10))
    b = await started(config(moto_server, tables, 7))
    try:
        got = await asyncio.gather(*(s.next_user_id() for _ in range(60) for s in (a, b)))
    finally:
        await b.close()  # b stops with ids leased and unused: they are never handed out
    again = await started(config(moto_server, tables, 7))  # b restarted
    try:
        later = await asyncio.gather(*(s.next_user_id() for _ in range(30) for s in (a, again)))
    finally:
        await a.close()
        await again.close()
    every = got + later
    assert len(set(every)) == len(every) == 180
    assert min(later[1::2]) > max(got)  # the restarted instance's ids are new ones


async def test_a_failed_lease_fails_its_waiters_and_the_next_join_retries(
        store: MessageStore) -> None:
    adds = Adds(store)
    adds.fail = lambda n: len(adds.ns) == 1  # the first ADD fails
    joins = [asyncio.create_task(store.next_user_id()) for _ in range(3)]
    for t in joins:
        with pytest.raises(StoreUnavailable):
            await t
    assert adds.ns == [10]  # the three waited for one lease
    assert await store.next_user_id() == 1  # nothing was leased: the next join leases
    assert adds.ns == [10, 10]


async def test_a_join_cancelled_while_waiting_does_not_cancel_the_lease(
        store: MessageStore) -> None:
    adds = Adds(store)
    adds.gate = asyncio.Event()
    gone = asyncio.create_task(store.next_user_id())
    stays = asyncio.create_task(store.next_user_id())
    await adds.started.wait()
    gone.cancel()
    await asyncio.sleep(0)
    adds.gate.set()
    assert await stays == 1
    assert gone.cancelled()


async def test_close_fails_the_waiting_joins_and_leaves_no_task(moto_server: Service,
                                                                tables: str) -> None:
    s = await started(config(moto_server, tables, 10))
    adds = Adds(s)
    adds.gate = asyncio.Event()  # never opened: the lease hangs until close cancels it
    joins = [asyncio.create_task(s.next_user_id()) for _ in range(3)]
    await adds.started.wait()
    await s.close()
    for t in joins:
        with pytest.raises(StoreUnavailable):
            await t
    assert s._user_lease is None
    with pytest.raises(StoreUnavailable):
        await s.next_user_id()


async def test_a_block_of_one_is_one_shared_add_per_batch_of_joins(moto_server: Service,
                                                                   tables: str) -> None:
    s = await started(config(moto_server, tables, 1))
    try:
        adds = Adds(s)
        ids = await asyncio.gather(*(s.next_user_id() for _ in range(20)))
        assert list(ids) == list(range(1, 21))
        assert sum(adds.ns) == 20  # no id leased beyond the joins that asked
    finally:
        await s.close()
