"""chat/ddb.py: SigV4 against botocore and AWS's published vector, the wire format, error
mapping and retries against a tiny aiohttp server on a free 127.0.0.1 port."""

from __future__ import annotations

import asyncio
import datetime
import json
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import botocore.auth
import pytest
from aiobotocore.credentials import AioRefreshableCredentials
from aiohttp import web
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from chat.ddb import (
    ChecksumMismatch,
    DynamoDB,
    SigV4Signer,
    StaticCredentials,
    parse_error,
)
from tests.conftest import free_port

REGION = "ap-northeast-2"


def botocore_authorization(*, url: str, headers: dict[str, str], body: bytes, key: str,
                           secret: str, token: str | None, when: datetime.datetime,
                           monkeypatch: pytest.MonkeyPatch, region: str = REGION,
                           service: str = "dynamodb") -> str:
    """What botocore's SigV4Auth puts in Authorization for this request at `when`."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    request = AWSRequest(method="POST", url=url, headers=dict(headers), data=body)
    botocore.auth.SigV4Auth(Credentials(key, secret, token), service, region).add_auth(request)
    return str(request.headers["Authorization"])


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEBYaDH+session/token=="])
def test_signature_matches_botocore_sigv4auth(token: str | None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    when = datetime.datetime(2026, 11, 28, 0, 30, 5, tzinfo=datetime.UTC)
    amz_date = "20261128T003005Z"
    body = json.dumps({"TableName": "messages", "Key": {"room": {"S": "lobby"}}}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.0",
               "X-Amz-Target": "DynamoDB_20120810.GetItem",
               "Host": "dynamodb.ap-northeast-2.amazonaws.com"}
    expected = botocore_authorization(
        url="https://dynamodb.ap-northeast-2.amazonaws.com/", headers=headers, body=body,
        key="AKIDEXAMPLE", secret="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token=token,
        when=when, monkeypatch=monkeypatch)
    ours = dict(headers, **{"X-Amz-Date": amz_date})
    if token:
        ours["X-Amz-Security-Token"] = token
    got = SigV4Signer(REGION).authorization(
        method="POST", path="/", query="", headers=ours, payload=body, amz_date=amz_date,
        access_key="AKIDEXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    assert got == expected
    assert ("x-amz-security-token" in got) == bool(token)


def test_signature_matches_aws_published_vector_post_vanilla() -> None:
    # AWS SigV4 test suite, "post-vanilla": POST / to example.amazonaws.com, no body
    got = SigV4Signer("us-east-1", "service").authorization(
        method="POST", path="/", query="",
        headers={"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"},
        payload=b"", amz_date="20150830T123600Z", access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    assert got == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")


def test_error_answer_parsed_like_botocore() -> None:
    body = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#"
                                 "ConditionalCheckFailedException",
                       "message": "The conditional request failed"}).encode()
    err = parse_error(400, body, {"x-amzn-RequestId": "R1"})
    assert err["Error"] == {"Code": "ConditionalCheckFailedException",
                            "Message": "The conditional request failed"}
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err["ResponseMetadata"]["RequestId"] == "R1"
    # a body that is not JSON: the status is the code, as botocore does
    assert parse_error(502, b"<html>bad gateway</html>", {})["Error"] == {
        "Code": "502", "Message": "Bad Gateway"}


# --- a tiny DynamoDB stand-in -----------------------------------------------------------

Answer = tuple[int, dict[str, Any] | bytes | None, dict[str, str]]


@dataclass
class Fake:
    """Answers each request with the next scripted answer (the last one repeats)."""

    url: str
    answers: list[Answer | str] = field(default_factory=list)
    seen: list[tuple[dict[str, str], bytes, Any]] = field(default_factory=list)

    def script(self, *answers: Answer | str) -> None:
        self.answers = list(answers)


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    port = free_port()
    state = Fake(url=f"http://127.0.0.1:{port}")

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state.seen.append((dict(request.headers), body, peer))
        answer = state.answers.pop(0) if len(state.answers) > 1 else state.answers[0]
        if answer == "reset":  # drop the connection without an answer
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(1)
            return web.Response(status=500)
        if answer == "hang":
            await asyncio.sleep(1.5)
            answer = (200, {}, {})
        assert not isinstance(answer, str)
        status, doc, headers = answer
        raw = doc if isinstance(doc, bytes) else json.dumps(doc or {}).encode()
        return web.Response(status=status, body=raw,
                            headers={"Content-Type": "application/x-amz-json-1.0",
                                     "x-amz-crc32": str(zlib.crc32(raw)), **headers})

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state
    await runner.cleanup()


def client(url: str, **kw: Any) -> DynamoDB:
    kw.setdefault("credentials", StaticCredentials("AKIDTEST", "secret"))
    kw.setdefault("backoff_base", 0.001)
    return DynamoDB(endpoint_url=url, region=REGION, **kw)


def err(code: str) -> dict[str, Any]:
    return {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": code}


async def test_request_wire_format_and_signature_verifies(
        fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.script((200, {"Attributes": {"n": {"N": "7"}}}, {}))
    params: dict[str, Any] = {
        "TableName": "user-counter", "Key": {"name": {"S": "room#é"}},
        "UpdateExpression": "ADD #n :one", "ExpressionAttributeNames": {"#n": "n"},
        "ExpressionAttributeValues": {":one": {"N": "1"}}, "ReturnValues": "UPDATED_NEW"}
    async with client(fake.url, credentials=StaticCredentials("AKIDTEST", "secret",
                                                              "tok")) as ddb:
        assert await ddb.update_item(**params) == {"Attributes": {"n": {"N": "7"}}}
    headers, body, _ = fake.seen[0]
    assert headers["Content-Type"] == "application/x-amz-json-1.0"
    assert headers["X-Amz-Target"] == "DynamoDB_20120810.UpdateItem"
    assert headers["X-Amz-Security-Token"] == "tok"
    assert json.loads(body) == params
    # botocore, given the headers we signed and our timestamp, signs the same
    signed = ("Content-Type", "Host", "X-Amz-Date", "X-Amz-Target", "X-Amz-Security-Token")
    when = datetime.datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.UTC)
    expected = botocore_authorization(
        url=fake.url + "/", headers={k: headers[k] for k in signed if k != "X-Amz-Security-Token"},
        body=body, key="AKIDTEST", secret="secret", token="tok", when=when,
        monkeypatch=monkeypatch)
    assert headers["Authorization"] == expected


@pytest.mark.parametrize("op,method", [("GetItem", "get_item"), ("PutItem", "put_item"),
                                       ("Query", "query"), ("DeleteItem", "delete_item")])
async def test_each_operation_names_its_target(fake: Fake, op: str, method: str) -> None:
    fake.script((200, {}, {}))
    async with client(fake.url) as ddb:
        await getattr(ddb, method)(TableName="t")
    assert fake.seen[0][0]["X-Amz-Target"] == f"DynamoDB_20120810.{op}"


async def test_conditional_check_failure_is_a_client_error_and_not_retried(fake: Fake) -> None:
    fake.script((400, err("ConditionalCheckFailedException"), {}))
    async with client(fake.url, max_attempts=3) as ddb:
        with pytest.raises(ClientError) as e:
            await ddb.put_item(TableName="t", Item={}, ConditionExpression="x")
    assert e.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert e.value.operation_name == "PutItem"
    assert len(fake.seen) == 1


@pytest.mark.parametrize("first", [(500, err("InternalServerError"), {}),
                                   (400, err("ThrottlingException"), {}),
                                   (400, err("ProvisionedThroughputExceededException"), {}),
                                   (503, b"", {}), "reset"])
async def test_transient_failures_are_retried(fake: Fake, first: Answer | str) -> None:
    fake.script(first, (200, {"Item": {"n": {"N": "1"}}}, {}))
    async with client(fake.url, max_attempts=2) as ddb:
        assert await ddb.get_item(TableName="t", Key={}) == {"Item": {"n": {"N": "1"}}}
        assert ddb.retries == 1
    assert len(fake.seen) == 2


async def test_retries_are_bounded(fake: Fake) -> None:
    fake.script((500, err("InternalServerError"), {}))
    async with client(fake.url, max_attempts=3) as ddb:
        with pytest.raises(ClientError) as e:
            await ddb.get_item(TableName="t", Key={})
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert e.value.response["ResponseMetadata"]["RetryAttempts"] == 2
    assert len(fake.seen) == 3


async def test_a_validation_error_is_not_retried(fake: Fake) -> None:
    fake.script((400, err("ValidationException"), {}))
    async with client(fake.url, max_attempts=3) as ddb:
        with pytest.raises(ClientError):
            await ddb.query(TableName="t")
    assert len(fake.seen) == 1


async def test_a_reset_connection_every_time_is_a_botocore_connection_error(fake: Fake) -> None:
    fake.script("reset")
    async with client(fake.url, max_attempts=2) as ddb:
        with pytest.raises(ConnectionClosedError):
            await ddb.get_item(TableName="t", Key={})
    assert len(fake.seen) == 2


async def test_a_checksum_mismatch_is_retried_then_raised(fake: Fake) -> None:
    fake.script((200, {"Item": {}}, {"x-amz-crc32": "12345"}))
    async with client(fake.url, max_attempts=2) as ddb:
        with pytest.raises(ChecksumMismatch):
            await ddb.get_item(TableName="t", Key={})
    assert len(fake.seen) == 2


async def test_a_read_slower_than_read_timeout_is_a_read_timeout(fake: Fake) -> None:
    fake.script("hang")
    async with client(fake.url, read_timeout=0.2, max_attempts=1) as ddb:
        with pytest.raises(ReadTimeoutError):
            await ddb.get_item(TableName="t", Key={})


async def test_nothing_listening_is_an_endpoint_connection_error() -> None:
    async with client(f"http://127.0.0.1:{free_port()}", max_attempts=2) as ddb:
        with pytest.raises(EndpointConnectionError) as e:
            await ddb.get_item(TableName="t", Key={})
        assert isinstance(e.value, BotoCoreError)
        assert ddb.calls == 2


async def test_a_call_after_close_is_a_botocore_connection_error(fake: Fake) -> None:
    # connection cleanups still running while the server stops would raise aiohttp's
    # RuntimeError('Session is closed'), which the store does not take for "unavailable"
    c = client(fake.url)
    await c.start()
    await c.close()
    with pytest.raises(EndpointConnectionError):
        await c.get_item(TableName="t", Key={"k": {"S": "x"}})


async def test_calls_reuse_one_keep_alive_connection(fake: Fake) -> None:
    fake.script((200, {}, {}))
    async with client(fake.url) as ddb:
        for _ in range(5):
            await ddb.get_item(TableName="t", Key={})
    assert len(fake.seen) == 5
    assert len({peer for _, _, peer in fake.seen}) == 1


async def test_refreshable_credentials_are_refreshed_before_they_expire(fake: Fake) -> None:
    fake.script((200, {}, {}))
    now = datetime.datetime.now(datetime.UTC)
    # every set expires within botocore's mandatory refresh window (10 min): each call
    # must refresh first, and sign with what the refresh returned
    expiring = (now + datetime.timedelta(minutes=5)).isoformat()
    refreshed: list[int] = []

    async def refresh() -> dict[str, str]:
        refreshed.append(1)
        n = len(refreshed)
        return {"access_key": f"AKIDNEW{n}", "secret_key": f"s{n}", "token": f"t{n}",
                "expiry_time": expiring}

    creds = AioRefreshableCredentials.create_from_metadata(
        {"access_key": "AKIDOLD", "secret_key": "s0", "token": "t0", "expiry_time": expiring},
        refresh_using=refresh, method="test")
    async with client(fake.url, credentials=creds) as ddb:
        await ddb.get_item(TableName="t", Key={})
        await ddb.get_item(TableName="t", Key={})
    assert len(refreshed) == 2
    for n, (headers, _, _) in enumerate(fake.seen, start=1):
        assert f"Credential=AKIDNEW{n}/" in headers["Authorization"]
        assert headers["X-Amz-Security-Token"] == f"t{n}"


async def test_no_credentials_is_a_botocore_error(fake: Fake) -> None:
    fake.script((200, {}, {}))
    async with client(fake.url, credentials=None) as ddb:
        with pytest.raises(BotoCoreError):
            await ddb.get_item(TableName="t", Key={})
    assert fake.seen == []


def test_endpoint_must_be_http() -> None:
    bad: Callable[[], DynamoDB] = lambda: client("dynamodb.example")  # noqa: E731
    with pytest.raises(ValueError):
        bad()


async def test_the_store_signs_with_the_credentials_of_botocores_chain(
        fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    from chat.config import Config
    from chat.store import MessageStore

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "chain-token")
    fake.script((200, {"Item": {"n": {"N": "4"}}}, {}))
    store = MessageStore(Config(dynamodb_endpoint=fake.url, aws_region="eu-west-1"))
    await store.start()
    try:
        assert isinstance(store.client, DynamoDB)
        assert await store.latest_seq("r") == 4
    finally:
        await store.close()
    headers, body, _ = fake.seen[0]
    assert "Credential=AKIDCHAIN/" in headers["Authorization"]
    assert "/eu-west-1/dynamodb/aws4_request" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "chain-token"
    assert json.loads(body)["Key"] == {"name": {"S": "room#r"}}
