"""Room fan-out in-process, on a real MessageStore (moto server): order, gap fill, skip,
encode-once, slow-client isolation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chat import protocol
from chat.config import Config
from chat.metrics import Metrics
from chat.rooms import Client, Room, Rooms
from chat.store import MessageStore
from tests.conftest import Service
from tests.storestack import claim_alone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def frames_of(data: bytes) -> list[str]:
    """The texts of the server frames in `data` (unmasked, 7/16-bit length)."""
    out, i = [], 0
    while i < len(data):
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(data[i:i + 2], "big")
            i += 2
        out.append(data[i:i + n].decode())
        i += n
    return out


_decoded: dict[int, tuple[bytes, list[str]]] = {}  # id(bytes written) -> its frames


class FakeWs:
    """Stands in for the WebSocket: a `chat.ws.Transport` that records what is written.

    `writes` holds each write's bytes; `sent` the frames' texts in order. The texts of one
    bytes object are decoded once, so a str in `sent` is shared by two clients exactly
    when the same bytes object was written to both (encoded once for all recipients).
    With `block`, writes are refused (the transport pushes back) until it is set."""

    def __init__(self, block: bool = False) -> None:
        self.sent: list[str] = []
        self.writes: list[bytes] = []
        self.block = asyncio.Event()
        if not block:
            self.block.set()
        self.failed: int | None = None

    def write(self, data: bytes) -> bool:
        if not self.block.is_set() or self.failed is not None:
            return False
        held = _decoded.get(id(data))
        if held is None or held[0] is not data:
            held = _decoded[id(data)] = (data, frames_of(data))
        self.writes.append(bytes(data))
        self.sent.extend(held[1])
        return True

    def is_open(self) -> bool:
        return self.failed is None

    async def writable(self) -> bool:
        await self.block.wait()
        return self.is_open()

    def fail(self, code: int, reason: str = "") -> None:
        self.failed = code

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.failed = code


@pytest.fixture
async def store(moto_server: Service) -> AsyncIterator[MessageStore]:
    s = MessageStore(Config(dynamodb_endpoint=moto_server.url))
    await s.start()
    await s.init_tables()
    yield s
    await s.close()


def make_rooms(store: MessageStore, **cfg: Any) -> Rooms:
    config = Config(dynamodb_endpoint=store.config.dynamodb_endpoint,
                    **{"gap_wait": 0.05, "gap_skip": 1.0, **cfg})

    async def presence(room: str) -> dict[str, int]:
        return {}

    return Rooms(config, store, Metrics("blue", "v1"), presence)


async def add_client(rooms: Rooms, room: str, ws: FakeWs, queue: int = 100) -> tuple[Client,
                                                                                   Room]:
    c = Client(ws, user_id=1, name="n", room=room, queue_size=queue, metrics=rooms.metrics,
               slow_seconds=0.5)
    r = rooms.join(c)
    c.start()
    await r.ensure_initialised()
    _, last, _ = await r.history(None)
    r.go_live(c, last)
    return c, r


async def store_message(store: MessageStore, room: str, text: str) -> tuple[int, str, int]:
    res = await store.append(room=room, user_id=7, name="w", text=text,
                             client_id=uuid.uuid4().hex, color="green")
    assert res.frame is not None
    return res.seq, protocol.encode(res.frame), res.ts


def seqs(ws: FakeWs) -> list[int]:
    return [json.loads(f)["seq"] for f in ws.sent if '"type":"message"' in f]


async def until(pred, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_out_of_order_arrival_is_delivered_in_order_with_gap_filled_from_store(store):
    rooms = make_rooms(store)
    room = "g-" + uuid.uuid4().hex[:8]
    ws = FakeWs()
    await add_client(rooms, room, ws)
    m1, m2, m3 = [await store_message(store, room, f"t{i}") for i in range(3)]
    r = rooms.rooms[room]
    r.offer(*m3)  # 3 arrives first: held
    r.offer(*m1)  # 1 is delivered at once
    await until(lambda: seqs(ws) == [m1[0]])
    # 2 never comes over the bus: the room reads it from the store after gap_wait
    await until(lambda: seqs(ws) == [m1[0], m2[0], m3[0]])
    r.offer(*m2)  # a late duplicate is dropped
    r.offer(*m3)
    await asyncio.sleep(0.1)
    assert seqs(ws) == [m1[0], m2[0], m3[0]]


async def test_a_gap_fill_reads_only_the_missing_numbers_not_the_waiting_ones(store):
    # Odd numbers arrive over the bus, even ones never do: the room must read the 10
    # missing ones, not the 10 already waiting between them (a read from the lowest
    # hole to the highest returns those again, on every pass, while the store is slow).
    rooms = make_rooms(store)
    room = "g-" + uuid.uuid4().hex[:8]
    ws = FakeWs()
    await add_client(rooms, room, ws)
    msgs = [await store_message(store, room, f"t{i}") for i in range(20)]
    read: list[int] = []
    real_range = store.range

    async def counted_range(room_: str, first: int, last: int):
        found = await real_range(room_, first, last)
        read.extend(found)
        return found

    store.range = counted_range  # type: ignore[method-assign]
    r = rooms.rooms[room]
    waiting = {m[0] for m in msgs[1::2]}
    for m in msgs[1::2]:
        r.offer(*m)
    await until(lambda: seqs(ws) == [m[0] for m in msgs])
    assert sorted(read) == [m[0] for m in msgs[0::2]]
    assert not waiting & set(read)


async def test_a_number_that_never_gets_stored_is_skipped_after_the_bounded_wait(store):
    rooms = make_rooms(store, gap_skip=0.5)
    room = "s-" + uuid.uuid4().hex[:8]
    ws = FakeWs()
    await add_client(rooms, room, ws)
    m1 = await store_message(store, room, "a")
    burned = await store._add(f"room#{room}")  # a seq whose write "failed": never stored
    m3 = await store_message(store, room, "c")
    r = rooms.rooms[room]
    r.offer(*m1)
    r.offer(*m3)
    await until(lambda: seqs(ws) == [m1[0]])
    await asyncio.sleep(0.2)
    assert seqs(ws) == [m1[0]]  # still waiting for `burned`
    await until(lambda: seqs(ws) == [m1[0], m3[0]], within=3)
    assert burned == m1[0] + 1


async def test_many_numbers_that_never_get_stored_are_skipped_within_one_bounded_wait(store):
    # Each hole waits gap_skip from when it was found missing, not from when the hole
    # before it was skipped: otherwise k holes in a row would hold the room for k x gap_skip
    # (scenario 6: tens of seconds of nothing delivered while churn keeps making holes).
    rooms = make_rooms(store, gap_skip=2.0)
    room = "k-" + uuid.uuid4().hex[:8]
    ws = FakeWs()
    await add_client(rooms, room, ws)
    stored = []
    for i in range(8):
        stored.append(await store_message(store, room, f"m{i}"))
        await store._add(f"room#{room}")  # a seq whose write "failed": never stored
    stored.append(await store_message(store, room, "last"))
    r = rooms.rooms[room]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for m in reversed(stored):
        r.offer(*m)
    await until(lambda: seqs(ws) == [stored[0][0]])
    # all 8 holes are due at about the same time: well under 8 x gap_skip (16 s)
    await until(lambda: seqs(ws) == [m[0] for m in stored], within=10)
    assert loop.time() - t0 >= 2.0  # none was skipped before its bounded wait


async def test_a_join_during_a_write_in_flight_neither_waits_for_it_nor_fences_it(store):
    # Scenario 6: under steady traffic some number below the newest is nearly always
    # still being written. A history that waited for it (up to gap_skip) and then fenced it
    # would make each join take gap_skip and fail someone's send, and a client that churned
    # again meanwhile would never get a history (last_on_conn -1). History stops before
    # it, and the room delivers it, and what follows, from the joining client's buffer.
    rooms = make_rooms(store, gap_skip=30)
    room = "j-" + uuid.uuid4().hex[:8]
    ws1 = FakeWs()
    _, r = await add_client(rooms, room, ws1)
    m1 = await store_message(store, room, "a")
    r.offer(*m1)
    inflight = await store._add(f"room#{room}")  # number taken, message not stored yet
    m3 = await store_message(store, room, "c")
    r.offer(*m3)
    ws2 = FakeWs()
    c2 = Client(ws2, user_id=2, name="late", room=room, queue_size=100,
                metrics=rooms.metrics, slow_seconds=0.5)
    rooms.join(c2)
    history, last, more = await asyncio.wait_for(r.history(m1[0] - 1), 5)
    assert [m["seq"] for m in history] == [m1[0]] and last == m1[0] and not more
    r.go_live(c2, last)
    # the slow write lands: nobody fenced its number, so its conditional put succeeds
    ts = m1[2] + 1
    frame = protocol.message_frame(room=room, seq=inflight, user_id=7, name="w", text="b",
                                   ts=ts, color="green")
    await store.client.put_item(
        TableName=store.messages,
        Item={"room": {"S": room}, "seq": {"N": str(inflight)}, "user_id": {"N": "7"},
              "name": {"S": "w"}, "text": {"S": "b"}, "ts": {"N": str(ts)},
              "color": {"S": "green"}, "client_id": {"S": uuid.uuid4().hex}},
        ConditionExpression="attribute_not_exists(seq)")
    r.offer(inflight, protocol.encode(frame), ts)
    want = [m1[0], inflight, m3[0]]
    await until(lambda: seqs(ws1) == want)
    await until(lambda: seqs(ws2) == want[1:])


async def test_a_send_cancelled_half_way_voids_its_number_so_rooms_skip_it_at_once(store):
    # A connection closed while its send was being stored (churn, migration: Sanic
    # cancels the handler) left a number with no item, and every room waited gap_skip
    # for it; many of them under churn held rooms for tens of seconds.
    rooms = make_rooms(store, gap_skip=30)
    room = "x-" + uuid.uuid4().hex[:8]
    ws = FakeWs()
    _, r = await add_client(rooms, room, ws)
    m1 = await store_message(store, room, "a")
    stuck = asyncio.Event()
    real_commit = store._commit

    async def slow_commit(*args: Any, **kwargs: Any) -> bool:
        stuck.set()
        await asyncio.Event().wait()  # the connection goes away during this call
        return await real_commit(*args, **kwargs)

    store._commit = slow_commit  # type: ignore[method-assign]
    send = asyncio.create_task(store.append(room=room, user_id=7, name="w", text="b",
                                            client_id=uuid.uuid4().hex, color="green"))
    await asyncio.wait_for(stuck.wait(), 10)
    send.cancel()
    with pytest.raises(asyncio.CancelledError):
        await send
    store._commit = real_commit  # type: ignore[method-assign]
    m3 = await store_message(store, room, "c")
    r.offer(*m1)
    r.offer(*m3)
    await until(lambda: seqs(ws) == [m1[0], m3[0]], within=10)
    assert m3[0] == m1[0] + 2


async def test_a_void_number_is_skipped_at_once(store):
    rooms = make_rooms(store, gap_skip=30)
    room = "v-" + uuid.uuid4().hex[:8]
    ws = FakeWs()
    await add_client(rooms, room, ws)
    m1 = await store_message(store, room, "a")
    burned = await store._add(f"room#{room}")
    await store._void(room, burned)
    m3 = await store_message(store, room, "c")
    r = rooms.rooms[room]
    r.offer(*m1)
    r.offer(*m3)
    await until(lambda: seqs(ws) == [m1[0], m3[0]], within=3)


async def test_each_message_is_encoded_once_for_all_recipients(store):
    rooms = make_rooms(store)
    room = "e-" + uuid.uuid4().hex[:8]
    a, b = FakeWs(), FakeWs()
    await add_client(rooms, room, a)
    await add_client(rooms, room, b)
    m1 = await store_message(store, room, "shared")
    rooms.rooms[room].offer(*m1)
    await until(lambda: seqs(a) and seqs(b))
    msg_a = next(f for f in a.sent if '"type":"message"' in f)
    msg_b = next(f for f in b.sent if '"type":"message"' in f)
    assert msg_a is msg_b  # the very same str object


async def test_stuck_client_is_failed_1013_and_the_others_are_not_delayed(store):
    rooms = make_rooms(store)
    room = "k-" + uuid.uuid4().hex[:8]
    stuck, ok = FakeWs(block=True), FakeWs()
    c_stuck, _ = await add_client(rooms, room, stuck, queue=5)
    await add_client(rooms, room, ok, queue=5)
    r = rooms.rooms[room]
    base = r.next_seq
    assert base is not None
    for i in range(20):
        r.offer(base + i, protocol.encode({"type": "message", "seq": base + i}), 0)
        await asyncio.sleep(0.05)  # the healthy writer keeps up
    assert stuck.failed == protocol.CLOSE_TRY_LATER and c_stuck.closed
    assert seqs(ok) == list(range(base, base + 20))


async def test_concurrent_sends_of_one_client_id_store_one_message(store):
    room = "c-" + uuid.uuid4().hex[:8]
    sends = [store.append(room=room, user_id=1, name="n", text="x", client_id="same",
                          color="blue") for _ in range(4)]
    results = await asyncio.gather(*sends)
    assert len({r.seq for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    items = await store.query(room, since=0, limit=100)
    stored = [it for it in items if "void" not in it]
    assert len(stored) == 1 and int(stored[0]["seq"]["N"]) == results[0].seq


async def test_a_client_id_whose_first_write_failed_can_be_sent_again(store):
    room = "f-" + uuid.uuid4().hex[:8]
    seq = await store._add(f"room#{room}")
    assert await claim_alone(store, room, "retry", seq)
    await store._void(room, seq)  # the first attempt's message write failed
    again = await store.append(room=room, user_id=1, name="n", text="x", client_id="retry",
                                 color="blue")
    assert not again.duplicate and again.seq > seq
    resend = await store.append(room=room, user_id=1, name="n", text="x", client_id="retry",
                                 color="blue")
    assert resend.duplicate and resend.seq == again.seq


def wire_seqs(data: bytes) -> list[int]:
    """The seqs of the message frames in `data` (server frames: unmasked, 7/16-bit length)."""
    frames = [json.loads(text) for text in frames_of(data)]
    return [f["seq"] for f in frames if f["type"] == "message"]


async def test_messages_due_in_one_loop_turn_reach_each_client_in_one_write(store):
    rooms = make_rooms(store)
    room = "b-" + uuid.uuid4().hex[:8]
    ws = FakeWs()
    late = FakeWs()
    _, r = await add_client(rooms, room, ws)
    msgs = [await store_message(store, room, f"m{i}") for i in range(5)]
    # a second client whose history covered the first two of them
    c2 = Client(late, user_id=2, name="l", room=room, queue_size=100, metrics=rooms.metrics)
    rooms.join(c2)
    r.go_live(c2, msgs[1][0])
    before = len(ws.writes)
    for m in reversed(msgs):  # all due in this turn once the first arrives
        r.offer(*m)
    assert ws.writes[before:] == []  # nothing written mid-turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    writes = ws.writes[before:]
    assert len(writes) == 1, writes
    assert wire_seqs(writes[0]) == [m[0] for m in msgs]
    assert [s for w in late.writes for s in wire_seqs(w)] == \
        [m[0] for m in msgs[2:]]


async def _paced_room(store, members: int, cost: float = 0.0,
                      **cfg: Any) -> tuple[Room, list[FakeWs]]:
    """A room of `members` clients; `cost`: seconds each write takes (a slow kernel).
    CHAT_FLUSH_DUTY 0 (a fixed interval) unless `cfg` says otherwise."""
    rooms = make_rooms(store, **{"flush_duty": 0.0, **cfg})
    room = "p-" + uuid.uuid4().hex[:8]
    sockets = [SlowWs(cost) for _ in range(members)]
    r = None
    for ws in sockets:
        _, r = await add_client(rooms, room, ws)
    assert r is not None
    return r, sockets


class SlowWs(FakeWs):
    """A FakeWs whose every write takes `cost` seconds of the loop, as a kernel that
    needs that long to take the bytes (a large room on a busy machine)."""

    def __init__(self, cost: float) -> None:
        super().__init__()
        self.cost = cost

    def write(self, data: bytes) -> bool:
        if self.cost:
            time.sleep(self.cost)  # the loop is blocked, as it is while the kernel works
        return super().write(data)


def _writes(ws: FakeWs) -> list[list[int]]:
    return [wire_seqs(w) for w in ws.writes if wire_seqs(w)]


async def test_a_large_room_writes_at_most_once_per_flush_interval(store):
    r, sockets = await _paced_room(store, 3, flush_interval=0.3, flush_members=3)
    msgs = [await store_message(store, r.name, f"m{i}") for i in range(4)]
    r.offer(*msgs[0])  # after a quiet spell: out at the end of this turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert all(_writes(ws) == [[msgs[0][0]]] for ws in sockets)
    for m in msgs[1:]:  # each in its own loop turn, all within the interval
        r.offer(*m)
        await asyncio.sleep(0)
    assert all(_writes(ws) == [[msgs[0][0]]] for ws in sockets)  # held back
    await until(lambda: all(len(_writes(ws)) == 2 for ws in sockets))
    for ws in sockets:  # the three that came meanwhile: one write, in order, each once
        assert _writes(ws) == [[msgs[0][0]], [m[0] for m in msgs[1:]]]


async def test_a_room_below_flush_members_writes_each_message_at_once(store):
    r, sockets = await _paced_room(store, 2, flush_interval=0.3, flush_members=3)
    msgs = [await store_message(store, r.name, f"m{i}") for i in range(3)]
    for m in msgs:
        r.offer(*m)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    for ws in sockets:
        assert _writes(ws) == [[m[0]] for m in msgs]


async def test_a_client_joining_while_a_paced_flush_waits_gets_every_message_once(store):
    r, sockets = await _paced_room(store, 3, flush_interval=0.3, flush_members=3)
    first = await store_message(store, r.name, "first")
    r.offer(*first)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    held = await store_message(store, r.name, "held")
    r.offer(*held)  # waits for the interval
    late = FakeWs()
    c = Client(late, user_id=9, name="late", room=r.name, queue_size=100,
               metrics=r.rooms.metrics)
    r.rooms.join(c)
    history, last, _ = await r.history(None)  # the store has both messages already
    assert [int(m["seq"]) for m in history] == [first[0], held[0]]
    r.go_live(c, last)
    await until(lambda: all(len(_writes(ws)) == 2 for ws in sockets))
    await asyncio.sleep(0.05)
    assert _writes(late) == []  # its history had both: nothing twice


async def test_a_paced_room_flushes_early_once_flush_batch_messages_wait(store):
    r, sockets = await _paced_room(store, 3, flush_interval=0.9, flush_members=3,
                                   flush_batch=3)
    msgs = [await store_message(store, r.name, f"m{i}") for i in range(5)]
    r.offer(*msgs[0])
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    for m in msgs[1:4]:  # the third waiting one triggers the flush, long before the interval
        r.offer(*m)
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    for ws in sockets:
        assert _writes(ws) == [[msgs[0][0]], [m[0] for m in msgs[1:4]]]
    r.offer(*msgs[4])  # paced again after that flush
    await asyncio.sleep(0.05)
    assert all(len(_writes(ws)) == 2 for ws in sockets)


async def test_a_large_room_whose_writes_are_cheap_writes_each_message_at_once(store):
    # CHAT_FLUSH_DUTY: a room of CHAT_FLUSH_MEMBERS whose flushes take a small share of the
    # loop is not held back: each message after the last flush's spacing goes at once.
    r, sockets = await _paced_room(store, 3, flush_interval=1.0, flush_members=3,
                                   flush_duty=0.5)
    msgs = [await store_message(store, r.name, f"m{i}") for i in range(3)]
    for m in msgs:
        await asyncio.sleep(r.spacing)  # the room is idle again
        r.offer(*m)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert r.spacing < 1.0  # three cheap writes: far below the interval
    for ws in sockets:
        assert _writes(ws) == [[m[0]] for m in msgs]


async def test_a_large_room_whose_writes_are_costly_coalesces_in_order(store):
    # each flush writes to 3 clients at 50 ms each: >= 150 ms of the loop, so with
    # CHAT_FLUSH_DUTY 0.5 the next flush waits >= 300 ms from the start of the last one
    r, sockets = await _paced_room(store, 3, cost=0.05, flush_interval=1.0, flush_members=3,
                                   flush_duty=0.5)
    msgs = [await store_message(store, r.name, f"m{i}") for i in range(4)]
    r.offer(*msgs[0])  # after a quiet spell: at once
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert all(_writes(ws) == [[msgs[0][0]]] for ws in sockets)
    assert r.spacing >= 0.3
    for m in reversed(msgs[1:]):  # out of order, each in its own turn, while it is busy
        r.offer(*m)
        await asyncio.sleep(0)
    assert all(_writes(ws) == [[msgs[0][0]]] for ws in sockets)  # held back
    await until(lambda: all(len(_writes(ws)) == 2 for ws in sockets))
    for ws in sockets:  # the three that came meanwhile: one write, in order, each once
        assert _writes(ws) == [[msgs[0][0]], [m[0] for m in msgs[1:]]]
        assert seqs(ws) == [m[0] for m in msgs]


async def test_a_busy_rooms_wait_is_bounded_by_the_flush_interval(store):
    # 3 x 20 ms = 60 ms per flush at a 1 % duty would mean 6 s between flushes; the
    # interval bounds it
    r, sockets = await _paced_room(store, 3, cost=0.02, flush_interval=0.4, flush_members=3,
                                   flush_duty=0.01)
    msgs = [await store_message(store, r.name, f"m{i}") for i in range(2)]
    r.offer(*msgs[0])
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert r.spacing == 0.4
    r.offer(*msgs[1])
    await asyncio.sleep(0)
    assert all(len(_writes(ws)) == 1 for ws in sockets)  # held back
    await until(lambda: all(len(_writes(ws)) == 2 for ws in sockets), within=3.0)
    for ws in sockets:
        assert _writes(ws) == [[msgs[0][0]], [msgs[1][0]]]


async def test_a_room_below_flush_members_is_never_held_back_however_costly(store):
    r, sockets = await _paced_room(store, 2, cost=0.05, flush_interval=1.0, flush_members=3,
                                   flush_duty=0.1)
    msgs = [await store_message(store, r.name, f"m{i}") for i in range(2)]
    for m in msgs:
        r.offer(*m)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert r.spacing == 0.0
    for ws in sockets:
        assert _writes(ws) == [[m[0]] for m in msgs]
