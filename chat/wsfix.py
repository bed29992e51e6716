"""A guard for a Sanic 25 WebSocket behaviour the fault suite found.

A frame that arrives after the handler stopped reading (a client sending while it is
migrated, closed with 1012/1013, or hanging up) used to wait, in Sanic's frame assembler,
for a reader that never comes; when the connection was gone the task was
garbage-collected and asyncio logged "Task was destroyed but it is pending!" at ERROR
level. Nothing is lost (the client resends without an ack) but it drowned real errors.
chat/wslean.py no longer creates such tasks (frames go to a callback as they arrive, and
an invalid UTF-8 text frame closes with 1007 there); `quiet_orphaned_frames(loop)` stays
as a guard for any Sanic WebSocket that still uses the assembler, logging exactly that
case at debug level and passing everything else on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any


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
