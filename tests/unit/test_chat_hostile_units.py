"""Issue 16's pure rules: nickname normalisation and invisible characters, the request
path check, the Host allow-list, bearer tokens as bytes, rate-limit strikes."""

from __future__ import annotations

import pytest

from chat import protocol
from chat.gate import bad_path, bearer_bytes, host_allowed
from chat.ratelimit import Strikes


@pytest.mark.parametrize(("typed", "kept"), [
    ("speaker", "speaker"), ("  speaker  ", "speaker"), ("ｓｐｅａｋｅｒ", "speaker"),
    ("a   b", "a b"), ("a\u3000b", "a b"), ("\u00a0x\u2002", "x"), ("민수", "민수")])
def test_nicknames_are_nfkc_trimmed_and_single_spaced(typed: str, kept: str) -> None:
    q = protocol.parse_join_query({"room": ["r"], "name": [typed]})
    assert q.name == kept


@pytest.mark.parametrize("name", [
    "\u3164", "\uffa0", "\u115f", "\u1160", "a\u3164", "a\u200bb", "a\u200cb", "a\u200db",
    "a\u202eb", "a\u2066b", "a\ufe0fb", "a\u00adb", "a\ufeffb", "\u3164\u3164 ", "a\nb",
    "a\tb"])
def test_invisible_nicknames_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        protocol.parse_join_query({"room": ["r"], "name": [name]})


def test_a_look_alike_stays_a_different_name() -> None:
    q = protocol.parse_join_query({"room": ["r"], "name": ["speаker"]})  # Cyrillic а
    assert q.name != "speaker"


def test_a_lone_surrogate_in_a_send_is_invalid_not_a_fault() -> None:
    with pytest.raises(protocol.ProtocolError) as e:
        protocol.parse_client_frame('{"type":"send","text":"\\udc80","client_id":"c"}')
    assert e.value.code is protocol.ErrorCode.INVALID


@pytest.mark.parametrize(("path", "refused"), [
    ("/", False), ("/app.js", False), ("/api/rooms/%EB%AF%BC/messages", False),
    ("/%00", True), ("/_color/green/%00", True), ("/a%0ab", True), ("/%7f", True),
    ("/%ff", True), ("/%c0%ae", True), ("/%ed%b2%80", True)])
def test_paths_with_controls_or_bad_utf8_are_refused(path: str, refused: bool) -> None:
    assert (bad_path(path) is not None) is refused


@pytest.mark.parametrize(("allowed", "host", "ok"), [
    ((), "evil.example:8080", True), ((), None, True),
    (("chat.example",), "chat.example", True), (("chat.example",), "CHAT.example:8080", True),
    (("chat.example",), "evil.example:8080", False), (("chat.example",), None, False),
    (("127.0.0.1:8080",), "127.0.0.1:8080", True), (("127.0.0.1:8080",), "127.0.0.1:80", False),
    (("[::1]",), "[::1]:8080", True), (("chat.example",), "chat.example.evil", False)])
def test_host_allow_list(allowed: tuple[str, ...], host: str | None, ok: bool) -> None:
    assert host_allowed(allowed, host) is ok


def test_bearer_token_bytes_survive_non_utf8_headers() -> None:
    assert bearer_bytes("Bearer \udcff") == b"\xff"
    assert bearer_bytes("bearer tok") == b"tok"
    assert bearer_bytes("tok") == b""


def test_strikes_trip_only_past_the_limit_within_the_window() -> None:
    s = Strikes(3, 60.0)
    assert [s.strike() for _ in range(4)] == [False, False, False, True]
    assert not any(Strikes(0, 1.0).strike() for _ in range(100))
