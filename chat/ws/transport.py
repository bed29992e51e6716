"""`Transport`: what the chat's client logic needs from one WebSocket connection.

`chat/rooms.py` (`Client`) writes server frames through it and nothing else; the lean
Sanic connection (`chat/ws/lean.py`) implements it over its TCP transport, and the test
stand-ins implement the same methods. Frames are WebSocket bytes (`chat.ws.text_frame`),
so one message's bytes are built once and written to every recipient.
"""

from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    def write(self, data: bytes) -> bool:
        """Write `data` now if the peer takes it: False (nothing written) while the
        transport pushes back (over its high-water mark) or once it is closing."""

    def is_open(self) -> bool:
        """The WebSocket is open and its TCP transport is not closing."""

    async def writable(self) -> bool:
        """Wait until `write` would take data: True, or False once the connection is gone."""

    def fail(self, code: int, reason: str) -> None:
        """Close now with `code` (no closing handshake wait, nothing more is written)."""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake with `code` after what was written."""
