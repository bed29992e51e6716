"""Rooms: in-order, exactly-once fan-out of a room's messages to this instance's clients.

Messages reach a room from the bus (other instances), from this instance's own sends, and
from the store (gap fill and catch-up). A room delivers them strictly by seq: a message
whose predecessor is missing waits; after `gap_wait` the room reads the missing numbers
from the store; a number still missing after `gap_skip` (its write failed) is skipped.

Each message is encoded once, to JSON and to WebSocket frame bytes; the same bytes go to
every client's transport (or its bounded backlog while the transport pushes back), and a
client that falls behind is closed with 1013 instead of slowing anyone else down. A large
room whose writes would take more than CHAT_FLUSH_DUTY of the event loop holds its
messages for a while (at most CHAT_FLUSH_INTERVAL) and writes several per write
(`Room._deliver`): a write costs the kernel about the same for one frame as for ten.

A room also keeps the tail of what it has passed (CHAT_HISTORY_MEMORY numbers, messages and
void numbers), so most joins get their history from memory instead of a DynamoDB Query
(`Room.join_history`); DynamoDB stays the source of truth: a message reaches a room only
after its durable write, and the tail starts from a read of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

from . import protocol
from .message import Message
from .metrics import Metrics
from .store import MessageStore, StoreUnavailable
from .ws import Transport, text_frame

log = logging.getLogger("chat.rooms")

PRESENCE_COALESCE = 0.25  # seconds: presence frames at most ~4 per second per room
# A room's tail holds at most this many characters of message frames, whatever
# CHAT_HISTORY_MEMORY says: 1,000 typical messages fit (~250 characters each), while a
# room filled with 2,000-character messages keeps only its last ~130 (the rest of a
# history reads the store), so a few connections cannot make each room they join cost
# megabytes.
TAIL_CHARS_MAX = 256 * 1024
# A gap fill reads the missing numbers' runs, lowest first, at most this many per pass: a
# read of everything from the lowest hole to the highest would also return every message
# already waiting between them (hundreds while the store is slow, on every pass).
GAP_RUNS_PER_PASS = 8



class Client:
    """One WebSocket (a `chat.ws.Transport`) and its bounded backlog of outgoing frames.

    Fast path: while nothing is waiting, a frame's WebSocket bytes (built once per message
    by the room, shared by every recipient) go straight to `ws.write`: no task switch, no
    lock, no per-recipient encoding. When the transport pushes back (its buffer is over
    the high-water mark) frames wait in a bounded deque that a writer task, started only
    then, drains in order. An idle connection therefore holds no task and no queue object
    of its own.
    """

    __slots__ = ("blocked_since", "buffer", "close_code", "closed", "floor", "metrics",
                 "migrated", "name", "pending", "queue_size", "room", "slow_seconds",
                 "user_id", "writer", "ws")

    def __init__(self, ws: Transport, *, user_id: int, name: str, room: str,
                 queue_size: int, metrics: Metrics, slow_seconds: float = 5.0) -> None:
        self.ws = ws
        self.user_id = user_id
        self.name = name
        self.room = room
        self.metrics = metrics
        self.queue_size = queue_size
        # Waiting writes (frame bytes); None while nothing waits, so an idle connection
        # does not carry an empty deque.
        self.pending: deque[bytes] | None = None
        self.buffer: list[tuple[int, str]] | None = []  # live frames held while joining
        # The last seq its history covered: the room may lag behind the store (Redis down,
        # a slow bus), so live frames at or below it would repeat or come out of order.
        self.floor = 0
        self.closed = False
        self.close_code: int | None = None
        self.migrated = False
        self.writer: asyncio.Task[None] | None = None
        self.slow_seconds = slow_seconds
        self.blocked_since: float | None = None  # frames waiting on the peer since

    def start(self) -> None:
        """Nothing to start: the writer task starts only when frames have to wait."""

    def offer(self, frame: str, wire: bytes | None = None) -> bool:
        """Send or queue a frame without waiting; a client that falls behind gets 1013.

        `wire` is the frame's WebSocket bytes when the caller built them once for many
        recipients. Falling behind: `queue_size` writes waiting (a write carries one frame,
        or the frames of one room batch: `offer_many`), or frames waiting while the peer
        has not taken any data for `slow_seconds` (its TCP window stays shut).
        """
        if self.closed:
            return False
        if wire is None:
            wire = text_frame(frame)
        if not self.pending and self.ws.write(wire):
            return True
        return self._enqueue(wire)

    def offer_many(self, joined: bytes) -> bool:
        """Several frames in order; `joined` is their WebSocket bytes back to back."""
        if self.closed:
            return False
        if not self.pending and self.ws.write(joined):
            return True
        return self._enqueue(joined)

    def _enqueue(self, item: bytes) -> bool:
        now = time.monotonic()
        if self.pending and self.blocked_since is not None \
                and now - self.blocked_since > self.slow_seconds:
            self.fail(protocol.CLOSE_TRY_LATER, "too slow to keep up")
            return False
        if self.pending is None:
            self.pending = deque()
        if len(self.pending) >= self.queue_size:
            self.fail(protocol.CLOSE_TRY_LATER, "too slow to keep up")
            return False
        if not self.pending:
            self.blocked_since = now
        self.pending.append(item)
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self._drain(), name=f"writer-{self.user_id}")
        return True

    async def _drain(self) -> None:
        ws = self.ws
        try:
            while self.pending:
                if ws.write(self.pending[0]):
                    self.pending.popleft()
                    continue
                if not ws.is_open() or not await ws.writable():
                    self.closed = True  # the connection is gone; the handler cleans up
                    self.pending = None
                    return
                self.blocked_since = time.monotonic()  # the peer took data
                # re-check: fail() may have emptied the backlog meanwhile
            self.pending = None
            self.blocked_since = None
        except asyncio.CancelledError:
            raise
        except Exception:
            self.closed = True  # the connection is gone; the handler cleans up

    def fail(self, code: int, reason: str) -> None:
        """Close now, without waiting for queued frames (used for slow clients)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.pending = None
        if self.writer:
            self.writer.cancel()
        log.info("ws_fail", extra={"event": "ws_fail", "code": code, "user_id": self.user_id,
                                   "room": self.room})
        self.ws.fail(code, reason)

    async def close(self, code: int, reason: str, flush_timeout: float = 2.0) -> None:
        """Close after the queued frames went out (or after flush_timeout)."""
        if self.closed:
            return
        deadline = time.monotonic() + flush_timeout
        while (self.pending and time.monotonic() < deadline  # noqa: ASYNC110
               and not self.closed):
            await asyncio.sleep(0.02)  # the writer empties the queue
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        if self.writer:
            self.writer.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), 2.0)

    async def stop(self) -> None:
        if self.writer:
            self.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.writer



def hole_runs(holes: list[int]) -> list[tuple[int, int]]:
    """The runs of consecutive numbers in `holes` (ascending) as (first, last) pairs."""
    runs: list[tuple[int, int]] = []
    for seq in holes:
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs

class Room:
    def __init__(self, name: str, rooms: Rooms) -> None:
        self.name = name
        self.rooms = rooms
        self.clients: set[Client] = set()
        self.next_seq: int | None = None  # next number to deliver; None until initialised
        self.pending: dict[int, tuple[str, int] | None] = {}  # seq -> (frame, ts) | void
        self.outbox: list[tuple[int, str, int]] = []  # in order, due at the next flush
        self.flushed_at = -1e9  # loop time the last flush began
        self.spacing = 0.0  # seconds after flushed_at before the next flush (`_spacing`)
        self._timer: asyncio.TimerHandle | None = None  # a flush waiting for its time
        # the read of the room's store that sets next_seq, shared by its first joins
        self._init: asyncio.Future[None] | None = None
        self._gap_task: asyncio.Task[None] | None = None
        self._presence_task: asyncio.Task[None] | None = None
        self.last_presence: str | None = None
        # The last numbers this room passed (every seq < next_seq, in order, without a hole:
        # (seq, message frame), the frame None for a void or skipped number), at most
        # CHAT_HISTORY_MEMORY of them, TAIL_CHARS_MAX characters of frames; None with the
        # memory off. It covers next_seq - len(tail) .. next_seq - 1.
        self.tail: deque[tuple[int, str | None]] | None = (
            deque() if rooms.config.history_memory > 0 else None)
        self.tail_chars = 0

    # --- ordered delivery ---

    def offer(self, seq: int, frame: str | None, ts: int) -> None:
        """A message (or, with frame None, a void number) for this room, from any source."""
        if (self.next_seq is not None and seq < self.next_seq) or seq in self.pending:
            return
        self.pending[seq] = (frame, ts) if frame is not None else None
        if self.next_seq is not None:
            self._advance()

    def _advance(self) -> None:
        assert self.next_seq is not None
        tail = self.tail
        while self.next_seq in self.pending:
            entry = self.pending.pop(self.next_seq)
            if entry is not None:
                self._deliver(self.next_seq, *entry)
            if tail is not None:  # passed now, flushed or not: joins from now cover it
                self._remember(self.next_seq, entry[0] if entry is not None else None)
            self.next_seq += 1
        if self.pending and (self._gap_task is None or self._gap_task.done()):
            self._gap_task = asyncio.create_task(self._fill_gap(), name=f"gap-{self.name}")

    def _remember(self, seq: int, frame: str | None) -> None:
        """Append a passed number to the tail, dropping its oldest beyond the bounds."""
        tail = self.tail
        assert tail is not None
        tail.append((seq, frame))
        if frame is not None:
            self.tail_chars += len(frame)
        limit = self.rooms.config.history_memory
        while len(tail) > limit or self.tail_chars > TAIL_CHARS_MAX:
            _, old = tail.popleft()
            if old is not None:
                self.tail_chars -= len(old)

    def _deliver(self, seq: int, frame: str, ts: int) -> None:
        """Deliver at the next flush, with whatever else became due before it.

        Messages that become deliverable together (a gap filled from the store, a burst
        read off the bus, a slow moment of the loop) go to each client in one transport
        write instead of one per message: fewer system calls per delivery exactly when
        the server is busiest. The flush is at the end of this event-loop turn unless the
        room is busy: a room with CHAT_FLUSH_MEMBERS or more clients here whose last
        flush began less than `spacing` ago (`_flush`: its cost divided by
        CHAT_FLUSH_DUTY, at most CHAT_FLUSH_INTERVAL) waits until then, and goes out with
        what came meanwhile, or as soon as CHAT_FLUSH_BATCH messages wait. So a room whose
        writes take a small share of the loop writes each message at once, and one whose
        writes would take more than that share (many clients, a high rate, a loaded
        machine) writes several messages per write instead of falling behind. A write
        costs the kernel about as much for one small frame as for several
        (docs/benchmarks.md).
        """
        outbox = self.outbox
        outbox.append((seq, frame, ts))
        if len(outbox) == 1:
            loop = asyncio.get_running_loop()
            if self.spacing > 0:
                due = self.flushed_at + self.spacing
                if due > loop.time():
                    self._timer = loop.call_at(due, self._flush)
                    return
            loop.call_soon(self._flush)
        elif len(outbox) == self.rooms.config.flush_batch and self._timer is not None:
            # enough for one write already: a busy room does not wait out the spacing
            self._timer.cancel()
            self._timer = None
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._timer = None
        batch, self.outbox = self.outbox, []
        if not batch:
            return
        self.flushed_at = asyncio.get_running_loop().time()
        started = time.perf_counter()
        wires = [text_frame(f) for _, f, _ in batch]  # once per message
        joined = wires[0] if len(wires) == 1 else b"".join(wires)
        first = batch[0][0]
        n = 0
        for client in list(self.clients):
            if client.buffer is not None:
                client.buffer.extend((s, f) for s, f, _ in batch)
            elif first > client.floor:
                if client.offer_many(joined):
                    n += len(batch)
            else:  # joined mid-batch: only what its history did not cover
                for (s, f, _), w in zip(batch, wires, strict=True):
                    if s > client.floor and client.offer(f, w):
                        n += 1
        self.spacing = self._spacing(time.perf_counter() - started)
        if n:
            m = self.rooms.metrics
            m.messages_out.inc(by=n)
            now = time.time()
            for _, _, ts in batch:
                m.delivery_latency.observe(max(0.0, now - ts / 1000))

    def _spacing(self, cost: float) -> float:
        """Seconds from the start of this flush before the next may start: 0 (the next
        message goes at once) unless the room has CHAT_FLUSH_MEMBERS or more clients;
        then cost / CHAT_FLUSH_DUTY, so that its flushes take at most that share of the
        loop, never more than CHAT_FLUSH_INTERVAL (CHAT_FLUSH_DUTY 0: the interval)."""
        cfg = self.rooms.config
        interval = cfg.flush_interval
        if interval <= 0 or len(self.clients) < cfg.flush_members:
            return 0.0
        if cfg.flush_duty <= 0:
            return interval
        return min(interval, cost / cfg.flush_duty)

    async def _fill_gap(self) -> None:
        cfg = self.rooms.config
        started = time.monotonic()
        # When each missing number was first found missing (any number below the highest
        # one waiting): each is skipped gap_skip after that, on its own clock. (One clock
        # for the lowest hole only, restarted after every skip, made k holes cost
        # k x gap_skip; under churn the room fell behind by tens of seconds.)
        missing_since: dict[int, float] = {}
        await asyncio.sleep(cfg.gap_wait)
        noticed = started
        while self.pending and self.next_seq is not None:
            holes = [s for s in range(self.next_seq, max(self.pending))
                     if s not in self.pending]
            if holes:
                found: dict[int, Message | None] = {}
                try:
                    for first, last in hole_runs(holes)[:GAP_RUNS_PER_PASS]:
                        found.update(await self.rooms.store.range(self.name, first, last))
                except StoreUnavailable:
                    pass  # what was read is used; the rest is tried on the next pass
                for seq, msg in found.items():
                    self.offer(seq, protocol.encode(msg) if msg else None,
                               msg["ts"] if msg else 0)
                for seq in holes:
                    if seq not in found:
                        missing_since.setdefault(seq, noticed)
            if not self.pending or self.next_seq is None:
                break
            now = noticed = time.monotonic()
            for seq in [s for s in missing_since if s < self.next_seq or s in self.pending]:
                del missing_since[seq]
            # Skip every number missing for gap_skip, all at once; only a number the
            # store agrees is void: a write slower than gap_skip must not be acked after
            # this room gave up on it.
            due = sorted(s for s, t in missing_since.items() if now - t > cfg.gap_skip)[:50]
            if due:
                got = await asyncio.gather(*(self.rooms.store.fence(self.name, s) for s in due),
                                           return_exceptions=True)
                for seq, res in zip(due, got, strict=True):
                    if isinstance(res, StoreUnavailable):
                        continue  # tried again on the next pass
                    if isinstance(res, BaseException):
                        raise res
                    if res is None:
                        log.warning("seq_skipped", extra={"event": "seq_skipped",
                                                          "room": self.name, "seq": seq})
                    self.offer(seq, protocol.encode(res) if res else None,
                               res["ts"] if res else 0)
                if any(isinstance(m, StoreUnavailable) for m in got):
                    await asyncio.sleep(min(1.0, cfg.gap_skip))
            await asyncio.sleep(min(0.2, cfg.gap_wait))

    async def catch_up(self) -> None:
        """Read what the bus may have missed (after a Redis outage) from the store."""
        if self.next_seq is None:
            return
        entries = await self.rooms.store.entries(self.name, since=self.next_seq - 1,
                                                 limit=500)
        for seq, msg in entries:
            self.offer(seq, protocol.encode(msg) if msg else None, msg["ts"] if msg else 0)

    # --- joining ---

    async def history(self, since: int | None) -> tuple[list[Message], int, bool]:
        """History for a joining client from the store: (messages, last seq covered, more
        after that).

        The client is in the room (its live frames buffered) before this reads the store,
        so every number from the room's next one on reaches it from its buffer. History
        therefore stops before the first number missing from the store that the room has
        not passed yet (a write in flight, or one the room will fence and skip): nothing
        to wait for. A missing number the room already went past is fenced here, as the
        room did, so a late write cannot be acked under a number this history passed over.
        History does not wait for the numbers in flight: under steady traffic there nearly
        always is one, so waiting would make every join wait gap_skip while hammering the
        store, and a client could churn again before its history came.
        """
        numbers, end, more = await self._read_history(since)
        return [m for _, m in numbers if m is not None], end, more

    async def _read_history(self, since: int | None
                            ) -> tuple[list[tuple[int, Message | None]], int, bool]:
        """history() with the void numbers: every number it covers, in order, without a
        hole (from since + 1, or from the first of the latest items without since)."""
        limit = protocol.HISTORY_SINCE_MAX if since is not None else protocol.HISTORY_DEFAULT
        passed = self.next_seq  # every number below it was delivered or skipped here
        entries = await self.rooms.store.entries(self.name, since=since, limit=limit)
        if not entries:
            return [], since or 0, False
        low = since + 1 if since is not None else entries[0][0]
        top = entries[-1][0]
        end = top
        numbers = entries
        if len(entries) != top - low + 1:
            have = dict(entries)
            numbers = []
            for seq in range(low, top + 1):
                if seq in have:
                    numbers.append((seq, have[seq]))
                    continue
                if passed is None or seq >= passed:
                    end = seq - 1  # this one and what follows come from the buffer
                    break
                numbers.append((seq, await self.rooms.store.fence(self.name, seq)))
        more = since is not None and end == top and len(entries) >= limit
        return numbers, end, more

    def memory_history(self, since: int | None) -> tuple[list[str], int, bool] | None:
        """history() from the tail, when the tail covers it: (message frames, last, more),
        the answer the store gives for the numbers the room has passed; None when the tail
        does not reach back far enough (the caller reads the store).

        Covered: without `since`, the latest HISTORY_DEFAULT numbers (voids count, as in
        the store's Query), or the whole room when it is shorter; with `since`, every
        number after it (at most HISTORY_SINCE_MAX; `more` when that many were there).
        Numbers the room has not passed come from the joining client's buffer, as after a
        store read that stopped before a write in flight.
        """
        tail, next_seq = self.tail, self.next_seq
        if tail is None or next_seq is None:
            return None
        first = next_seq - len(tail)  # the first number the tail holds (next_seq if empty)
        if since is None:
            limit = protocol.HISTORY_DEFAULT
            if len(tail) < limit and first != 1:
                return None
            picked = list(islice(tail, max(0, len(tail) - limit), None))
            if not picked:
                return [], 0, False
            return [f for _, f in picked if f is not None], picked[-1][0], False
        if since + 1 < first:
            return None
        if since + 1 >= next_seq:  # nothing after since has passed here
            return [], since, False
        limit = protocol.HISTORY_SINCE_MAX
        start = since + 1 - first
        picked = list(islice(tail, start, start + limit))
        return [f for _, f in picked if f is not None], picked[-1][0], len(picked) >= limit

    async def join_history(self, since: int | None) -> tuple[str, int, int]:
        """A joining client's `history` frame: (frame, messages in it, last seq covered).

        From memory when the tail covers it (no await between the read and the caller's
        go_live), else from the store (history())."""
        found = self.memory_history(since)
        if found is not None:
            frames, last, more = found
            self.rooms.metrics.histories.inc("memory")
            return protocol.history_frame_of(frames, more), len(frames), last
        messages, last, more = await self.history(since)
        self.rooms.metrics.histories.inc("store")
        return protocol.history_frame(messages, more), len(messages), last

    async def ensure_initialised(self) -> None:
        """Set next_seq from the store, once. The joins that arrive while the read is in
        flight share it and all wake together when it lands (a lock would hand them on one
        per turn of the event loop: in a burst of joins into a new room the last would wait
        one busy turn for each before it). A failed read fails the joins that shared it
        (their clients retry); the next join reads again."""
        if self.next_seq is not None:
            return
        init = self._init
        if init is None:
            init = self._init = asyncio.ensure_future(self._initialise())
            init.add_done_callback(self._initialised)
        # shielded: a join that goes away does not cancel the others' read
        await asyncio.shield(init)

    async def _initialise(self) -> None:
        numbers, last, _ = await self._read_history(None)
        self.next_seq = last + 1
        if self.tail is not None:  # the tail starts with what the store has
            for seq, m in numbers:
                self._remember(seq, protocol.encode(m) if m is not None else None)
        for seq in [s for s in self.pending if s < self.next_seq]:
            del self.pending[seq]
        self._advance()

    def _initialised(self, init: asyncio.Future[None]) -> None:
        if self._init is init:
            self._init = None  # done: next_seq is set, or the next join reads again
        if not init.cancelled():
            init.exception()  # retrieved: the joins that shared it were given it

    def go_live(self, client: Client, last: int) -> None:
        """Hand the client its buffered frames past `last`; from now on it gets live ones."""
        buffered, client.buffer = client.buffer or [], None
        client.floor = last
        for seq, frame in buffered:
            if seq > last:
                client.offer(frame)

    # --- presence ---

    def presence_changed(self) -> None:
        if self._presence_task is None or self._presence_task.done():
            self._presence_task = asyncio.create_task(self._send_presence())

    async def _send_presence(self) -> None:
        await asyncio.sleep(PRESENCE_COALESCE)
        frame = protocol.presence_frame(await self.rooms.presence(self.name))
        if frame != self.last_presence:
            self.last_presence = frame
            wire = text_frame(frame)
            for client in list(self.clients):
                if client.buffer is None:
                    client.offer(frame, wire)

    def stop(self) -> None:
        for t in (self._gap_task, self._presence_task, self._timer, self._init):
            if t:
                t.cancel()


class Rooms:
    """The rooms this instance has clients in."""

    def __init__(self, config: Any, store: MessageStore, metrics: Metrics,
                 presence: Callable[[str], Any]) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.presence = presence  # async room -> {color: n}
        self.rooms: dict[str, Room] = {}

    def join(self, client: Client) -> Room:
        room = self.rooms.get(client.room)
        if room is None:
            room = self.rooms[client.room] = Room(client.room, self)
        room.clients.add(client)
        return room

    def leave(self, client: Client) -> None:
        room = self.rooms.get(client.room)
        if room is None:
            return
        room.clients.discard(client)
        if not room.clients:
            room.stop()
            del self.rooms[client.room]

    def clients(self) -> list[Client]:
        return [c for r in self.rooms.values() for c in r.clients]

    def deliver(self, room_name: str, seq: int, frame: str, ts: int) -> None:
        """A message of this instance's send path (`chat.sends`), encoded once."""
        room = self.rooms.get(room_name)
        if room is not None:
            room.offer(seq, frame, ts)

    def on_bus_message(self, room_name: str, frame: str) -> None:
        """Another instance's message frame from Redis: parsed once, for its seq and ts
        (rooms nobody here is in skip even that); the frame text is delivered as is."""
        room = self.rooms.get(room_name)
        if room is None:
            return
        seq, ts = protocol.message_order(frame)
        room.offer(seq, frame, ts)

    def on_presence(self, room_name: str) -> None:
        room = self.rooms.get(room_name)
        if room is not None:
            room.presence_changed()

    async def catch_up_all(self) -> None:
        for room in list(self.rooms.values()):
            try:
                await room.catch_up()
            except StoreUnavailable as e:
                log.warning("catch_up_failed", extra={"event": "catch_up_failed",
                                                      "room": room.name, "error": str(e)})
