"""A guard for a Sanic 25 WebSocket bug: a text frame that is not valid UTF-8.

Sanic's frame assembler decodes text frames in a task nobody awaits: invalid UTF-8 raises
UnicodeDecodeError there ("Task exception was never retrieved" at ERROR level) and the
connection is left half-alive, its handler waiting forever for that message. RFC 6455
says: close with 1007 (invalid frame payload data). `install()` swaps in an assembler
that does exactly that; chat.app calls it once at import.
"""

from __future__ import annotations

from typing import Any

from sanic.server.websockets import impl
from sanic.server.websockets.frame import WebsocketFrameAssembler

CLOSE_INVALID_DATA = 1007


class Utf8CheckingAssembler(WebsocketFrameAssembler):
    async def put(self, frame: Any) -> None:
        try:
            await super().put(frame)
        except UnicodeDecodeError:
            self.decoder = None
            self.protocol.fail_connection(CLOSE_INVALID_DATA, "invalid UTF-8 in a text frame")


def install() -> None:
    impl.WebsocketFrameAssembler = Utf8CheckingAssembler  # type: ignore[misc]
