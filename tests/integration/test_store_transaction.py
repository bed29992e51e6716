"""A send's idempotency record and message in one TransactWriteItems (chat/store.py
`MessageStore._commit`), on the emulator through both DynamoDB clients: which condition
cancelled the transaction decides the answer, and records written by the version before the
transaction (a record without its message) are still honoured during a rolling canary.

moto never raises TransactionConflict (the emulator serialises writes under one lock,
docs/aws.md): that case is injected at the client boundary, as DynamoDB's error body."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chat.store import STALE_CLAIM_MS, MessageStore, StoreUnavailable
from tests.storestack import claim_alone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Recorded:
    """The store's client, recording each TransactWriteItems' CancellationReasons codes
    (None for a committed one); `before` runs before a transaction goes out."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.outcomes: list[list[str] | None] = []
        self.before: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def transact_write_items(self, **kw: Any) -> Any:
        if self.before is not None:
            await self.before(kw)
        try:
            r = await self._client.transact_write_items(**kw)
        except ClientError as e:
            self.outcomes.append([r["Code"] for r in e.response.get("CancellationReasons", [])])
            raise
        self.outcomes.append(None)
        return r


def recorded(store: MessageStore) -> Recorded:
    client = Recorded(store._client)
    store._client = client
    return client


def message_seq(kw: dict[str, Any]) -> int:
    return int(kw["TransactItems"][1]["Put"]["Item"]["seq"]["N"])


async def items(store: MessageStore, room: str) -> dict[int, str | None]:
    """seq -> the client_id of its message, None for a void number."""
    return {int(i["seq"]["N"]): None if "void" in i else i["client_id"]["S"]
            for i in await store.query(room, since=0, limit=100)}


async def test_a_send_is_one_transaction_of_its_record_and_message(
        store: MessageStore) -> None:
    client = recorded(store)
    sent = await store.append(room="t", user_id=1, name="n", text="hi", client_id="a",
                              color="blue")
    assert not sent.duplicate and sent.frame is not None and sent.frame["text"] == "hi"
    assert client.outcomes == [None]
    assert await items(store, "t") == {sent.seq: "a"}
    held = await store._dedup("t", "a")
    assert held is not None and held[0] == sent.seq


async def test_a_duplicate_cancelled_by_the_record_returns_the_first_seq_and_voids_the_new(
        store: MessageStore) -> None:
    first = await store.append(room="d", user_id=1, name="n", text="x", client_id="same",
                               color="blue")
    client = recorded(store)
    again = await store.append(room="d", user_id=1, name="n", text="x", client_id="same",
                               color="blue")
    assert again.duplicate and again.seq == first.seq and again.frame is None
    # cancelled by the record's condition alone: the message's number was free
    assert client.outcomes == [["ConditionalCheckFailed", "None"]]
    assert await items(store, "d") == {first.seq: "same", first.seq + 1: None}


async def test_a_fenced_number_cancels_the_transaction_and_the_send_is_unavailable(
        store: MessageStore) -> None:
    client = recorded(store)

    async def fence_first(kw: dict[str, Any]) -> None:
        client.before = None
        # a room gave up waiting for this number before the transaction reached DynamoDB
        assert await store.fence("f", message_seq(kw)) is None

    client.before = fence_first
    with pytest.raises(StoreUnavailable):
        await store.append(room="f", user_id=1, name="n", text="late", client_id="c",
                           color="blue")
    assert client.outcomes == [["None", "ConditionalCheckFailed"]]
    assert await store._dedup("f", "c") is None  # no record without its message
    retry = await store.append(room="f", user_id=1, name="n", text="late", client_id="c",
                               color="blue")
    assert not retry.duplicate and retry.seq == 2 and retry.frame is not None
    assert await items(store, "f") == {1: None, 2: "c"}


async def test_a_transaction_conflict_voids_the_number_and_retries_with_a_new_one(
        store: MessageStore) -> None:
    client = recorded(store)
    conflicts = 0

    async def conflict_once(kw: dict[str, Any]) -> None:
        nonlocal conflicts
        client.before = None
        conflicts += 1
        # DynamoDB's answer when another request was writing the message's item meanwhile
        raise ClientError({
            "Error": {"Code": "TransactionCanceledException",
                      "Message": "Transaction cancelled, please refer cancellation reasons "
                                 "for specific reasons [None, TransactionConflict]"},
            "CancellationReasons": [{"Code": "None"},
                                    {"Code": "TransactionConflict",
                                     "Message": "Transaction is ongoing for the item"}]},
            "TransactWriteItems")

    client.before = conflict_once
    sent = await store.append(room="k", user_id=1, name="n", text="x", client_id="c",
                              color="blue")
    assert conflicts == 1
    assert not sent.duplicate and sent.seq == 2 and sent.frame is not None
    assert await items(store, "k") == {1: None, 2: "c"}


async def test_a_record_without_its_message_is_waited_for_while_its_write_may_land(
        store: MessageStore) -> None:
    # an older version's send: the record first, the message a moment later
    seq = await store._add("room#o")
    assert await claim_alone(store, "o", "old", seq)
    resend = asyncio.create_task(store.append(room="o", user_id=1, name="n", text="x",
                                              client_id="old", color="green"))
    await asyncio.sleep(0.3)
    assert not resend.done()
    await store.client.put_item(
        TableName=store.messages,
        Item={"room": {"S": "o"}, "seq": {"N": str(seq)}, "user_id": {"N": "1"},
              "name": {"S": "n"}, "text": {"S": "x"}, "ts": {"N": "1"},
              "color": {"S": "blue"}, "client_id": {"S": "old"}},
        ConditionExpression="attribute_not_exists(seq)")
    result = await asyncio.wait_for(resend, 10)
    assert result.duplicate and result.seq == seq
    assert await items(store, "o") == {seq: "old", seq + 1: None}


async def test_a_stale_record_without_its_message_is_fenced_and_taken_over(
        store: MessageStore) -> None:
    # an older version's send whose message write never landed (the instance died)
    seq = await store._add("room#s")
    claim = store._claim_put("s", "lost", seq, None)
    claim["Item"]["claimed_at"] = {"N": str(int(time.time() * 1000) - STALE_CLAIM_MS - 1000)}
    await store.client.put_item(**claim)
    client = recorded(store)
    taken = await store.append(room="s", user_id=1, name="n", text="x", client_id="lost",
                               color="blue")
    assert not taken.duplicate and taken.seq > seq and taken.frame is not None
    # the first try found the live record; the takeover (`seq = :old`) committed
    assert client.outcomes == [["ConditionalCheckFailed", "None"], None]
    assert await items(store, "s") == {seq: None, seq + 1: None, taken.seq: "lost"}
    again = await store.append(room="s", user_id=1, name="n", text="x", client_id="lost",
                               color="blue")
    assert again.duplicate and again.seq == taken.seq
