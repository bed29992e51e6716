"""A join's connection record is put in the background: the client's frames are handled
from the moment it is live, while the record still waits for its batch (chat.store puts
records in batches that may wait up to RECORD_SPACING), and the record is removed when the
connection closes, even if it landed only after."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat import protocol
from chat.config import Config
from chat.connection import Connections
from chat.drain import Drainer
from chat.message import Message
from chat.metrics import Metrics
from chat.rooms import Rooms
from chat.stats import BoardStats

pytestmark = pytest.mark.timeout(30)


class FakeWs:
    """The parts of `LeanWebsocket` a join uses: frames written, a consumer, a close."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.on_message: Any = None
        self.gone = asyncio.Event()

    def write(self, data: bytes) -> bool:
        self.frames.append(data)
        return True

    def is_open(self) -> bool:
        return not self.gone.is_set()

    async def writable(self) -> bool:
        return self.is_open()

    def fail(self, code: int, reason: str) -> None:
        self.gone.set()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.gone.set()

    async def send(self, data: str) -> None:
        self.frames.append(data.encode())

    def consume(self, on_message: Any) -> None:
        self.on_message = on_message

    def stop_consuming(self) -> None:
        self.on_message = None

    async def wait_closed(self) -> None:
        await self.gone.wait()


class SlowRecordStore:
    """A store whose connection record lands only when the test says so."""

    def __init__(self) -> None:
        self.record_asked = asyncio.Event()
        self.record_lands = asyncio.Event()
        self.removed: list[str] = []

    async def next_user_id(self) -> int:
        return 7

    async def latest_seq(self, room: str) -> int:
        return 0

    async def entries(self, room: str, *, since: int | None, limit: int
                      ) -> list[tuple[int, Message | None]]:
        return []

    async def add_connection(self, **record: Any) -> str:
        self.record_asked.set()
        await self.record_lands.wait()
        return "conn-1"

    async def remove_connection(self, connection_id: str) -> None:
        self.removed.append(connection_id)


class Bus:
    async def presence_changed(self, room: str, delta: int) -> None:
        return None

    async def presence(self, room: str) -> dict[str, int]:
        return {}


class Sends:
    def __init__(self) -> None:
        self.got: list[protocol.SendFrame] = []
        self.arrived = asyncio.Event()

    async def send(self, client: Any, frame: protocol.SendFrame, error: Any) -> None:
        self.got.append(frame)
        self.arrived.set()


class CloudWatch:
    def closed(self, ws: Any, migrated: bool) -> None:
        return None


@pytest.mark.parametrize("end", ["client closes", "handler cancelled"])
async def test_frames_are_handled_while_the_record_waits_and_it_is_removed_at_close(
        end: str) -> None:
    config = Config(socket_sndbuf=0)
    metrics = Metrics("blue", "v1")
    store = SlowRecordStore()
    bus = Bus()
    rooms = Rooms(config, store, metrics, bus.presence)  # type: ignore[arg-type]
    sends = Sends()
    connections = Connections(
        config, store=store, bus=bus, rooms=rooms,  # type: ignore[arg-type]
        drainer=Drainer(config, rooms, metrics), sends=sends,  # type: ignore[arg-type]
        metrics=metrics, board=BoardStats(), cloudwatch=CloudWatch())  # type: ignore[arg-type]
    ws = FakeWs()
    serve = asyncio.create_task(connections.serve(
        None, ws, protocol.JoinQuery(room="r", name="ann", since=None)))  # type: ignore[arg-type]
    await asyncio.wait_for(store.record_asked.wait(), 5)
    for _ in range(20):  # the handler's next steps after asking for the record
        await asyncio.sleep(0)
    assert ws.on_message is not None, "frames are not read until the record lands"
    ws.on_message('{"type":"send","text":"hi","client_id":"c-1"}')
    await asyncio.wait_for(sends.arrived.wait(), 5)
    assert [f.text for f in sends.got] == ["hi"] and not store.record_lands.is_set()

    ws.gone.set()  # the connection ends before its record landed
    if end == "handler cancelled":  # as a shutdown does
        serve.cancel()
        await asyncio.wait_for(serve, 5)
    for _ in range(20):
        await asyncio.sleep(0)
    assert store.removed == []
    store.record_lands.set()  # the put lands late: the cleanup still removes it
    await asyncio.wait_for(serve, 5)
    await asyncio.wait_for(connections.wait_cleanups(), 5)
    assert store.removed == ["conn-1"]
