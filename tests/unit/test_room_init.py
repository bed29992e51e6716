"""A room's first joins share the read that initialises it, and wake together."""

from __future__ import annotations

import asyncio

import pytest

from chat.config import Config
from chat.message import Message
from chat.metrics import Metrics
from chat.rooms import Room, Rooms
from chat.store import StoreUnavailable

# a lock that made each waiter read again after a failure would wait for ever: fail instead
pytestmark = pytest.mark.timeout(30)

JOINS = 30


class GatedStore:
    """The one call a room's initialisation makes, held until the test lets it answer."""

    def __init__(self) -> None:
        self.calls = 0
        self.asked = asyncio.Event()  # set by each call, cleared by the test
        self.answer: asyncio.Future[list[tuple[int, Message | None]]] | None = None

    async def entries(self, room: str, *, since: int | None, limit: int
                      ) -> list[tuple[int, Message | None]]:
        self.calls += 1
        self.answer = asyncio.get_running_loop().create_future()
        self.asked.set()
        return await self.answer


def make_room(store: GatedStore) -> Room:
    async def presence(room: str) -> dict[str, int]:
        return {}

    rooms = Rooms(Config(), store, Metrics("blue", "v1"), presence)  # type: ignore[arg-type]
    return Room("r", rooms)


async def started(store: GatedStore, room: Room) -> list[asyncio.Task[None]]:
    joins = [asyncio.ensure_future(room.ensure_initialised()) for _ in range(JOINS)]
    await asyncio.wait_for(store.asked.wait(), 5)
    return joins


async def test_the_first_joins_share_one_read_and_all_wake_when_it_lands() -> None:
    store = GatedStore()
    room = make_room(store)
    joins = await started(store, room)
    assert store.answer is not None
    store.answer.set_result([])
    # A lock would release its waiters one per turn of the loop: JOINS turns. Sharing the
    # read wakes them all in the turns it takes the read's own result to reach them.
    for _ in range(4):
        await asyncio.sleep(0)
    assert [j.done() for j in joins] == [True] * JOINS
    assert room.next_seq == 1
    assert store.calls == 1
    await room.ensure_initialised()  # initialised: no read
    assert store.calls == 1


async def test_a_failed_read_fails_its_joins_and_the_next_join_reads_again() -> None:
    store = GatedStore()
    room = make_room(store)
    joins = await started(store, room)
    assert store.answer is not None
    store.answer.set_exception(StoreUnavailable("down"))
    results = await asyncio.gather(*joins, return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert room.next_seq is None and store.calls == 1

    store.asked.clear()
    again = asyncio.ensure_future(room.ensure_initialised())
    await asyncio.wait_for(store.asked.wait(), 5)
    assert store.calls == 2
    store.answer.set_result([])
    await asyncio.wait_for(again, 5)
    assert room.next_seq == 1


async def test_a_join_that_goes_away_leaves_the_read_to_the_others() -> None:
    store = GatedStore()
    room = make_room(store)
    joins = await started(store, room)
    joins[0].cancel()  # the join that started the read
    await asyncio.sleep(0)
    assert store.answer is not None and not store.answer.cancelled()
    store.answer.set_result([])
    await asyncio.wait_for(asyncio.gather(*joins[1:]), 5)
    assert room.next_seq == 1 and store.calls == 1
