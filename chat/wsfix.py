"""Guards for two Sanic 25 WebSocket behaviours the fuzz and fault suites found.

1. A text frame that is not valid UTF-8. Sanic's frame assembler decodes text frames in a
   task nobody awaits: invalid UTF-8 raises UnicodeDecodeError there ("Task exception was
   never retrieved" at ERROR level) and the connection is left half-alive, its handler
   waiting forever for that message. RFC 6455 says: close with 1007 (invalid frame payload
   data). `install()` swaps in an assembler that does exactly that; chat.app calls it once
   at import.
2. A frame that arrives after the handler stopped reading (a client sending while it is
   migrated, closed with 1012/1013, or hanging up) waits in that same task for a reader
   that never comes; when the connection is gone the task is garbage-collected and asyncio
   logs "Task was destroyed but it is pending!" at ERROR level. Nothing is lost (the client
   resends without an ack) but it drowns real errors: `quiet_orphaned_frames(loop)` logs
   exactly that case at debug level and passes everything else on.
"""

from __future__ import annotations

import asyncio
import logging
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


def quiet_orphaned_frames(loop: asyncio.AbstractEventLoop) -> None:
    previous = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        task = context.get("task")
        coro = getattr(task, "get_coro", lambda: None)()
        if (context.get("message", "").startswith("Task was destroyed but it is pending")
                and getattr(coro, "__qualname__", "").startswith(
                    "WebsocketImplProtocol.async_data_received")):
            logging.getLogger("chat.ws").debug(
                "frame after close", extra={"event": "ws_frame_after_close"})
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
