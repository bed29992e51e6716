"""Connection records in BatchWriteItems, on a real moto server through each DynamoDB client:
concurrent records share calls of at most 25, a lone record goes out at once, records that
trickle in while calls are recent wait to share one, UnprocessedItems are sent again until
written, and a record DynamoDB never takes fails alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat import store as store_module
from chat.store import MessageStore, StoreUnavailable
from tests.conftest import Service
from tests.storestack import make_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Batches:
    """Wraps the client's batch_write_item: records each call's number of requests; with
    `refuse`, the requests whose record it names are answered as UnprocessedItems (as
    DynamoDB does under throttling, which moto never does) instead of being sent."""

    def __init__(self, store: MessageStore) -> None:
        self.original = store.client.batch_write_item
        self.sizes: list[int] = []
        self.refuse: Any = lambda connection_id, call: False
        store.client.batch_write_item = self

    async def __call__(self, **params: Any) -> Any:
        ((table, requests),) = params["RequestItems"].items()
        assert len(requests) <= 25  # BatchWriteItem's limit
        call = len(self.sizes)
        self.sizes.append(len(requests))
        refused = [r for r in requests
                   if self.refuse(r["PutRequest"]["Item"]["connection_id"]["S"], call)]
        sent = [r for r in requests if r not in refused]
        result = await self.original(RequestItems={table: sent}) if sent else {}
        assert not result.get("UnprocessedItems")
        return {"UnprocessedItems": {table: refused} if refused else {}}


def add(store: MessageStore, i: int) -> Any:
    return store.add_connection(user_id=i, room="r", instance="blue-1", color="blue",
                                version="v1")


async def record(store: MessageStore, connection_id: str) -> dict[str, Any] | None:
    r = await store.client.get_item(TableName=store.connections, ConsistentRead=True,
                                    Key={"connection_id": {"S": connection_id}})
    item: dict[str, Any] | None = r.get("Item")
    return item


async def test_concurrent_records_share_batches_of_at_most_25(store: MessageStore) -> None:
    batches = Batches(store)
    ids = await asyncio.gather(*(add(store, i) for i in range(120)))
    assert len(set(ids)) == 120
    assert sum(batches.sizes) == 120 and len(batches.sizes) < 120
    for i, connection_id in enumerate(ids):
        item = await record(store, connection_id)
        assert item is not None and item["user_id"]["N"] == str(i)
        assert item["room"]["S"] == "r" and "ttl" in item
    await store.remove_connection(ids[0])
    assert await record(store, ids[0]) is None


async def test_a_lone_record_goes_out_at_once(store: MessageStore) -> None:
    batches = Batches(store)
    connection_id = await add(store, 1)
    assert batches.sizes == [1] and await record(store, connection_id) is not None


async def test_records_that_trickle_in_share_calls_spaced_by_record_spacing(
        store: MessageStore) -> None:
    batches = Batches(store)
    loop = asyncio.get_running_loop()
    started = loop.time()
    adds = []
    for i in range(30):  # one every 10 ms for 0.3 s: each would otherwise go alone
        adds.append(asyncio.ensure_future(add(store, i)))
        await asyncio.sleep(0.01)
    ids = await asyncio.gather(*adds)
    took = loop.time() - started
    assert batches.sizes[0] == 1  # the first went at once
    assert sum(batches.sizes) == 30 and len(batches.sizes) <= 6  # ~one per RECORD_SPACING
    assert took < 0.3 + 2 * store_module.RECORD_SPACING + 1.0  # none waits much longer
    for connection_id in ids:
        assert await record(store, connection_id) is not None


async def test_unprocessed_records_are_sent_again_until_written(store: MessageStore,
                                                                monkeypatch) -> None:
    monkeypatch.setattr(store_module, "RECORD_BACKOFF", 0.001)
    batches = Batches(store)
    refused: set[str] = set()

    def refuse(connection_id: str, call: int) -> bool:
        if call < 3 and len(refused) < 10:  # throttled: the first calls refuse some
            refused.add(connection_id)
        return call < 3 and connection_id in refused

    batches.refuse = refuse
    ids = await asyncio.gather(*(add(store, i) for i in range(30)))
    assert refused and refused <= set(ids)
    for connection_id in ids:
        assert await record(store, connection_id) is not None
    assert sum(batches.sizes) > 30  # the refused ones were sent again


async def test_a_record_never_processed_fails_alone(store: MessageStore, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "RECORD_BACKOFF", 0.001)
    batches = Batches(store)
    doomed: list[str] = []

    def refuse(connection_id: str, call: int) -> bool:
        if not doomed:
            doomed.append(connection_id)  # the first record DynamoDB sees, forever
        return connection_id == doomed[0]

    batches.refuse = refuse
    got = await asyncio.gather(*(add(store, i) for i in range(5)), return_exceptions=True)
    failed = [g for g in got if isinstance(g, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], StoreUnavailable)
    assert await record(store, doomed[0]) is None
    for connection_id in got:
        if isinstance(connection_id, str):
            assert await record(store, connection_id) is not None
    assert batches.sizes.count(1) >= store_module.RECORD_ATTEMPTS - 1  # resent, then given up


@pytest.mark.parametrize("client", ["ddb", "botocore"])
async def test_close_fails_the_waiting_records_and_leaves_no_task(moto_server: Service,
                                                                  client: str) -> None:
    s = make_store(moto_server, client)
    await s.start()
    await s.init_tables()
    gate = asyncio.Event()  # never opened: the batches hang until close cancels them
    original = s.client.batch_write_item

    async def hang(**params: Any) -> Any:
        await gate.wait()
        return await original(**params)

    s.client.batch_write_item = hang
    records = [asyncio.create_task(add(s, i)) for i in range(200)]  # more than fit in flight
    await asyncio.sleep(0.05)
    assert len(s._record_batches) == store_module.RECORD_BATCHES_MAX and s._records
    await s.close()
    for t in records:
        with pytest.raises(StoreUnavailable):
            await t
    assert not s._record_batches and not s._records
    with pytest.raises(StoreUnavailable):
        await add(s, 0)
