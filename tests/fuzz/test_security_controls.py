"""Security controls of the chat service (docs/security.md), each checked on a running
instance: headers on every response (errors included), the WebSocket Origin check, the
admin API's token (and that the token never leaks), and log hygiene (structured JSON, no
message text at info level)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.chatstack import ChatClient, ChatInstance, ChatStack, http
from tests.conftest import REPO

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "tok-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def inst(chat_stack: ChatStack) -> Iterator[ChatInstance]:
    i = chat_stack.start("blue", version="sec", static=REPO / "site",
                         env={"CHAT_ADMIN_TOKEN": TOKEN, "CHAT_LOG_LEVEL": "INFO"})
    yield i
    i.stop()


def headers_ok(headers: dict[str, str]) -> None:
    h = {k.lower(): v for k, v in headers.items()}
    csp = h["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" \
        not in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    assert "access-control-allow-origin" not in h  # same origin only: no CORS


@pytest.mark.parametrize(("method", "path", "want"), [
    ("GET", "/", 200), ("GET", "/board", 200), ("GET", "/app.js", 200),
    ("GET", "/healthz", 200), ("GET", "/api/stats", 200),
    ("GET", "/no/such/page", 404), ("GET", "/ws?room=%3Cx%3E&name=n", 400),
    ("POST", "/api/admin/drain", 401), ("DELETE", "/healthz", 405),
    ("GET", "/api/rooms/a/messages?limit=0", 400),
])
def test_every_response_carries_the_security_headers(inst: ChatInstance, method: str,
                                                     path: str, want: int) -> None:
    status, _, headers = http(method, inst.url + path,
                              body={} if method == "POST" else None)
    assert status == want
    headers_ok(headers)


@pytest.mark.parametrize("origin", [
    "null", "https://evil.example", "http://127.0.0.1:1", "http://127.0.0.1.evil.example",
    "http://evil.example/http://127.0.0.1"])
async def test_websocket_from_a_foreign_origin_is_refused(inst: ChatInstance,
                                                          origin: str) -> None:
    with pytest.raises(InvalidStatus) as e:
        await websockets.connect(inst.ws_url("sec", "o"), origin=origin,  # type: ignore[arg-type]
                                 open_timeout=10)
    assert e.value.response.status_code == 403


async def test_allowed_origins_list_admits_exactly_its_members(chat_stack: ChatStack) -> None:
    i = chat_stack.start("blue", version="sec2",
                         env={"CHAT_ALLOWED_ORIGINS": "https://demo.example"})
    try:
        ok = await ChatClient.connect(i.ws_url("sec", "o"),
                                      origin="https://demo.example")  # type: ignore[arg-type]
        await ok.close()
        with pytest.raises(InvalidStatus) as e:
            await websockets.connect(i.ws_url("sec", "o"), open_timeout=10,
                                     origin="https://demo.example.evil")  # type: ignore[arg-type]
        assert e.value.response.status_code == 403
    finally:
        i.stop()


def test_admin_api_is_off_without_a_token(chat_stack: ChatStack) -> None:
    i = chat_stack.start("blue", version="noadm", env={"CHAT_ADMIN_TOKEN": ""})
    try:
        for tok in ("", "anything", "test-admin-token"):
            status, _ = chat_stack.admin(i, "/api/admin/drain", {"color": "blue"}, token=tok)
            assert status == 404
        assert i.get("/readyz")[0] == 200  # and nothing was drained
    finally:
        i.stop()


def test_admin_token_is_checked_exactly_and_never_leaks(chat_stack: ChatStack,
                                                        inst: ChatInstance) -> None:
    for tok in ("", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "wrong-" + TOKEN):
        status, _, headers = http("POST", inst.url + "/api/admin/deploy-event",
                                  {"action": "step"}, {"Authorization": f"Bearer {tok}"})
        assert status == 401 and headers.get("WWW-Authenticate") == "Bearer"
    status, _, _ = http("POST", inst.url + "/api/admin/deploy-event", {"action": "step"},
                        {"Authorization": TOKEN})  # no scheme
    assert status == 401
    status, _ = chat_stack.admin(inst, "/api/admin/deploy-event",
                                 {"action": "step", "message": "ok"}, token=TOKEN)
    assert status == 201
    status, _ = chat_stack.admin(inst, "/api/admin/undrain", {"color": "blue"}, token=TOKEN)
    assert status == 202
    for path in ("/", "/board", "/app.js", "/board.js", "/api/stats", "/metrics", "/version"):
        _, body = inst.get(path)
        assert TOKEN not in body.decode(errors="replace"), path
    assert TOKEN[4:] not in inst.logs()  # not even the wrong guesses built from it


async def test_logs_are_json_with_identity_and_never_hold_message_text(
        inst: ChatInstance) -> None:
    marker = "secret-" + secrets.token_hex(8)
    c = await ChatClient.connect(inst.ws_url("sec-logs", "writer"))
    try:
        cid = await c.send(f"my {marker} message")
        await c.wait_for(lambda: cid in c.acks, 10, "ack")
        await c.send_json({"type": "send", "text": marker * 200, "client_id": "long"})
        await c.ws.send("{" + marker)  # bad JSON with the marker in it
        await c.wait_for(lambda: len(c.errors) >= 2, 10, "errors")
    finally:
        await c.close()
    logs = inst.logs()
    assert marker not in logs
    lines = [ln for ln in logs.splitlines() if ln.strip()]
    assert lines
    for ln in lines:
        rec = json.loads(ln)  # one JSON object per line, nothing else
        assert rec["color"] == "blue" and rec["version"] == "sec" and rec["instance"]
        assert rec["level"] in ("debug", "info", "warning", "error", "critical")
