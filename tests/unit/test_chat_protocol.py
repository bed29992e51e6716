"""chat.protocol: query validation, frame parsing and encoding (pure functions)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat import protocol
from chat.message import message
from chat.protocol import ErrorCode, PingFrame, ProtocolError, SendFrame


@pytest.mark.parametrize("name", ["a", "alice", "한글 이름", "a_b-c.d", "x" * 32, "Zoë 2",
                                  "lobby 1"])
def test_valid_names(name):
    assert protocol.valid_name(name)


@pytest.mark.parametrize("name", ["", " ", "   ", "x" * 33, "a<b", "a/b", "a\nb", "a\tb",
                                  "a'b", 'a"b', "a&b", "emoji😀", "a+b"])
def test_invalid_names(name):
    assert not protocol.valid_name(name)


def test_join_query_parses_room_name_and_since():
    q = protocol.parse_join_query({"room": ["lobby"], "name": ["민수"], "since": ["42"]})
    assert (q.room, q.name, q.since) == ("lobby", "민수", 42)
    assert protocol.parse_join_query({"room": ["r"], "name": ["n"]}).since is None


@pytest.mark.parametrize("args", [
    {"name": ["n"]}, {"room": ["r"]}, {"room": ["r", "s"], "name": ["n"]},
    {"room": ["r"], "name": ["n"], "since": ["-1"]},
    {"room": ["r"], "name": ["n"], "since": ["1.5"]},
    {"room": ["r"], "name": ["n"], "since": ["9" * 16]},
    {"room": ["bad!"], "name": ["n"]},
])
def test_join_query_rejects(args):
    with pytest.raises(ValueError):
        protocol.parse_join_query(args)


def test_limit():
    assert protocol.parse_limit(None) == 50
    assert protocol.parse_limit("1000") == 1000
    for bad in ("0", "1001", "x", "-3"):
        with pytest.raises(ValueError):
            protocol.parse_limit(bad)


def test_send_frame_parses():
    f = protocol.parse_client_frame('{"type":"send","text":" hi ","client_id":"c-1"}')
    assert f == SendFrame(text=" hi ", client_id="c-1")
    assert protocol.parse_client_frame('{"type":"ping"}') == PingFrame()


@pytest.mark.parametrize("raw,code", [
    ("{", ErrorCode.BAD_JSON),
    ("", ErrorCode.BAD_JSON),
    ("[1]", ErrorCode.INVALID),
    ('"send"', ErrorCode.INVALID),
    ('{"text":"hi","client_id":"a"}', ErrorCode.UNKNOWN_TYPE),
    ('{"type":"SEND","text":"hi","client_id":"a"}', ErrorCode.UNKNOWN_TYPE),
    ('{"type":"send","client_id":"a"}', ErrorCode.INVALID),
    ('{"type":"send","text":5,"client_id":"a"}', ErrorCode.INVALID),
    ('{"type":"send","text":"hi"}', ErrorCode.INVALID),
    ('{"type":"send","text":"hi","client_id":""}', ErrorCode.INVALID),
    ('{"type":"send","text":"hi","client_id":7}', ErrorCode.INVALID),
    ('{"type":"send","text":"\\n\\t ","client_id":"a"}', ErrorCode.INVALID),
    (json.dumps({"type": "send", "text": "x" * 2001, "client_id": "a"}), ErrorCode.TOO_LONG),
    (json.dumps({"type": "send", "text": "hi", "client_id": "a" * 65}), ErrorCode.INVALID),
])
def test_bad_frames(raw, code):
    with pytest.raises(ProtocolError) as e:
        protocol.parse_client_frame(raw)
    assert e.value.code == code and e.value.message


def test_binary_frame_is_invalid():
    with pytest.raises(ProtocolError) as e:
        protocol.parse_client_frame(b'{"type":"ping"}')
    assert e.value.code == ErrorCode.INVALID


def test_text_of_exactly_2000_characters_is_accepted():
    f = protocol.parse_client_frame(json.dumps({"type": "send", "text": "가" * 2000,
                                                "client_id": "a"}))
    assert isinstance(f, SendFrame) and len(f.text) == 2000


@given(st.text(max_size=300))
def test_any_text_frame_parses_or_raises_protocol_error(raw):
    try:
        protocol.parse_client_frame(raw)
    except ProtocolError as e:
        assert e.code in set(ErrorCode)


def test_frames_encode_compact_utf8_and_stable():
    m = protocol.message_frame(room="r", seq=3, user_id=9, name="민수", text="<b>", ts=1,
                               color="green")
    a, b = protocol.encode(m), protocol.encode(dict(m))
    assert a == b
    assert a == ('{"type":"message","room":"r","seq":3,"user_id":9,"name":"민수",'
                 '"text":"<b>","ts":1,"color":"green"}')
    assert json.loads(protocol.ack_frame("c", 3)) == {"type": "ack", "client_id": "c",
                                                       "seq": 3}
    assert json.loads(protocol.error_frame(ErrorCode.TOO_LONG, "m")) == {
        "type": "error", "code": "too_long", "message": "m"}
    assert json.loads(protocol.presence_frame({"green": 2, "blue": 1})) == {
        "type": "presence", "online": 3, "by_color": {"blue": 1, "green": 2}}
    w = json.loads(protocol.welcome_frame(user_id=1, name="n", room="r", color="blue",
                                          version="v1", server="i", seq=0))
    assert list(w) == ["type", "user_id", "name", "room", "color", "version", "server", "seq"]
    assert json.loads(protocol.MIGRATE_FRAME) == {"type": "migrate"}


def test_message_order_reads_seq_and_ts_of_an_encoded_message() -> None:
    frame = protocol.encode(message(room='r "seq":1', seq=4242, user_id=7, name="n",
                                    text='{"seq": 1, "ts": 2}', ts=1700000000123,
                                    color="blue"))
    assert protocol.message_order(frame) == (4242, 1700000000123)
