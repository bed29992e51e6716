"""Small asyncio helpers: stopping a background poller, sharing a call among callers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


async def cancel_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class SharedCalls(Generic[T]):
    """Per room, concurrent callers share one call of `call(room)`: each gets the result
    of the next call that starts after it asked, never of one already in flight (so what
    it reads or writes is never older than its request). A storm of joins in one room
    then costs a few round trips, not a few per join (presence in `chat.bus`, welcome's
    seq in `chat.store`). With `spacing`, a room's next call starts no sooner than that many
    seconds after its last one started, and the callers who come meanwhile share it: a lone
    caller is answered by one round trip, a burst costs at most one call per `spacing`. An
    error of a call goes to every caller it answers; at close, callers still waiting get
    `closed(room)`, or the exception it raises."""

    def __init__(self, call: Callable[[str], Awaitable[T]], closed: Callable[[str], T],
                 spacing: float = 0.0) -> None:
        self.call, self.closed, self.spacing = call, closed, spacing
        self.waiting: dict[str, list[asyncio.Future[T]]] = {}
        self.runners: dict[str, asyncio.Task[None]] = {}

    async def __call__(self, room: str) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.waiting.setdefault(room, []).append(future)
        if room not in self.runners:  # an idle room: its call goes out now
            self.runners[room] = loop.create_task(self._run(room), name=f"shared-{room}")
        return await future

    async def _run(self, room: str) -> None:
        loop = asyncio.get_running_loop()
        batch: list[asyncio.Future[T]] = []
        try:
            while True:
                batch = [f for f in self.waiting.pop(room, ()) if not f.done()]
                if not batch:  # idle again; no await since the check: nobody slips by
                    return
                started = loop.time()
                try:
                    value = await self.call(room)
                except Exception as e:  # every caller of this call gets it
                    for f in batch:
                        if not f.done():
                            f.set_exception(e)
                else:
                    for f in batch:
                        if not f.done():
                            f.set_result(value)
                batch = []
                if self.spacing > 0:  # the callers who come meanwhile share the next call
                    await asyncio.sleep(started + self.spacing - loop.time())
        finally:
            if self.runners.get(room) is asyncio.current_task():
                del self.runners[room]
            for f in batch + self.waiting.pop(room, []):  # cancelled: the owner closes
                if not f.done():
                    try:
                        f.set_result(self.closed(room))
                    except Exception as e:  # `closed` may raise instead of answering
                        f.set_exception(e)

    async def close(self) -> None:
        runners = list(self.runners.values())
        for t in runners:
            t.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
