"""MessageStore: the durable side of the chat, DynamoDB through aioboto3.

- Each room's sequence number is an atomic ADD on the `room#<room>` counter in user-counter.
- A message is written together with its idempotency record (connections table, key
  `dedup#<room>#<client_id>`, 10 minutes) in one transaction, so a retried client_id finds
  the seq of the original even after a Redis restart or on another instance.
- A sequence number whose write failed gets a `void` item where possible, so readers skip
  it at once.
"""

from __future__ import annotations

import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aioboto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from .config import Config
from .protocol import message_frame
from .tables import TTL_ATTRIBUTE, init_tables

DEDUP_SECONDS = 600
CONNECTION_TTL_SECONDS = 24 * 3600


class StoreUnavailable(Exception):
    """DynamoDB did not answer or refused; the client may retry with the same client_id."""


@dataclass(frozen=True)
class Appended:
    seq: int
    ts: int
    duplicate: bool
    frame: dict[str, Any] | None  # the message frame; None for a duplicate


def _now_ms() -> int:
    return int(time.time() * 1000)


def item_to_message(item: dict[str, Any]) -> dict[str, Any] | None:
    """A messages item as the wire's message frame; None for a void (skipped) number."""
    if "void" in item:
        return None
    return message_frame(room=item["room"]["S"], seq=int(item["seq"]["N"]),
                         user_id=int(item["user_id"]["N"]), name=item["name"]["S"],
                         text=item["text"]["S"], ts=int(item["ts"]["N"]),
                         color=item["color"]["S"])


class MessageStore:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._stack = AsyncExitStack()
        self._client: Any = None
        self.messages = config.table_messages
        self.connections = config.table_connections
        self.counters = config.table_user_counter

    async def start(self) -> None:
        session = aioboto3.Session()
        boto_config = BotoConfig(connect_timeout=2, read_timeout=5,
                                 retries={"max_attempts": 2, "mode": "standard"},
                                 max_pool_connections=50)
        self._client = await self._stack.enter_async_context(session.client(
            "dynamodb", region_name=self.config.aws_region,
            endpoint_url=self.config.dynamodb_endpoint, config=boto_config))

    async def close(self) -> None:
        await self._stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("MessageStore.start() was not awaited")
        return self._client

    async def init_tables(self) -> list[str]:
        return await init_tables(self.config, self.client)

    async def _call(self, op: str, **kwargs: Any) -> Any:
        try:
            return await getattr(self.client, op)(**kwargs)
        except (TimeoutError, BotoCoreError, ClientError, OSError) as e:
            raise StoreUnavailable(f"{op}: {e}") from e

    async def ping(self) -> None:
        """Raise StoreUnavailable unless DynamoDB answers a cheap read."""
        await self._call("get_item", TableName=self.counters, Key={"name": {"S": "user"}})

    async def _add(self, counter: str) -> int:
        r = await self._call(
            "update_item", TableName=self.counters, Key={"name": {"S": counter}},
            UpdateExpression="ADD #n :one", ExpressionAttributeNames={"#n": "n"},
            ExpressionAttributeValues={":one": {"N": "1"}}, ReturnValues="UPDATED_NEW")
        return int(r["Attributes"]["n"]["N"])

    async def next_user_id(self) -> int:
        return await self._add("user")

    async def latest_seq(self, room: str) -> int:
        """The last sequence number assigned in the room (0 for a new room)."""
        r = await self._call("get_item", TableName=self.counters,
                             Key={"name": {"S": f"room#{room}"}}, ConsistentRead=True)
        item = r.get("Item")
        return int(item["n"]["N"]) if item else 0

    async def _dedup_seq(self, room: str, client_id: str) -> int | None:
        r = await self._call("get_item", TableName=self.connections,
                             Key={"connection_id": {"S": f"dedup#{room}#{client_id}"}},
                             ConsistentRead=True)
        item = r.get("Item")
        if item and int(item["expires_at"]["N"]) > int(time.time()):
            return int(item["seq"]["N"])
        return None

    async def append(self, *, room: str, user_id: int, name: str, text: str, client_id: str,
                     color: str) -> Appended:
        """Store a message under the room's next seq, or find the seq of its first send."""
        seq = await self._dedup_seq(room, client_id)
        if seq is not None:
            return Appended(seq, 0, True, None)
        seq = await self._add(f"room#{room}")
        ts = _now_ms()
        now = int(time.time())
        frame = message_frame(room=room, seq=seq, user_id=user_id, name=name, text=text, ts=ts,
                              color=color)
        try:
            await self.client.transact_write_items(TransactItems=[
                {"Put": {"TableName": self.messages, "Item": {
                    "room": {"S": room}, "seq": {"N": str(seq)}, "user_id": {"N": str(user_id)},
                    "name": {"S": name}, "text": {"S": text}, "ts": {"N": str(ts)},
                    "color": {"S": color}, "client_id": {"S": client_id}},
                    "ConditionExpression": "attribute_not_exists(seq)"}},
                {"Put": {"TableName": self.connections, "Item": {
                    "connection_id": {"S": f"dedup#{room}#{client_id}"},
                    "seq": {"N": str(seq)}, "expires_at": {"N": str(now + DEDUP_SECONDS)},
                    TTL_ATTRIBUTE: {"N": str(now + DEDUP_SECONDS + 60)}},
                    "ConditionExpression": "attribute_not_exists(connection_id) OR "
                                           "expires_at < :now",
                    "ExpressionAttributeValues": {":now": {"N": str(now)}}}},
            ])
        except ClientError as e:
            await self._void(room, seq)
            if e.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                # The same client_id won a race on another connection: report its seq.
                first = await self._dedup_seq(room, client_id)
                if first is not None:
                    return Appended(first, 0, True, None)
            raise StoreUnavailable(f"transact_write_items: {e}") from e
        except (TimeoutError, BotoCoreError, OSError) as e:
            await self._void(room, seq)
            raise StoreUnavailable(f"transact_write_items: {e}") from e
        return Appended(seq, ts, False, frame)

    async def _void(self, room: str, seq: int) -> None:
        """Mark a number whose message will never exist (best effort)."""
        try:
            await self.client.put_item(
                TableName=self.messages,
                Item={"room": {"S": room}, "seq": {"N": str(seq)}, "void": {"BOOL": True},
                      "ts": {"N": str(_now_ms())}},
                ConditionExpression="attribute_not_exists(seq)")
        except (TimeoutError, BotoCoreError, ClientError, OSError):
            pass

    async def query(self, room: str, *, since: int | None, limit: int) -> list[dict[str, Any]]:
        """Raw items (voids included): the first `limit` after `since`, else the latest."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.messages, "ConsistentRead": True,
            "KeyConditionExpression": "room = :r AND seq > :s",
            "ExpressionAttributeValues": {":r": {"S": room},
                                          ":s": {"N": str(since if since is not None else 0)}},
            "ScanIndexForward": since is not None,
        }
        while len(items) < limit:
            r = await self._call("query", Limit=limit - len(items), **kwargs)
            items.extend(r.get("Items", []))
            if "LastEvaluatedKey" not in r:
                break
            kwargs["ExclusiveStartKey"] = r["LastEvaluatedKey"]
        items.sort(key=lambda it: int(it["seq"]["N"]))
        return items

    async def range(self, room: str, first: int, last: int) -> dict[int, dict[str, Any] | None]:
        """Items with first <= seq <= last that exist: seq -> message frame (None: void)."""
        found: dict[int, dict[str, Any] | None] = {}
        if last < first:
            return found
        kwargs: dict[str, Any] = {
            "TableName": self.messages, "ConsistentRead": True,
            "KeyConditionExpression": "room = :r AND seq BETWEEN :a AND :b",
            "ExpressionAttributeValues": {":r": {"S": room}, ":a": {"N": str(first)},
                                          ":b": {"N": str(last)}},
        }
        while True:
            r = await self._call("query", **kwargs)
            for it in r.get("Items", []):
                found[int(it["seq"]["N"])] = item_to_message(it)
            if "LastEvaluatedKey" not in r:
                return found
            kwargs["ExclusiveStartKey"] = r["LastEvaluatedKey"]

    async def add_connection(self, *, user_id: int, room: str, instance: str, color: str,
                             version: str) -> str:
        connection_id = uuid.uuid4().hex
        now = int(time.time())
        await self._call("put_item", TableName=self.connections, Item={
            "connection_id": {"S": connection_id}, "user_id": {"N": str(user_id)},
            "room": {"S": room}, "instance": {"S": instance}, "color": {"S": color},
            "version": {"S": version}, "connected_at": {"N": str(_now_ms())},
            TTL_ATTRIBUTE: {"N": str(now + CONNECTION_TTL_SECONDS)}})
        return connection_id

    async def remove_connection(self, connection_id: str) -> None:
        await self._call("delete_item", TableName=self.connections,
                         Key={"connection_id": {"S": connection_id}})
