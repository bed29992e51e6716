"""A WebSocket connection's life: handshake -> history -> live -> drain -> close.

`Connections.serve` runs one connection (the `/ws` route of `chat.app` calls it, with the
join query the gate parsed): a user id from the instance's leased block, the client
registered in its room, then the room's latest seq (a store read shared with the room's
concurrent joins) and its history (from the room's memory, else the store; `chat.rooms`)
at the same time; `welcome` once its seq is there, `history`, then live; incoming frames
go to a `Reader` as they arrive (`LeanWebsocket.consume`), `send`s to
`chat.sends.SendPath`. The drainer
(`chat.drain`) is told about joins in flight. On close the client leaves its room and
the presence count and connection record are cleaned up in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from typing import Any

from sanic import Request
from websockets.exceptions import ConnectionClosed

from . import protocol
from .bus import RoomBus
from .cloudwatch import Publisher
from .config import Config
from .drain import Drainer
from .metrics import Metrics
from .protocol import ErrorCode, ProtocolError
from .ratelimit import Strikes, TokenBucket
from .rooms import Client, Room, Rooms
from .sends import SendPath
from .stats import BoardStats
from .store import MessageStore, StoreUnavailable
from .ws import LeanWebsocket

log = logging.getLogger("chat")

STOP_CLEANUP_SECONDS = 3.0  # at shutdown, how long closed connections' cleanups may take
SENDS_WAITING_MAX = 32  # sends of one connection waiting for storage; more: `unavailable`
SENDS_DRAIN_SECONDS = 10.0  # after the peer left, how long its last sends may still take


class Connections:
    """Serves the instance's WebSocket connections; owns their background cleanups."""

    def __init__(self, config: Config, *, store: MessageStore, bus: RoomBus, rooms: Rooms,
                 drainer: Drainer, sends: SendPath, metrics: Metrics, board: BoardStats,
                 cloudwatch: Publisher) -> None:
        self.config, self.store, self.bus, self.rooms = config, store, bus, rooms
        self.drainer, self.sends = drainer, sends
        self.metrics, self.board, self.cloudwatch = metrics, board, cloudwatch
        self.background: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def wait_cleanups(self) -> None:
        """At shutdown: the last connections' cleanups still need Redis and DynamoDB."""
        if self.background:
            await asyncio.wait(list(self.background), timeout=STOP_CLEANUP_SECONDS)

    async def serve(self, request: Request, ws: LeanWebsocket,
                    join: protocol.JoinQuery) -> None:
        """One WebSocket from handshake to close (see docs/protocol.md)."""
        config, metrics, store, rooms = self.config, self.metrics, self.store, self.rooms
        metrics.handshakes.inc()
        metrics.connections.inc()
        self.board.handshake()
        if config.socket_sndbuf > 0:
            # A fixed kernel buffer bounds each connection's memory and lets a client that
            # stops reading show up as a stuck send (-> 1013) instead of megabytes of buffer.
            sock = request.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                    config.socket_sndbuf)
        client: Client | None = None
        # the connection record's put once started; its id once it landed
        record: asyncio.Future[str] | str | None = None
        live = False
        drainer = self.drainer
        drainer.joining += 1
        joining = True
        try:
            try:
                user_id = await store.next_user_id()  # from the instance's block: no wait
            except StoreUnavailable as e:
                self._join_unavailable(e)
                await ws.send(protocol.error_frame(ErrorCode.UNAVAILABLE,
                                                   "storage unavailable"))
                await ws.close(protocol.CLOSE_TRY_LATER, "storage unavailable")
                return
            client = Client(ws, user_id=user_id, name=join.name, room=join.room,
                            queue_size=config.send_queue, metrics=metrics,
                            slow_seconds=config.slow_seconds)
            room = rooms.join(client)  # registered (live frames buffered) before the history
            # welcome's seq (a consistent read, shared with the room's concurrent joins)
            # and the history (from the room's memory, else the store) at the same time;
            # welcome goes out as soon as its seq is there
            latest_read = asyncio.ensure_future(store.latest_seq(join.room))
            history_read = asyncio.ensure_future(self._history(room, join.since))
            try:
                latest = await latest_read
                client.offer(protocol.welcome_frame(
                    user_id=user_id, name=join.name, room=join.room, color=config.color,
                    version=config.version, server=config.instance_id, seq=latest))
                history, n_history, last = await history_read
            except StoreUnavailable as e:
                self._join_unavailable(e)
                client.offer(protocol.error_frame(ErrorCode.UNAVAILABLE,
                                                  "storage unavailable"))
                await client.close(protocol.CLOSE_TRY_LATER, "storage unavailable")
                return
            finally:
                for read in (latest_read, history_read):
                    if not read.done():
                        read.cancel()
                    elif not read.cancelled():
                        read.exception()  # retrieved: the other read's error was answered
            client.offer(history)
            # This frame lives as long as the connection: do not keep up to 1,000 messages
            # (nor the finished reads holding it and the seq, for the connection's life).
            del history, latest_read, history_read
            room.go_live(client, last)
            live = True
            drainer.joining -= 1
            joining = False
            drainer.admit(client)  # a drain that started while this join was in flight
            log.info("ws_open", extra={"event": "ws_open", "user_id": user_id,
                                       "room": join.room, "since": join.since,
                                       "history": n_history})
            self.spawn(self._announce(client))  # Redis may be slow or down: never hold it
            reader = Reader(self, client)
            ws.consume(reader.on_message)  # its frames are handled from now on
            try:
                # Shielded: a client gone half-way cancels this handler, and a put
                # cancelled while in flight may still land; the cleanup waits for it and
                # deletes it. The record may wait for a batch (chat.store): frames are
                # handled meanwhile.
                record = asyncio.ensure_future(store.add_connection(
                    user_id=user_id, room=join.room, instance=config.instance_id,
                    color=config.color, version=config.version))
                with contextlib.suppress(StoreUnavailable):
                    # Only the id stays for the connection's life, not the finished task
                    # (its coroutine, context and the loop's weak reference: ~0.8 KiB a
                    # connection).
                    record = await asyncio.shield(record)
                await ws.wait_closed()
            finally:
                ws.stop_consuming()
                await reader.finish()
        except (ConnectionClosed, asyncio.CancelledError):
            pass
        finally:
            if joining:
                drainer.joining -= 1
            metrics.connections.inc(-1)
            self.cloudwatch.closed(ws, client.migrated if client is not None else False)
            if client is not None:
                rooms.leave(client)
                await client.stop()
                log.info("ws_close", extra={"event": "ws_close", "user_id": client.user_id,
                                            "room": client.room, "code": client.close_code,
                                            "migrated": client.migrated})
                self.spawn(self._cleanup(client.room if live else None, record))

    @staticmethod
    async def _history(room: Room, since: int | None) -> tuple[str, int, int]:
        await room.ensure_initialised()
        return await room.join_history(since)

    def _join_unavailable(self, error: StoreUnavailable) -> None:
        log.warning("join_unavailable", extra={"event": "join_unavailable",
                                               "error": str(error)})
        self.metrics.errors.inc(ErrorCode.UNAVAILABLE.value)

    async def _announce(self, client: Client) -> None:
        await self.bus.presence_changed(client.room, +1)
        client.offer(protocol.presence_frame(await self.bus.presence(client.room)))

    async def _cleanup(self, room: str | None,
                       record: asyncio.Future[str] | str | None) -> None:
        if room is not None:
            await self.bus.presence_changed(room, -1)
        if record is None:
            return
        try:
            connection_id = record if isinstance(record, str) else await record
        except StoreUnavailable as e:
            log.warning("connection_record_failed", extra={
                "event": "connection_record_failed", "error": str(e)})
            return
        with contextlib.suppress(StoreUnavailable):
            await self.store.remove_connection(connection_id)


class Reader:
    """A connection's incoming frames, handled as they arrive (`LeanWebsocket.consume`).

    Everything here is synchronous except storing a send: sends are stored one after
    another by a task that exists only while sends wait, so frames keep being read while
    storage is slow (a reader stuck on DynamoDB would leave the client's later frames
    unread and its pongs behind them: close 1011). At most SENDS_WAITING_MAX sends wait;
    more are answered `unavailable`.
    """

    __slots__ = ("bucket", "client", "config", "connections", "metrics", "sender", "sends",
                 "strikes", "struck")

    def __init__(self, connections: Connections, client: Client) -> None:
        self.connections = connections
        self.client = client
        self.config = connections.config
        self.metrics = connections.metrics
        self.bucket = TokenBucket(self.config.rate_per_s, self.config.rate_burst)
        # made at the first rate-limit violation: its deque is ~0.7 KiB a connection
        self.strikes: Strikes | None = None
        self.struck = False  # closing for repeated rate-limit violations
        self.sends: deque[protocol.SendFrame] | None = None  # only while sends wait
        self.sender: asyncio.Task[None] | None = None

    def error(self, code: ErrorCode, message: str) -> None:
        self.metrics.errors.inc(code.value)
        self.client.offer(protocol.error_frame(code, message))

    def on_message(self, data: str | bytes) -> None:
        client = self.client
        if client.closed or self.struck:
            return
        if not self.bucket.take():
            if self.strikes is None:
                self.strikes = Strikes(self.config.rate_strikes,
                                       self.config.rate_strike_window)
            if self.strikes.strike():
                self.struck = True
                log.info("ws_rate_strikes", extra={"event": "ws_rate_strikes",
                                                   "user_id": client.user_id})
                self.connections.spawn(client.close(protocol.CLOSE_POLICY,
                                                    "rate limit exceeded repeatedly"))
                return
            self.error(ErrorCode.RATE_LIMITED, f"more than {self.config.rate_per_s:g} "
                                               f"frames/s (burst {self.config.rate_burst})")
            return
        try:
            frame = protocol.parse_client_frame(data)
        except ProtocolError as e:
            self.error(e.code, e.message)
            return
        if isinstance(frame, protocol.PingFrame):
            client.offer(protocol.PONG_FRAME)
            return
        if self.sends is None:
            self.sends = deque()
        if len(self.sends) >= SENDS_WAITING_MAX:
            self.connections.sends.refused()
            self.error(ErrorCode.UNAVAILABLE,
                       "too many sends waiting for storage; retry with the same client_id")
            return
        self.sends.append(frame)
        if self.sender is None:
            self.sender = asyncio.create_task(self._store_sends(),
                                              name=f"sends-{client.user_id}")

    async def _store_sends(self) -> None:
        sends = self.sends
        path = self.connections.sends
        try:
            while sends and not self.client.closed:
                await path.send(self.client, sends[0], self.error)
                sends.popleft()
        finally:
            self.sender = None
            if self.sends is sends and not sends:
                self.sends = None

    async def finish(self) -> None:
        """The peer is gone: finish what it sent (a retry finds it by client_id)."""
        sender = self.sender
        if sender is None:
            return
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sender), SENDS_DRAIN_SECONDS)
        finally:
            if not sender.done():
                sender.cancel()  # a send stopped half-way voids its number (store.append)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
