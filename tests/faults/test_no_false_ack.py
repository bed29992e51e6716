"""A write slower than the rooms' gap_skip must never be acknowledged after a room skipped its
number (found by the canary-under-fault scenario on a busy machine: acked messages that some
clients never received). Rooms fence a number before skipping it; these tests drive
MessageStore against a real moto server with one write held back on purpose."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chat.config import Config
from chat.store import MessageStore, StoreUnavailable
from tests.conftest import Service

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(60)]


class HeldWrites:
    """The DynamoDB client, except that message writes wait until `release` is set."""

    def __init__(self, client: Any, table: str) -> None:
        self._client, self._table = client, table
        self.release = asyncio.Event()
        self.held = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def put_item(self, **kw: Any) -> Any:
        if kw["TableName"] == self._table and "void" not in kw["Item"]:
            self.held.set()
            await self.release.wait()
        return await self._client.put_item(**kw)

    async def transact_write_items(self, **kw: Any) -> Any:
        # the store writes a message together with its idempotency record
        if any(a.get("Put", {}).get("TableName") == self._table for a in kw["TransactItems"]):
            self.held.set()
            await self.release.wait()
        return await self._client.transact_write_items(**kw)


@pytest.fixture
async def store(moto_server: Service) -> AsyncIterator[MessageStore]:
    suffix = uuid.uuid4().hex[:6]
    cfg = Config(dynamodb_endpoint=moto_server.url, table_messages=f"m-{suffix}",
                 table_connections=f"c-{suffix}", table_user_counter=f"u-{suffix}")
    s = MessageStore(cfg)
    await s.start()
    await s.init_tables()
    yield s
    await s.close()


async def test_a_fenced_slow_write_is_answered_unavailable_and_retried_under_a_new_seq(
        store: MessageStore) -> None:
    held = HeldWrites(store._client, store.messages)
    store._client = held
    send = asyncio.create_task(store.append(room="r", user_id=1, name="n", text="late",
                                            client_id="c1", color="blue"))
    await asyncio.wait_for(held.held.wait(), 10)
    # a room gave up waiting for seq 1: the fence voids it while the write is in flight
    assert await store.fence("r", 1) is None
    held.release.set()
    with pytest.raises(StoreUnavailable):
        await send  # never a false ack
    retry = await store.append(room="r", user_id=1, name="n", text="late", client_id="c1",
                               color="blue")
    assert retry.seq > 1 and retry.frame is not None and not retry.duplicate
    items = await store.query("r", since=0, limit=10)
    stored = [int(i["seq"]["N"]) for i in items if "void" not in i]
    assert stored == [retry.seq]  # the late write did not land; numbers it burnt are void
    assert {int(i["seq"]["N"]) for i in items} == set(range(1, retry.seq + 1))
    # and the same client_id again is the stored one, never a third copy
    again = await store.append(room="r", user_id=1, name="n", text="late", client_id="c1",
                               color="blue")
    assert again.seq == retry.seq and again.frame is None


async def test_fencing_a_stored_number_returns_its_message(store: MessageStore) -> None:
    sent = await store.append(room="r", user_id=7, name="n", text="hello", client_id="c2",
                              color="green")
    msg = await store.fence("r", sent.seq)
    assert msg is not None and msg["text"] == "hello" and msg["seq"] == sent.seq
    assert await store.fence("r", sent.seq) == msg  # idempotent


async def test_fencing_a_void_number_stays_void(store: MessageStore) -> None:
    assert await store.fence("r", 5) is None
    assert await store.fence("r", 5) is None
