"""chat.wsfix: the orphaned-frame case is quiet, every other loop error still goes through."""

from __future__ import annotations

import asyncio
from typing import Any

from chat import wsfix


class WebsocketImplProtocol:  # same qualname as Sanic's, for the filter
    async def async_data_received(self, fut: asyncio.Future[None]) -> None:
        await fut


async def test_only_orphaned_frame_tasks_are_silenced() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    try:
        wsfix.quiet_orphaned_frames(loop)
        handler = loop.get_exception_handler()
        assert handler is not None
        fut: asyncio.Future[None] = loop.create_future()
        orphan = loop.create_task(WebsocketImplProtocol().async_data_received(fut))

        async def other_coro() -> None:
            await fut

        other = loop.create_task(other_coro())
        handler(loop, {"message": "Task was destroyed but it is pending!", "task": orphan})
        assert seen == []
        handler(loop, {"message": "Task was destroyed but it is pending!", "task": other})
        handler(loop, {"message": "Task exception was never retrieved"})
        assert len(seen) == 2
        fut.set_result(None)
        await asyncio.gather(orphan, other)
    finally:
        loop.set_exception_handler(old)
