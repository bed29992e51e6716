"""No client input is a server fault (issue 16, item 1), property-tested against a running
instance: every HTTP request — path, query string and header values generated as BYTES and
written to a raw socket — is answered, and never with a 5xx; every send frame — text with
lone surrogates, NULs, control characters, non-characters — is answered with an ack or an
error frame whose code is a client fault, never `unavailable`. Afterwards the instance's
gate counters hold no error at all (chat_http_requests_total{status="5xx"}, chat_sends_total
{outcome="error"}).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from chat.protocol import ErrorCode
from tests.chatstack import ChatInstance, ChatStack, raw_http_status

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(600)]

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
TOKEN = "fuzz-admin-token"
CLIENT_FAULTS = {ErrorCode.BAD_JSON, ErrorCode.UNKNOWN_TYPE, ErrorCode.INVALID,
                 ErrorCode.TOO_LONG}


@pytest.fixture(scope="module")
def inst(chat_stack: ChatStack) -> Iterator[ChatInstance]:
    from tests.conftest import REPO
    i = chat_stack.start("blue", version="nofault", static=REPO / "site",
                         env={"CHAT_ADMIN_TOKEN": TOKEN, "CHAT_RATE_PER_S": "1000",
                              "CHAT_RATE_BURST": "1000"})
    yield i
    i.stop()


def assert_answered_without_fault(inst: ChatInstance, request: bytes) -> None:
    status = raw_http_status(inst.port, request)
    assert status is not None, f"no answer to {request!r}"
    assert status < 500, f"{status} for {request!r}"


# Bytes a request target may carry on the wire (no space, CR, LF: they end the line),
# and any byte percent-encoded.
target_bytes = st.binary(max_size=40).map(
    lambda b: b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b""))
pct = st.binary(max_size=20).map(lambda b: "".join(f"%{c:02X}" for c in b).encode())
segment = st.one_of(target_bytes, pct, st.sampled_from(
    [b"%00", b"%ff", b"%c0%ae", b"..", b"%2e%2e", b"\x00", b"\xff", b"%ed%b2%80"]))
prefixes = st.sampled_from([b"/", b"/_color/green/", b"/api/rooms/", b"/api/stats/",
                            b"/ws/", b"/board/", b"/api/admin/"])
suffixes = st.sampled_from([b"", b"/messages", b"/messages?since=", b"?limit=", b"?room="])


@SETTINGS
@given(prefixes, segment, suffixes, segment)
@example(b"/_color/green/", b"%00", b"", b"")
@example(b"/", b"\x00x", b"", b"")
def test_no_path_or_query_is_a_server_fault(inst: ChatInstance, prefix: bytes, seg: bytes,
                                            suffix: bytes, tail: bytes) -> None:
    target = prefix + seg + suffix + tail
    assert_answered_without_fault(
        inst, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")


query_prefixes = st.sampled_from([b"/ws?room=", b"/ws?room=r&name=", b"/ws?name=n&room=r&since=",
                                  b"/api/rooms/r/messages?since=",
                                  b"/api/rooms/r/messages?limit=", b"/api/stats?", b"/?"])


@SETTINGS
@given(query_prefixes, segment, st.booleans())
@example(b"/ws?room=r&name=", b"%ed%b2%80", True)
def test_no_query_string_is_a_server_fault(inst: ChatInstance, prefix: bytes, value: bytes,
                                           upgrade: bool) -> None:
    headers = b"Host: 127.0.0.1\r\nConnection: close\r\n"
    if upgrade:
        headers = (b"Host: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                   b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    status = raw_http_status(inst.port, b"GET " + prefix + value + b" HTTP/1.1\r\n" + headers
                         + b"\r\n")
    assert status is not None and status < 500, (status, prefix + value)


# Header values: any bytes but CR and LF (which would end the header line).
header_value = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@SETTINGS
@given(st.sampled_from([b"Authorization", b"Host", b"Origin", b"Cookie", b"Accept-Language",
                        b"Content-Type", b"X-Canary-Pinned", b"X-Forwarded-For"]),
       st.sampled_from([(b"POST", b"/api/admin/drain"), (b"POST", b"/api/admin/deploy-event"),
                        (b"GET", b"/api/stats"), (b"GET", b"/api/rooms/r/messages"),
                        (b"GET", b"/ws?room=r&name=n"), (b"GET", b"/")]),
       st.one_of(header_value, header_value.map(lambda v: b"Bearer " + v)))
@example(b"Authorization", (b"POST", b"/api/admin/drain"), b"Bearer \xff")
def test_no_header_value_is_a_server_fault(inst: ChatInstance, name: bytes,
                                           call: tuple[bytes, bytes], value: bytes) -> None:
    method, path = call
    headers = b"Content-Length: 0\r\nConnection: close\r\n"
    if name != b"Host":
        headers += b"Host: 127.0.0.1\r\n"
    if path.startswith(b"/ws"):
        headers += (b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    assert_answered_without_fault(
        inst, method + b" " + path + b" HTTP/1.1\r\n" + name + b": " + value + b"\r\n"
        + headers + b"\r\n")


@SETTINGS
@given(st.binary(max_size=200))
@example(b'{"action": "\\udc80"}')
def test_no_admin_body_is_a_server_fault(inst: ChatInstance, body: bytes) -> None:
    for path in (b"/api/admin/deploy-event", b"/api/admin/undrain"):
        assert_answered_without_fault(
            inst, b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


# Frame texts: the characters a hostile client picks on purpose, mixed with plain ones.
nasty_chars = st.one_of(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    st.characters(min_codepoint=0, max_codepoint=0x1F),  # NUL and C0 controls
    st.characters(min_codepoint=0x7F, max_codepoint=0x9F),  # DEL and C1 controls
    st.sampled_from(["\ufffe", "\uffff", "\ufdd0", "\U0010ffff", "\u202e", "\u200d",
                     "\ufeff", "\u3164"]),  # non-characters, bidi, invisible
    st.characters(codec=None))
frame_text = st.text(alphabet=nasty_chars, max_size=40)


@pytest.fixture(scope="module")
def ws(inst: ChatInstance) -> Iterator[ClientConnection]:
    with connect(inst.ws_url("nofault", "fuzzer"), open_timeout=10) as c:
        assert json.loads(c.recv(10))["type"] == "welcome"
        assert json.loads(c.recv(10))["type"] == "history"
        yield c


def answer(ws: ClientConnection, client_id: str) -> dict[str, object]:
    """The ack or error frame answering the last frame sent (others in between skipped)."""
    while True:
        frame = json.loads(ws.recv(10))
        if frame["type"] == "error" or (frame["type"] == "ack"
                                        and frame["client_id"] == client_id):
            return frame


@SETTINGS
@given(frame_text, st.sampled_from(["text", "client_id"]))
@example("\udc80", "text")
@example("a\x00b", "text")
def test_no_frame_text_is_a_server_fault(ws: ClientConnection, text: str, where: str) -> None:
    client_id = uuid.uuid4().hex
    frame = {"type": "send", "text": "hello", "client_id": client_id}
    frame[where] = text
    # json.dumps writes a lone surrogate as the escape \udc80: valid JSON in a valid frame
    ws.send(json.dumps(frame))
    got = answer(ws, frame["client_id"])
    if got["type"] == "error":
        assert got["code"] in CLIENT_FAULTS, got
    else:
        assert got["type"] == "ack"


def test_the_gate_counters_saw_no_fault(inst: ChatInstance) -> None:
    """Runs after the properties above (file order): none of it counted as an error."""
    text = inst.get("/metrics")[1].decode()
    assert re.search(r'chat_http_requests_total\{[^}]*status="5xx"\} 0\n', text), text
    assert re.search(r'chat_sends_total\{[^}]*outcome="error"\} 0\n', text), text
    assert re.search(r'chat_errors_total\{[^}]*code="unavailable"\} 0\n', text), text
    assert inst.get("/readyz")[0] == 200
