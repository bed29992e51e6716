"""Rooms: in-order, exactly-once fan-out of a room's messages to this instance's clients.

Messages reach a room from the bus (other instances), from this instance's own sends, and
from the store (gap fill and catch-up). A room delivers them strictly by seq: a message
whose predecessor is missing waits; after `gap_wait` the room reads the missing numbers
from the store; a number still missing after `gap_skip` (its write failed) is skipped.

Each message is encoded once; the same str goes to every client's bounded send queue, and
a client whose queue is full is closed with 1013 instead of slowing anyone else down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from . import protocol
from .metrics import Metrics
from .store import MessageStore, StoreUnavailable, item_to_message

log = logging.getLogger("chat.rooms")

PRESENCE_COALESCE = 0.25  # seconds: presence frames at most ~4 per second per room


class Client:
    """One WebSocket: a bounded queue drained by its own writer task."""

    def __init__(self, ws: Any, *, user_id: int, name: str, room: str, queue_size: int,
                 metrics: Metrics, slow_seconds: float = 5.0) -> None:
        self.ws = ws
        self.user_id = user_id
        self.name = name
        self.room = room
        self.metrics = metrics
        self.queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self.buffer: list[tuple[int, str]] | None = []  # live frames held while joining
        # The last seq its history covered: the room may lag behind the store (Redis down,
        # a slow bus), so live frames at or below it would repeat or come out of order.
        self.floor = 0
        self.closed = False
        self.close_code: int | None = None
        self.migrated = False
        self.writer: asyncio.Task[None] | None = None
        self.slow_seconds = slow_seconds
        self.sending_since: float | None = None  # a send in progress since (monotonic)

    def start(self) -> None:
        self.writer = asyncio.create_task(self._write(), name=f"writer-{self.user_id}")

    async def _write(self) -> None:
        try:
            while True:
                frame = await self.queue.get()
                self.sending_since = time.monotonic()
                await self.ws.send(frame)
                self.sending_since = None
        except asyncio.CancelledError:
            raise
        except Exception:
            self.closed = True  # the connection is gone; the handler cleans up

    def offer(self, frame: str) -> bool:
        """Queue a frame without waiting; a client that falls behind is closed with 1013.

        Falling behind: its queue is full, or one send to it has not completed for
        `slow_seconds` (its TCP window stays shut) while more frames are waiting. Frames
        are shared str objects, so a long queue costs pointers, not copies.
        """
        if self.closed:
            return False
        stuck = self.sending_since is not None and not self.queue.empty() \
            and time.monotonic() - self.sending_since > self.slow_seconds
        if stuck:
            self.fail(protocol.CLOSE_TRY_LATER, "too slow to keep up")
            return False
        try:
            self.queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            self.fail(protocol.CLOSE_TRY_LATER, "too slow to keep up")
            return False

    def fail(self, code: int, reason: str) -> None:
        """Close now, without waiting for queued frames (used for slow clients)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        if self.writer:
            self.writer.cancel()
        log.info("ws_fail", extra={"event": "ws_fail", "code": code, "user_id": self.user_id,
                                   "room": self.room})
        self.ws.fail_connection(code, reason)

    async def close(self, code: int, reason: str, flush_timeout: float = 2.0) -> None:
        """Close after the queued frames went out (or after flush_timeout)."""
        if self.closed:
            return
        deadline = time.monotonic() + flush_timeout
        while (not self.queue.empty() and time.monotonic() < deadline  # noqa: ASYNC110
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


class Room:
    def __init__(self, name: str, rooms: Rooms) -> None:
        self.name = name
        self.rooms = rooms
        self.clients: set[Client] = set()
        self.next_seq: int | None = None  # next number to deliver; None until initialised
        self.pending: dict[int, tuple[str, int] | None] = {}  # seq -> (frame, ts) | void
        self._init_lock = asyncio.Lock()
        self._gap_task: asyncio.Task[None] | None = None
        self._presence_task: asyncio.Task[None] | None = None
        self.last_presence: str | None = None

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
        while self.next_seq in self.pending:
            entry = self.pending.pop(self.next_seq)
            if entry is not None:
                self._deliver(self.next_seq, *entry)
            self.next_seq += 1
        if self.pending and (self._gap_task is None or self._gap_task.done()):
            self._gap_task = asyncio.create_task(self._fill_gap(), name=f"gap-{self.name}")

    def _deliver(self, seq: int, frame: str, ts: int) -> None:
        n = 0
        for client in list(self.clients):
            if client.buffer is not None:
                client.buffer.append((seq, frame))
            elif seq > client.floor and client.offer(frame):
                n += 1
        if n:
            m = self.rooms.metrics
            m.messages_out.inc(by=n)
            m.delivery_latency.observe(max(0.0, time.time() - ts / 1000))

    async def _fill_gap(self) -> None:
        cfg = self.rooms.config
        started = time.monotonic()
        await asyncio.sleep(cfg.gap_wait)
        while self.pending and self.next_seq is not None:
            first, last = self.next_seq, min(self.pending) - 1
            if last >= first:
                try:
                    found = await self.rooms.store.range(self.name, first, last)
                except StoreUnavailable:
                    found = {}
                for seq, msg in found.items():
                    self.offer(seq, protocol.encode(msg) if msg else None,
                               msg["ts"] if msg else 0)
            if not self.pending or self.next_seq is None:
                break
            if self.next_seq == first and time.monotonic() - started > cfg.gap_skip:
                # Skip only a number the store agrees is void: a write slower than gap_skip
                # must not be acked after this room gave up on it.
                try:
                    msg = await self.rooms.store.fence(self.name, first)
                except StoreUnavailable:
                    await asyncio.sleep(min(1.0, cfg.gap_skip))
                    continue
                if msg is None:
                    log.warning("seq_skipped", extra={"event": "seq_skipped",
                                                      "room": self.name, "seq": first})
                self.offer(first, protocol.encode(msg) if msg else None,
                           msg["ts"] if msg else 0)
                started = time.monotonic()
            elif self.next_seq != first:
                started = time.monotonic()
            await asyncio.sleep(min(0.2, cfg.gap_wait))

    async def catch_up(self) -> None:
        """Read what the bus may have missed (after a Redis outage) from the store."""
        if self.next_seq is None:
            return
        items = await self.rooms.store.query(self.name, since=self.next_seq - 1, limit=500)
        for it in items:
            msg = item_to_message(it)
            seq = int(it["seq"]["N"])
            self.offer(seq, protocol.encode(msg) if msg else None, msg["ts"] if msg else 0)

    # --- joining ---

    async def history(self, since: int | None) -> tuple[list[dict[str, Any]], int, bool]:
        """History for a joining client: (messages, last seq covered, more after that).

        Waits (up to gap_skip) for numbers below the newest one whose writes are still in
        flight, so that "flush the buffer past the last history seq" loses nothing.
        """
        limit = protocol.HISTORY_SINCE_MAX if since is not None else protocol.HISTORY_DEFAULT
        deadline = time.monotonic() + self.rooms.config.gap_skip
        while True:
            items = await self.rooms.store.query(self.name, since=since, limit=limit)
            seqs = [int(it["seq"]["N"]) for it in items]
            if not seqs:
                return [], since or 0, False
            low = since + 1 if since is not None else seqs[0]
            if len(seqs) == seqs[-1] - low + 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        messages = [m for m in (item_to_message(it) for it in items) if m is not None]
        if len(seqs) != seqs[-1] - low + 1:
            # still holes after the wait: fence them (as the room's gap filler does), so a
            # late write cannot be acked under a number this client's history passed over
            have = set(seqs)
            for seq in range(low, seqs[-1]):
                if seq not in have:
                    msg = await self.rooms.store.fence(self.name, seq)
                    if msg is not None:
                        messages.append(msg)
            messages.sort(key=lambda m: int(m["seq"]))
        return messages, seqs[-1], since is not None and len(items) >= limit

    async def ensure_initialised(self) -> None:
        if self.next_seq is not None:
            return
        async with self._init_lock:
            if self.next_seq is not None:
                return
            _, last, _ = await self.history(None)
            self.next_seq = last + 1
            for seq in [s for s in self.pending if s < self.next_seq]:
                del self.pending[seq]
            self._advance()

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
            for client in list(self.clients):
                if client.buffer is None:
                    client.offer(frame)

    def stop(self) -> None:
        for t in (self._gap_task, self._presence_task):
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

    def on_bus_message(self, room_name: str, frame: str) -> None:
        room = self.rooms.get(room_name)
        if room is None:
            return
        msg = json.loads(frame)
        room.offer(int(msg["seq"]), frame, int(msg["ts"]))

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
