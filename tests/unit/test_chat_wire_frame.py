"""chat.ws.text_frame: the bytes the fan-out writes straight to every transport must be
exactly the frame a WebSocket client parses back to the same text, at every length class
of RFC 6455's header (7-bit, 16-bit, 64-bit payload length)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from chat import protocol
from chat.ws import text_frame


def parse_client_side(data: bytes) -> Frame:
    """Parse as a client does: server frames are unmasked."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    gen = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(gen)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("the frame was incomplete")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_parses_back_to_the_same_text_at_every_header_size(length: int) -> None:
    text = ("한" * (length // 3)).ljust(length, "x")[:length] if length else ""
    frame = parse_client_side(text_frame(text))
    assert frame.opcode == Opcode.TEXT and frame.fin
    assert bytes(frame.data).decode() == text


def test_the_same_bytes_as_the_websockets_library_would_send() -> None:
    text = protocol.encode({"type": "message", "text": "안녕 <b>hi</b>", "seq": 7})
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    assert text_frame(text) == expected
