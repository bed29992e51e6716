"""The emulator's fast path (roles/data/files/moto_patches/fast_path.py) hands a DynamoDB call
to moto's DynamoHandler without werkzeug, Flask and moto's dispatcher: its answers must be
the ones the full path gives (EMULATOR_FAST_PATH=0), successes and errors alike."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Service, start_moto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AUTH = ("AWS4-HMAC-SHA256 Credential=t/20261128/ap-northeast-2/dynamodb/aws4_request, "
        "SignedHeaders=host;x-amz-date;x-amz-target, Signature=00")
VOLATILE = {"date", "x-amzn-requestid", "x-amz-crc32", "content-length", "server",
            "connection", "keep-alive"}

CALLS: list[tuple[str, Any]] = [
    ("CreateTable", {"TableName": "m", "BillingMode": "PAY_PER_REQUEST",
                     "AttributeDefinitions": [{"AttributeName": "room", "AttributeType": "S"},
                                              {"AttributeName": "seq", "AttributeType": "N"}],
                     "KeySchema": [{"AttributeName": "room", "KeyType": "HASH"},
                                   {"AttributeName": "seq", "KeyType": "RANGE"}]}),
    *[("PutItem", {"TableName": "m", "Item": {"room": {"S": "r"}, "seq": {"N": str(i)},
                                              "text": {"S": f"hé {i}"}},
                   "ConditionExpression": "attribute_not_exists(#s)",
                   "ExpressionAttributeNames": {"#s": "seq"}}) for i in (1, 2, 3)],
    ("PutItem", {"TableName": "m", "Item": {"room": {"S": "r"}, "seq": {"N": "2"}},
                 "ConditionExpression": "attribute_not_exists(#s)",
                 "ExpressionAttributeNames": {"#s": "seq"}}),  # fails its condition
    ("UpdateItem", {"TableName": "m", "Key": {"room": {"S": "c"}, "seq": {"N": "0"}},
                    "UpdateExpression": "ADD n :one",
                    "ExpressionAttributeValues": {":one": {"N": "5"}},
                    "ReturnValues": "UPDATED_NEW"}),
    ("Query", {"TableName": "m", "KeyConditionExpression": "room = :r AND seq > :s",
               "ExpressionAttributeValues": {":r": {"S": "r"}, ":s": {"N": "1"}},
               "ScanIndexForward": False, "Limit": 1}),
    ("GetItem", {"TableName": "m", "Key": {"room": {"S": "r"}, "seq": {"N": "3"}},
                 "ConsistentRead": True}),
    ("GetItem", {"TableName": "nope", "Key": {"room": {"S": "r"}}}),
    ("DeleteItem", {"TableName": "m", "Key": {"room": {"S": "r"}, "seq": {"N": "1"}},
                    "ReturnValues": "ALL_OLD"}),
    ("PutItem", {"TableName": "m"}),  # no Item
    ("NoSuchAction", {}),
    ("PutItem", b"{not json"),
]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Service, Service]]:
    fast, full = start_moto(), start_moto(env={"EMULATOR_FAST_PATH": "0"})
    yield fast, full
    fast.stop()
    full.stop()


def call(conn: http.client.HTTPConnection, action: str,
         body: Any) -> tuple[int, dict[str, str], bytes, bool]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", "/", body=data, headers={
        "X-Amz-Target": f"DynamoDB_20120810.{action}", "Authorization": AUTH,
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Date": "20261128T000000Z"})
    resp = conn.getresponse()
    content = resp.read()
    if resp.will_close:
        conn.close()  # the next request opens a new connection
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, content, resp.will_close


def comparable(content: bytes) -> Any:
    try:
        doc = json.loads(content)
    except ValueError:
        return content
    if isinstance(doc, dict) and "TableDescription" in doc:
        doc["TableDescription"].pop("CreationDateTime", None)
    return doc


def test_the_fast_path_answers_every_call_as_the_full_path_does(servers):
    fast, full = (http.client.HTTPConnection("127.0.0.1", s.port, timeout=10) for s in servers)
    statuses = []
    for action, body in CALLS:
        a, b = call(fast, action, body), call(full, action, body)
        assert a[0] == b[0], (action, a, b)
        assert comparable(a[2]) == comparable(b[2]), (action, a[2], b[2])
        assert {k: v for k, v in a[1].items() if k not in VOLATILE} == \
            {k: v for k, v in b[1].items() if k not in VOLATILE}, action
        assert ("x-amz-crc32" in a[1]) == ("x-amz-crc32" in b[1]), action
        statuses.append(a[0])
    # successes, DynamoDB's errors, and moto's own failures (no Item, unknown action, bad JSON)
    assert statuses == [200, 200, 200, 200, 400, 200, 200, 200, 400, 200, 500, 500, 500]
