"""The emulator's keep-alive patch (roles/data/files/moto_patches/keep_alive.py): a DynamoDB
JSON-protocol request with a Content-Length body leaves its connection open for the next one,
on the fast path and on the full path (EMULATOR_FAST_PATH=0, where werkzeug must not drain
the next request as an unread body); any other request, and one that asks for
`Connection: close`, gets its connection closed as moto's server does."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from tests.conftest import Service, start_moto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AUTH = ("AWS4-HMAC-SHA256 Credential=t/20261128/ap-northeast-2/dynamodb/aws4_request, "
        "SignedHeaders=host;x-amz-date;x-amz-target, Signature=00")


@pytest.fixture(scope="module", params=["fast", "full"])
def emulator(request: pytest.FixtureRequest) -> Iterator[Service]:
    svc = start_moto(env={"EMULATOR_FAST_PATH": "1" if request.param == "fast" else "0"})
    yield svc
    svc.stop()


def dynamodb(conn: http.client.HTTPConnection, action: str, body: dict[str, object],
             **headers: str) -> tuple[int, dict[str, object], bool]:
    conn.request("POST", "/", body=json.dumps(body).encode(), headers={
        "X-Amz-Target": f"DynamoDB_20120810.{action}", "Authorization": AUTH,
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Date": "20261128T000000Z",
        **headers})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read()), resp.will_close


def test_dynamodb_calls_share_one_connection(emulator: Service) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=10)
    try:
        status, body, will_close = dynamodb(conn, "ListTables", {})
        assert (status, will_close) == (200, False), body
        sock = conn.sock
        assert sock is not None
        for _ in range(5):
            status, body, will_close = dynamodb(conn, "ListTables", {})
            assert (status, will_close) == (200, False), body
            assert "TableNames" in body
        assert conn.sock is sock  # the same TCP connection answered all six
        status, body, will_close = dynamodb(conn, "ListTables", {}, Connection="close")
        assert (status, will_close) == (200, True), body
    finally:
        conn.close()


def test_other_requests_close_their_connection(emulator: Service) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=10)
    try:
        conn.request("GET", "/moto-api/")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        assert resp.will_close
    finally:
        conn.close()
