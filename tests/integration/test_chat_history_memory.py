"""Joins' history from the room's memory (CHAT_HISTORY_MEMORY), on a real MessageStore (moto
server): the same answer as the store's for the same join (with and without since, with void
numbers, with a write in flight, with messages passed but not flushed yet), the tail seeded
from the store, and the store read again once the tail no longer reaches back far enough."""

from __future__ import annotations

import json
import uuid

import pytest

from chat import protocol
from chat import rooms as rooms_module
from chat.config import Config
from chat.rooms import Client, Room, Rooms
from chat.store import MessageStore
from tests.integration.test_chat_rooms import (
    FakeWs,
    add_client,
    make_rooms,
    seqs,
    store,
    store_message,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

__all__ = ["store"]  # the fixture, shared with test_chat_rooms.py


def joiner(rooms: Rooms, room: str, ws: FakeWs) -> Client:
    c = Client(ws, user_id=2, name="late", room=room, queue_size=2000, metrics=rooms.metrics,
               slow_seconds=5)
    rooms.join(c)
    return c


async def same_as_store(r: Room, since: int | None) -> tuple[list[int], int, bool]:
    """memory_history(since) is there and answers what history(since) reads from the store:
    the same frame text (same messages, same more) and the same last. Returns the answer."""
    found = r.memory_history(since)
    assert found is not None, f"since={since}: not covered by the tail"
    frames, last, more = found
    messages, store_last, store_more = await r.history(since)
    assert protocol.history_frame_of(frames, more) == protocol.history_frame(messages,
                                                                             store_more)
    assert (last, more) == (store_last, store_more), f"since={since}"
    return [json.loads(f)["seq"] for f in frames], last, more


async def fill(store: MessageStore, r: Room, n: int, voids: set[int]) -> list[int]:
    """n numbers in the room, passed by it: messages, except the indexes in `voids`, whose
    numbers are void in the store (as a failed write leaves them) and offered as void (as
    the room's gap fill reads them). Returns the numbers."""
    out = []
    for i in range(n):
        if i in voids:
            seq = await store._add(f"room#{r.name}")
            await store._void(r.name, seq)
            r.offer(seq, None, 0)
        else:
            seq, frame, ts = await store_message(store, r.name, f"m{i} ✓ 한국어")
            r.offer(seq, frame, ts)
        out.append(seq)
    assert r.next_seq == out[-1] + 1
    return out


def test_the_memory_is_read_from_the_environment_and_checked() -> None:
    assert Config.from_env({}).history_memory == 1000
    assert Config.from_env({"CHAT_HISTORY_MEMORY": "0"}).history_memory == 0
    for bad in ("-1", "100001"):
        with pytest.raises(ValueError):
            Config.from_env({"CHAT_HISTORY_MEMORY": bad})


async def test_a_history_from_memory_equals_the_stores_with_and_without_since(store):
    rooms = make_rooms(store)
    room = "hm-" + uuid.uuid4().hex[:8]
    _, r = await add_client(rooms, room, FakeWs())  # a new room: the tail covers it all
    assert await same_as_store(r, None) == ([], 0, False)
    numbers = await fill(store, r, 64, voids={3, 40, 63})
    mem, last, more = await same_as_store(r, None)
    # the latest 50 numbers, voids counted (as the store's Query counts items)
    assert mem == [s for s in numbers[-50:] if s not in (numbers[40], numbers[63])]
    assert last == numbers[-1] and not more
    for since in (0, 1, numbers[2], numbers[3], numbers[30], numbers[62], numbers[63],
                  numbers[63] + 5):
        await same_as_store(r, since)
    assert rooms.metrics.histories.total() == 0  # memory_history() alone counts nothing


async def test_more_is_what_the_store_says_at_the_since_limit(store, monkeypatch):
    monkeypatch.setattr(protocol, "HISTORY_SINCE_MAX", 10)  # 10 numbers stand for 1,000
    rooms = make_rooms(store)
    room = "hl-" + uuid.uuid4().hex[:8]
    _, r = await add_client(rooms, room, FakeWs())
    numbers = await fill(store, r, 14, voids={5})
    assert (await same_as_store(r, 0))[1:] == (numbers[9], True)  # 10 numbers, one void
    assert (await same_as_store(r, numbers[3]))[1:] == (numbers[13], True)  # exactly 10
    assert (await same_as_store(r, numbers[4]))[1:] == (numbers[13], False)


async def test_a_join_during_a_write_in_flight_gets_it_from_its_buffer(store):
    rooms = make_rooms(store, gap_skip=30)
    room = "hw-" + uuid.uuid4().hex[:8]
    ws1 = FakeWs()
    _, r = await add_client(rooms, room, ws1)
    before = await fill(store, r, 3, voids=set())
    inflight = await store._add(f"room#{room}")  # number taken, message not stored yet
    after = await store_message(store, room, "after")
    r.offer(*after)  # waits in pending for the number in flight
    assert r.next_seq == inflight
    ws2 = FakeWs()
    c2 = joiner(rooms, room, ws2)
    frame, n, last = await r.join_history(before[0] - 1)
    assert (json.loads(frame)["messages"][-1]["seq"], n, last) == (before[-1], 3, before[-1])
    assert await same_as_store(r, before[0] - 1) == (before, before[-1], False)
    assert await same_as_store(r, None) == (before, before[-1], False)
    assert rooms.metrics.histories.total("memory") == 1
    r.go_live(c2, last)
    # the slow write lands: the room passes it and what waited behind it; the joiner gets
    # both from its buffer, once
    ts = after[2]
    msg = protocol.message_frame(room=room, seq=inflight, user_id=7, name="w", text="b",
                                 ts=ts, color="green")
    await store.client.put_item(
        TableName=store.messages,
        Item={"room": {"S": room}, "seq": {"N": str(inflight)}, "user_id": {"N": "7"},
              "name": {"S": "w"}, "text": {"S": "b"}, "ts": {"N": str(ts)},
              "color": {"S": "green"}, "client_id": {"S": uuid.uuid4().hex}},
        ConditionExpression="attribute_not_exists(seq)")
    r.offer(inflight, protocol.encode(msg), ts)
    await until(lambda: seqs(ws2) == [inflight, after[0]])
    await until(lambda: seqs(ws1) == [*before, inflight, after[0]])
    assert (await same_as_store(r, before[-1]))[0] == [inflight, after[0]]


async def test_messages_passed_but_not_flushed_reach_a_joiner_once(store):
    # A message in the outbox has passed (the tail has it) but not been written to anyone:
    # a join in between gets it in its history, and the flush that follows must not give
    # it to the joiner a second time (go_live's floor).
    rooms = make_rooms(store)
    room = "ho-" + uuid.uuid4().hex[:8]
    ws1 = FakeWs()
    _, r = await add_client(rooms, room, ws1)
    m1 = await store_message(store, room, "a")
    m2 = await store_message(store, room, "b")
    r.offer(*m1)
    r.offer(*m2)
    assert r.outbox  # not flushed yet: that happens at the end of this loop turn
    ws2 = FakeWs()
    c2 = joiner(rooms, room, ws2)
    frame, n, last = await r.join_history(None)
    assert r.outbox and n == 2 and last == m2[0]
    assert [m["seq"] for m in json.loads(frame)["messages"]] == [m1[0], m2[0]]
    r.go_live(c2, last)
    m3 = await store_message(store, room, "c")
    r.offer(*m3)
    await until(lambda: seqs(ws1) == [m1[0], m2[0], m3[0]])
    await until(lambda: seqs(ws2) == [m3[0]])
    assert seqs(ws2) == [m3[0]]


async def test_the_tail_is_seeded_from_the_store_when_a_room_starts(store):
    room = "hs-" + uuid.uuid4().hex[:8]
    old = make_rooms(store)
    _, r_old = await add_client(old, room, FakeWs())
    numbers = await fill(store, r_old, 60, voids={55})
    # another instance's room starts now: its tail is the store's latest 50 numbers
    rooms = make_rooms(store)
    _, r = await add_client(rooms, room, FakeWs())
    assert r.tail is not None and [s for s, _ in r.tail] == numbers[-50:]
    assert (await same_as_store(r, None))[1] == numbers[-1]
    await same_as_store(r, numbers[9])  # the first number the tail holds is numbers[10]
    assert r.memory_history(numbers[8]) is None  # numbers[9] is before it: the store's


async def test_a_join_after_the_tail_rolled_past_falls_back_to_the_store(store):
    rooms = make_rooms(store, history_memory=5)
    room = "hr-" + uuid.uuid4().hex[:8]
    _, r = await add_client(rooms, room, FakeWs())
    numbers = await fill(store, r, 8, voids={6})
    assert r.tail is not None and [s for s, _ in r.tail] == numbers[3:]  # bounded
    await same_as_store(r, numbers[2])  # numbers[3] on: still in memory
    for since in (numbers[1], 0, None):  # reaches further back (None: 50 of 8 numbers)
        assert r.memory_history(since) is None
        before = rooms.metrics.histories.total("store")
        frame, n, last = await r.join_history(since)
        messages, store_last, more = await r.history(since)
        assert (frame, n, last) == (protocol.history_frame(messages, more), len(messages),
                                    store_last)
        assert rooms.metrics.histories.total("store") == before + 1
    assert rooms.metrics.histories.total("memory") == 0


async def test_the_tail_is_bounded_in_characters_too(store, monkeypatch):
    rooms = make_rooms(store)
    room = "hc-" + uuid.uuid4().hex[:8]
    _, r = await add_client(rooms, room, FakeWs())
    numbers = await fill(store, r, 6, voids={4})
    assert r.tail is not None
    one = max(len(f) for _, f in r.tail if f is not None)
    monkeypatch.setattr(rooms_module, "TAIL_CHARS_MAX", 3 * one)
    numbers += await fill(store, r, 3, voids=set())
    # at most three message frames' worth of characters: the last three messages (the
    # void number before them went out with the older ones)
    assert [s for s, _ in r.tail] == numbers[-3:]
    assert r.tail_chars == sum(len(f) for _, f in r.tail if f is not None) <= 3 * one
    await same_as_store(r, numbers[-4])
    assert r.memory_history(numbers[-5]) is None  # reaches further back: the store's
    assert r.memory_history(None) is None  # the latest 50 are not all there


async def test_with_the_memory_off_every_join_reads_the_store(store):
    rooms = make_rooms(store, history_memory=0)
    room = "h0-" + uuid.uuid4().hex[:8]
    _, r = await add_client(rooms, room, FakeWs())
    await fill(store, r, 2, voids=set())
    assert r.tail is None and r.memory_history(None) is None
    await r.join_history(None)
    assert rooms.metrics.histories.total("store") == 1

