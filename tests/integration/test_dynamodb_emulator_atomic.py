"""The DynamoDB emulator's atomic writes patch (roles/data/files/moto_patches/atomic_writes.py):
each write is applied atomically, as DynamoDB does; moto's threaded server lets concurrent
`ADD 1` on one counter answer the same value (found by the chat's exactly-once tests with the
keep-alive client: 279 acked, 277 stored). With 32 writers per counter plain `moto_server`
repeats values on the first counter already; the emulator must never."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests.conftest import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

THREADS = 32


def client(moto: Service) -> Any:
    return boto3.client("dynamodb", endpoint_url=moto.url, region_name="ap-northeast-2",
                        aws_access_key_id="t", aws_secret_access_key="t",
                        config=BotoConfig(max_pool_connections=THREADS * 2))


@pytest.fixture(scope="module")
def table(moto_server: Service) -> str:
    name = f"atomic-{uuid.uuid4().hex[:8]}"
    c = client(moto_server)
    c.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                   AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                   KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}])
    return name


def test_concurrent_adds_on_one_counter_answer_distinct_values(
        moto_server: Service, table: str) -> None:
    c = client(moto_server)

    def add(key: str) -> int:
        r = c.update_item(TableName=table, Key={"k": {"S": key}},
                          UpdateExpression="ADD n :one",
                          ExpressionAttributeValues={":one": {"N": "1"}},
                          ReturnValues="UPDATED_NEW")
        return int(r["Attributes"]["n"]["N"])

    keys = [f"counter-{i}" for i in range(150)]
    with ThreadPoolExecutor(THREADS) as pool:
        for key in keys:
            values = sorted(pool.map(add, [key] * THREADS))
            assert values == list(range(1, THREADS + 1)), (key, values)
