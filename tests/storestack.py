"""A MessageStore on fresh tables of the emulator, for the store's integration tests.

`store` (exported by tests/integration/conftest.py) runs each test on both DynamoDB clients:
chat/ddb.py and aioboto3 (CHAT_DYNAMODB_CLIENT). A test file with its own `store` fixture
overrides it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from botocore.exceptions import ClientError

from chat.config import Config
from chat.store import MessageStore
from tests.conftest import Service


def make_store(moto_server: Service, client: str, seq_batch: int = 50) -> MessageStore:
    suffix = uuid.uuid4().hex[:6]
    return MessageStore(Config(
        dynamodb_endpoint=moto_server.url, table_messages=f"m-{suffix}",
        table_connections=f"c-{suffix}", table_user_counter=f"u-{suffix}",
        dynamodb_client=client, seq_batch=seq_batch))


@pytest.fixture(params=["ddb", "botocore"])
async def store(request: pytest.FixtureRequest, moto_server: Service
                ) -> AsyncIterator[MessageStore]:
    s = make_store(moto_server, request.param)
    await s.start()
    await s.init_tables()
    yield s
    await s.close()


async def claim_alone(store: MessageStore, room: str, client_id: str, seq: int,
                      replaces: int | None = None) -> bool:
    """The idempotency record pointing `client_id` at `seq`, written alone (a PutItem with
    the store's own conditions): what a send of the version before the transactional write
    leaves behind while its message write is in flight, or after it failed. False when a
    live record points elsewhere."""
    try:
        await store.client.put_item(**store._claim_put(room, client_id, seq, replaces))
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise
    return True
