"""`chat.aio.SharedCalls` with a spacing: a lone caller's call goes at once, a burst of callers
shares at most one call per spacing, and no caller gets the result of a call that started
before it asked."""

from __future__ import annotations

import asyncio

import pytest

from chat.aio import SharedCalls

pytestmark = pytest.mark.timeout(30)

SPACING = 0.05


class Clock:
    """The shared call: records when each call started and answers with that time."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    async def call(self, room: str) -> float:
        now = asyncio.get_running_loop().time()
        self.starts.append(now)
        await asyncio.sleep(0.001)
        return now


def closed(room: str) -> float:
    raise RuntimeError("closed")


async def test_a_lone_caller_is_answered_without_waiting_for_the_spacing() -> None:
    clock = Clock()
    shared = SharedCalls[float](clock.call, closed, SPACING)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    await shared("r")
    assert loop.time() - asked < SPACING / 2 and len(clock.starts) == 1
    await shared.close()


async def test_a_burst_shares_one_call_per_spacing_each_started_after_its_caller_asked(
        ) -> None:
    clock = Clock()
    shared = SharedCalls[float](clock.call, closed, SPACING)
    loop = asyncio.get_running_loop()

    async def caller() -> tuple[float, float]:
        asked = loop.time()
        return asked, await shared("r")

    callers = []
    for _ in range(40):  # one every 5 ms for 0.2 s
        callers.append(asyncio.ensure_future(caller()))
        await asyncio.sleep(0.005)
    answers = await asyncio.gather(*callers)
    assert all(started >= asked for asked, started in answers)  # never older than asked
    assert len(clock.starts) <= 7  # 0.2 s / 50 ms + the first + the last; not 40
    gaps = [b - a for a, b in zip(clock.starts, clock.starts[1:], strict=False)]
    assert gaps and min(gaps) >= SPACING * 0.95
    await shared.close()


async def test_without_spacing_a_caller_after_the_last_call_gets_its_own_at_once() -> None:
    clock = Clock()
    shared = SharedCalls[float](clock.call, closed)
    for _ in range(5):
        await shared("r")
        await asyncio.sleep(0.005)
    assert len(clock.starts) == 5


async def test_close_during_the_spacing_answers_the_waiting_callers() -> None:
    clock = Clock()
    shared = SharedCalls[float](clock.call, closed, 10.0)
    await shared("r")
    waiting = asyncio.ensure_future(shared("r"))  # its call is ten seconds away
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await shared.close()
    with pytest.raises(RuntimeError, match="closed"):
        await waiting
    assert not shared.runners and not shared.waiting
