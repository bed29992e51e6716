"""chat.ws: a frame that arrives after the handler stopped reading is quiet, and every
other loop error still goes through.

Sanic's own connection left such a frame to a task waiting for a reader that never came
("Task was destroyed but it is pending!" at ERROR level once the connection was gone).
`LeanWebsocket` hands frames to a callback as they arrive; after `stop_consuming()` they
are dropped on arrival: no task, nothing for the loop's exception handler, and the chat
installs no exception handler of its own that could swallow real errors.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from chat.ws import LeanWebsocket


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class FakeIo:
    """The server protocol the connection writes through (Sanic's, in the service)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = FakeTransport()
        self.loop = loop
        self._can_write = asyncio.Event()
        self._can_write.set()

    async def send(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        pass


def client_frame(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=True)


async def test_frames_after_the_handler_stopped_are_quiet_and_other_errors_go_through(
        ) -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    try:
        ws = LeanWebsocket(ServerProtocol(state=State.OPEN))
        io = FakeIo(loop)
        await ws.connection_made(io, loop)
        got: list[str | bytes] = []
        ws.consume(got.append)
        ws.data_received(client_frame("while reading"))
        assert got == ["while reading"]

        ws.stop_consuming()  # the handler is done (migrated, closed 1012/1013, hung up)
        before = asyncio.all_tasks()
        for i in range(100):
            ws.data_received(client_frame(f"late {i}"))
        assert asyncio.all_tasks() == before  # nothing left waiting for a reader
        assert got == ["while reading"]
        ws.connection_lost(None)  # the connection is gone
        del ws
        gc.collect()
        await asyncio.sleep(0)
        assert seen == []

        # every other loop error still reaches the loop's handler
        handler = loop.get_exception_handler()
        assert handler is not None
        fut: asyncio.Future[None] = loop.create_future()

        async def other_coro() -> None:
            await fut

        other = loop.create_task(other_coro())
        handler(loop, {"message": "Task was destroyed but it is pending!", "task": other})
        handler(loop, {"message": "Task exception was never retrieved"})
        assert len(seen) == 2
        fut.set_result(None)
        await other
    finally:
        loop.set_exception_handler(old)


async def test_a_close_after_the_handler_stopped_is_still_answered() -> None:
    loop = asyncio.get_running_loop()
    ws = LeanWebsocket(ServerProtocol(state=State.OPEN))
    io = FakeIo(loop)
    await ws.connection_made(io, loop)
    ws.consume(lambda m: None)
    ws.stop_consuming()
    ws.data_received(client_frame("late"))
    ws.data_received(Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(mask=True))
    for _ in range(20):
        if io.transport.writes:
            break
        await asyncio.sleep(0.01)
    assert any(w[0] == 0x88 for w in io.transport.writes)  # the closing handshake's answer
    ws.connection_lost(None)
