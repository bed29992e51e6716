"""Property-based tests of the wire protocol's parsing (chat/protocol.py): whatever a client
sends -- any bytes, any text, any JSON value -- the parser returns a valid command or raises
ProtocolError with one of the protocol's codes; never anything else."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat import protocol
from chat.protocol import ErrorCode, PingFrame, ProtocolError, SendFrame

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=50))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=20)
# objects shaped like frames: the right keys with values of any type
frame_like = st.fixed_dictionaries(
    {}, optional={"type": st.sampled_from(["send", "ping", "SEND", "pong", ""]) | json_values,
                  "text": st.text(max_size=2100) | json_values,
                  "client_id": st.text(max_size=80) | json_values}).flatmap(
    lambda d: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(
        lambda extra: {**extra, **d}))


def check(data: str | bytes) -> None:
    try:
        frame = protocol.parse_client_frame(data)
    except ProtocolError as e:
        assert isinstance(e.code, ErrorCode)
        assert e.message
        # the error frame it answers with is valid JSON with that code
        out = json.loads(protocol.error_frame(e.code, e.message))
        assert out == {"type": "error", "code": e.code.value, "message": e.message}
        return
    assert isinstance(frame, SendFrame | PingFrame)
    if isinstance(frame, SendFrame):
        assert isinstance(frame.text, str) and frame.text.strip()
        assert len(frame.text) <= protocol.MAX_TEXT
        assert isinstance(frame.client_id, str)
        assert 1 <= len(frame.client_id) <= protocol.MAX_CLIENT_ID
        assert frame.client_id.isprintable()


@SETTINGS
@given(st.binary(max_size=4096))
def test_any_binary_frame_is_invalid(data: bytes) -> None:
    with_error(data, ErrorCode.INVALID)


def with_error(data: str | bytes, code: ErrorCode) -> None:
    try:
        protocol.parse_client_frame(data)
    except ProtocolError as e:
        assert e.code == code
    else:
        raise AssertionError(f"{data!r} was accepted")


@SETTINGS
@given(st.text(max_size=4096))
def test_any_text_yields_a_command_or_a_protocol_error(data: str) -> None:
    check(data)


@SETTINGS
@given(st.binary(max_size=2048))
def test_any_bytes_decoded_leniently_yield_a_command_or_a_protocol_error(data: bytes) -> None:
    check(data.decode("utf-8", errors="surrogateescape"))


@SETTINGS
@given(json_values)
def test_any_json_value_yields_a_command_or_a_protocol_error(value: Any) -> None:
    check(json.dumps(value))


@SETTINGS
@given(frame_like)
def test_frame_shaped_objects_are_accepted_only_when_valid(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj)
    check(raw)
    try:
        frame = protocol.parse_client_frame(raw)
    except ProtocolError as e:
        if obj.get("type") not in ("send", "ping"):
            assert e.code == ErrorCode.UNKNOWN_TYPE
        return
    assert obj.get("type") in ("send", "ping")
    if isinstance(frame, SendFrame):
        assert frame.text == obj["text"] and frame.client_id == obj["client_id"]


@SETTINGS
@given(st.integers(min_value=0, max_value=12), st.sampled_from(["[", "{\"a\":"]))
def test_deeply_nested_json_is_an_error_not_a_crash(depth_exp: int, opener: str) -> None:
    depth = 2 ** depth_exp * 10  # up to ~40,000 levels: past Python's recursion limit
    closer = "]" if opener == "[" else "}"
    check(opener * depth + "1" + closer * depth)


@SETTINGS
@given(st.integers(min_value=1, max_value=5000))
def test_huge_numbers_are_an_error_not_a_crash(digits: int) -> None:
    check('{"type":"send","text":' + "9" * digits + ',"client_id":"x"}')
    check('{"type":' + "9" * digits + "}")
    check("1e" + "9" * min(digits, 400))


@SETTINGS
@given(st.text(min_size=1, max_size=3000).filter(lambda t: bool(t.strip())),
       st.text(min_size=1, max_size=64).filter(str.isprintable))
def test_text_length_limit_is_exact(text: str, client_id: str) -> None:
    raw = json.dumps({"type": "send", "text": text, "client_id": client_id})
    if len(text) > protocol.MAX_TEXT:
        with_error(raw, ErrorCode.TOO_LONG)
    else:
        frame = protocol.parse_client_frame(raw)
        assert isinstance(frame, SendFrame) and frame.text == text


@SETTINGS
@given(st.dictionaries(st.sampled_from(["room", "name", "since", "x"]),
                       st.lists(st.text(max_size=40), max_size=3), max_size=4))
def test_any_join_query_is_a_join_or_a_value_error(args: dict[str, list[str]]) -> None:
    try:
        q = protocol.parse_join_query(args)
    except ValueError as e:
        assert str(e)
        return
    assert protocol.valid_name(q.room) and protocol.valid_name(q.name)
    assert q.since is None or q.since >= 0
