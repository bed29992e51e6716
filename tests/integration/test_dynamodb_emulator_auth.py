"""The emulator with EMULATOR_ACCESS_KEY_ID / EMULATOR_SECRET_ACCESS_KEY set (the local stack's
way; roles/data/files/moto_patches/sigv4_key.py): only requests signed with that key reach moto.
A client with the key works (botocore's own SigV4 signing); another key id, the right key id
with a wrong secret, a tampered body, an unsigned request and moto's own API are refused."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import REPO, VENV_BIN, free_port, stop_process, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY_ID, SECRET = "AKIATESTSTACKKEY0001", "s3cr3t-of-the-stack-0123456789abcdefghij"
TABLE = {"TableName": "m", "BillingMode": "PAY_PER_REQUEST",
         "AttributeDefinitions": [{"AttributeName": "room", "AttributeType": "S"}],
         "KeySchema": [{"AttributeName": "room", "KeyType": "HASH"}]}


@pytest.fixture(scope="module")
def emulator() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "python"), str(REPO / "roles" / "data" / "files" / "dynamodb_emulator.py"),
         "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "EMULATOR_ACCESS_KEY_ID": KEY_ID, "EMULATOR_SECRET_ACCESS_KEY": SECRET})
    try:
        wait_for_port(port)
        yield port
    finally:
        stop_process(proc)


def client(port: int, key_id: str, secret: str) -> Any:
    return boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{port}",
                        region_name="ap-northeast-2", aws_access_key_id=key_id,
                        aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1}))


def raw(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        content = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(content)
    except ValueError:
        return resp.status, content


def signed_headers(port: int, body: bytes, action: str) -> dict[str, str]:
    req = AWSRequest(method="POST", url=f"http://127.0.0.1:{port}/", data=body,
                     headers={"X-Amz-Target": f"DynamoDB_20120810.{action}",
                              "Content-Type": "application/x-amz-json-1.0"})
    SigV4Auth(Credentials(KEY_ID, SECRET), "dynamodb", "ap-northeast-2").add_auth(req)
    return dict(req.headers.items())


def test_the_stack_key_reads_and_writes(emulator: int) -> None:
    ddb = client(emulator, KEY_ID, SECRET)
    ddb.create_table(**TABLE)
    ddb.put_item(TableName="m", Item={"room": {"S": "r"}, "text": {"S": "hello"}})
    got = ddb.get_item(TableName="m", Key={"room": {"S": "r"}}, ConsistentRead=True)
    assert got["Item"]["text"] == {"S": "hello"}


@pytest.mark.parametrize(("key_id", "secret", "code"), [
    ("AKIAOTHERLOCALUSER01", SECRET, "UnrecognizedClientException"),
    ("local", "local", "UnrecognizedClientException"),
    (KEY_ID, "not-the-secret", "InvalidSignatureException"),
])
def test_another_key_or_secret_is_refused(emulator: int, key_id: str, secret: str,
                                          code: str) -> None:
    with pytest.raises(ClientError) as e:
        client(emulator, key_id, secret).put_item(
            TableName="m", Item={"room": {"S": "forged"}, "text": {"S": "x"}})
    assert e.value.response["Error"]["Code"] == code
    got = client(emulator, KEY_ID, SECRET).get_item(TableName="m", Key={"room": {"S": "forged"}})
    assert "Item" not in got


def test_a_body_changed_after_signing_is_refused(emulator: int) -> None:
    body = json.dumps({"TableName": "m", "Item": {"room": {"S": "a"}}}).encode()
    headers = signed_headers(emulator, body, "PutItem")
    forged = json.dumps({"TableName": "m", "Item": {"room": {"S": "b"}}}).encode()
    status, doc = raw(emulator, "/", forged, headers)
    assert status == 400 and doc["__type"].endswith("#InvalidSignatureException"), doc
    status, doc = raw(emulator, "/", body, headers)  # the signed one passes
    assert status == 200, doc


def test_a_stale_signature_is_refused(emulator: int) -> None:
    body = json.dumps({"TableName": "m", "Key": {"room": {"S": "r"}}}).encode()
    headers = signed_headers(emulator, body, "GetItem")
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    headers["X-Amz-Date"] = old.strftime("%Y%m%dT%H%M%SZ")
    status, doc = raw(emulator, "/", body, headers)
    assert status == 400 and doc["__type"].endswith("#InvalidSignatureException"), doc


def test_unsigned_requests_and_the_moto_api_are_refused(emulator: int) -> None:
    body = json.dumps({"TableName": "m", "Item": {"room": {"S": "u"}}}).encode()
    status, doc = raw(emulator, "/", body, {"X-Amz-Target": "DynamoDB_20120810.PutItem",
                                            "Content-Type": "application/x-amz-json-1.0"})
    assert status == 400 and doc["__type"].endswith("#MissingAuthenticationTokenException")
    status, doc = raw(emulator, "/moto-api/reset", b"", {})
    assert status == 403 and doc["__type"].endswith("#AccessDeniedException")
    got = client(emulator, KEY_ID, SECRET).get_item(TableName="m", Key={"room": {"S": "r"}})
    assert "Item" in got  # the reset did not happen
