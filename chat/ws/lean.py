"""A lean WebSocket connection for Sanic: frames handed to a callback, one shared pinger.

Part of the WebSocket seam (chat/ws/__init__.py): `LeanWebsocket` implements `Transport`
(write, is_open, writable, fail, close) for the chat's clients.

Sanic 25's `WebsocketImplProtocol` gives every connection a frame assembler (two Events, a
Queue, two Locks: five `collections.deque`s of ~600 bytes each), a keep-alive task that
sleeps and pings, an auto-close task, a task per `data_received` call and a task plus two
futures per `recv()`. For a chat that holds thousands of mostly idle connections that is
most of the memory per connection, and the per-frame tasks are CPU on the receive path.

`LeanWebsocket` keeps Sanic's protocol (handshake, `send`, `close`, `fail_connection`,
close handshake via websockets' sans-I/O `ServerProtocol`) and replaces the receive side
and the lifecycle tasks:

- `data_received` parses the bytes synchronously and hands each complete message to
  `on_message` (set by the handler once the client has joined; messages that arrive
  before are kept, at most `EARLY_MAX`, with reading paused beyond that). Text frames
  with invalid UTF-8 close the connection with 1007 (RFC 6455 8.1).
- No keep-alive task: `Pinger` (one task per process) pings every connection it has not
  heard from for `interval` seconds and fails one it has heard nothing from — no pong, no
  frame — for `interval + timeout` seconds with 1011. Any frame counts as a sign of life,
  so a client whose frames are being processed is never cut off for a late pong.
- No auto-close task: Sanic's close paths already handle its absence (they close the
  transport themselves, with an abort after `close_timeout`).
- `wait_closed()` resolves when the TCP connection is gone.

`recv()` still works (messages queue while no `on_message` is set), for code and tests
that read frames one by one.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from sanic.server.protocols import websocket_protocol
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Opcode
from websockets.protocol import State

log = logging.getLogger("chat.ws")

OPEN, CLOSED = State.OPEN, State.CLOSED
CLOSE_INVALID_DATA = 1007
CLOSE_INTERNAL_ERROR = 1011
EARLY_MAX = 64  # messages kept before on_message is set; reading pauses beyond this

Message = str | bytes

_utf8 = codecs.getdecoder("utf-8")
_tasks: set[asyncio.Task[None]] = set()  # short writes in flight (pongs, close handshakes)


def _spawn(coro: Any) -> None:
    task = asyncio.create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _drop(message: Message) -> None:
    """A message after the handler stopped reading."""


class LeanWebsocket(WebsocketImplProtocol):
    """Sanic's WebSocket protocol without the per-connection tasks (see module doc)."""

    live: ClassVar[set[LeanWebsocket]] = set()  # open connections, for the shared pinger

    def __init__(self, ws_proto: Any, max_queue: Any = None,
                 ping_interval: float | None = None, ping_timeout: float | None = None,
                 close_timeout: float = 10, loop: Any = None) -> None:
        # Not calling super().__init__: it builds the frame assembler this class replaces.
        self.ws_proto = ws_proto
        self.io_proto = None
        self.loop = None
        self.max_queue = max_queue
        self.close_timeout = close_timeout
        self.ping_interval = None  # the shared Pinger pings (Sanic's per-connection task off)
        self.ping_timeout = None
        self.assembler = None  # type: ignore[assignment]
        self.pings = {}
        self.conn_mutex = asyncio.Lock()  # Sanic's send/close/ping take it
        self.recv_lock = asyncio.Lock()
        self.recv_cancel = None
        self.process_event_mutex = asyncio.Lock()
        self.data_finished_fut = None
        self.can_pause = True
        self.pause_frame_fut = None
        self.keepalive_ping_task = None
        self.auto_closer_task = None
        self.connection_lost_waiter = None
        self.on_message: Callable[[Message], None] | None = None
        self.inbox: deque[Message] | None = None  # messages nobody consumed yet
        self.fragments: list[bytes] | None = None  # a fragmented message in progress
        self.fragments_text = False
        self.last_seen = 0.0
        self.ping_sent = 0.0  # when the Pinger last pinged it
        self.reading_paused = False
        self.waiter: asyncio.Future[None] | None = None  # recv() waiting for a message
        self.gone: asyncio.Future[None] | None = None  # wait_closed(): the TCP connection ended

    # --- lifecycle ---

    async def connection_made(self, io_proto: Any,
                              loop: asyncio.AbstractEventLoop | None = None) -> None:
        if loop is None:
            loop = getattr(io_proto, "loop", None) or asyncio.get_running_loop()
        self.loop = loop
        self.io_proto = io_proto
        self.connection_lost_waiter = loop.create_future()
        # Sanic's send() refuses to write once this is done; the close paths cancel it.
        self.data_finished_fut = loop.create_future()
        self.last_seen = loop.time()
        LeanWebsocket.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        LeanWebsocket.live.discard(self)
        super().connection_lost(exc)
        self._wake()
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)

    def release(self) -> None:
        """The connection is over (LeanWebSocketProtocol._release): drop what refers back to
        this object, so that reference counting frees it (see LeanWebSocketProtocol)."""
        self.on_message = _drop
        self.inbox = None
        self.fragments = None
        # websockets' parser is a generator whose frame holds its protocol: a cycle
        parser = getattr(self.ws_proto, "parser", None)
        if parser is not None:
            parser.close()

    async def wait_closed(self) -> None:
        """Until the TCP connection is gone (one future of its own: no shield per call)."""
        if self.connection_lost_waiter is None or self.connection_lost_waiter.done():
            return
        if self.gone is None and self.loop is not None:
            self.gone = self.loop.create_future()
        if self.gone is not None:
            await self.gone

    # --- receiving ---

    def data_received(self, data: bytes) -> None:
        ws_proto = self.ws_proto
        ws_proto.receive_data(data)
        out = ws_proto.data_to_send()
        events = ws_proto.events_received()
        if self.loop is not None:
            self.last_seen = self.loop.time()
        if out:  # pongs to the client's pings, the closing handshake, protocol errors
            _spawn(self.async_data_received(out, []))
        for frame in events:
            self._frame(frame)

    def eof_received(self) -> bool | None:
        ws_proto = self.ws_proto
        ws_proto.receive_eof()
        out = ws_proto.data_to_send()
        for frame in ws_proto.events_received():
            self._frame(frame)
        _spawn(self.async_eof_received(out, []))
        self._wake()
        return False

    def _frame(self, frame: Any) -> None:
        op = frame.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if not frame.fin:
                self.fragments, self.fragments_text = [frame.data], op is Opcode.TEXT
                return
            self._message(frame.data, op is Opcode.TEXT)
        elif op is Opcode.CONT:
            if self.fragments is None:
                return  # websockets' parser refuses this already; nothing to continue
            self.fragments.append(frame.data)
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), None
                self._message(data, self.fragments_text)
        elif op is Opcode.CLOSE:
            self._wake()
        # PING: websockets queued the pong in data_to_send; PONG: last_seen is enough

    def _message(self, data: bytes, text: bool) -> None:
        message: Message
        if text:
            try:
                message = _utf8(data)[0]
            except UnicodeDecodeError:
                self.fail_connection(CLOSE_INVALID_DATA, "invalid UTF-8 in a text frame")
                return
        else:
            message = data
        consumer = self.on_message
        if consumer is not None and not self.inbox:
            try:
                consumer(message)
            except Exception:
                log.exception("ws_consumer_error", extra={"event": "ws_consumer_error"})
                self.fail_connection(CLOSE_INTERNAL_ERROR, "internal error")
            return
        if self.inbox is None:
            self.inbox = deque()
        self.inbox.append(message)
        if len(self.inbox) >= EARLY_MAX and not self.reading_paused:
            self.reading_paused = True
            if self.io_proto is not None and self.io_proto.transport is not None:
                self.io_proto.transport.pause_reading()
        self._wake()

    def consume(self, on_message: Callable[[Message], None]) -> None:
        """From now on hand every message to `on_message`, starting with the early ones."""
        self.on_message = on_message
        while self.inbox and self.on_message is on_message:
            try:
                on_message(self.inbox.popleft())
            except Exception:
                log.exception("ws_consumer_error", extra={"event": "ws_consumer_error"})
                self.fail_connection(CLOSE_INTERNAL_ERROR, "internal error")
                break
        self.inbox = None
        self._resume_reading()

    def stop_consuming(self) -> None:
        """The handler is done: later messages (a migrated or failed client still sending)
        are dropped as they arrive, without a task or a reader waiting for them."""
        self.on_message = _drop
        self.inbox = None

    def _resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if self.io_proto is not None and self.io_proto.transport is not None \
                    and self.ws_proto.state is OPEN:
                self.io_proto.transport.resume_reading()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def recv(self, timeout: float | None = None) -> Message | None:  # noqa: ASYNC109
        """The next message not handed to `on_message`; None after `timeout` seconds."""
        while not self.inbox:
            if self.ws_proto.state is not OPEN or (
                    self.connection_lost_waiter is not None
                    and self.connection_lost_waiter.done()):
                raise ConnectionClosedError(self.ws_proto.close_rcvd, self.ws_proto.close_sent)
            if self.loop is None:
                raise ConnectionClosedError(None, None)
            self.waiter = self.loop.create_future()
            try:
                if timeout is None:
                    await self.waiter
                else:
                    try:
                        await asyncio.wait_for(self.waiter, timeout)
                    except TimeoutError:
                        return None
            finally:
                self.waiter = None
        message = self.inbox.popleft()
        if len(self.inbox) < EARLY_MAX // 2:
            self._resume_reading()
        return message

    # --- Transport (chat/ws/transport.py) ---

    def write(self, data: bytes) -> bool:
        """Write server frame bytes now, or False while the transport pushes back or is
        closing (nothing written). Sanic's protocol clears `_can_write` over the
        transport's high-water mark and sets it again once the buffer drained."""
        io = self.io_proto
        if (io is None or io.transport is None or not io._can_write.is_set()
                or io.transport.is_closing() or self.ws_proto.state is not OPEN):
            return False
        io.transport.write(data)
        return True

    def is_open(self) -> bool:
        io = self.io_proto
        return (io is not None and io.transport is not None
                and not io.transport.is_closing() and self.ws_proto.state is OPEN)

    async def writable(self) -> bool:
        io = self.io_proto
        if io is not None and not io._can_write.is_set():
            await io._can_write.wait()
        return self.is_open()

    def fail(self, code: int, reason: str) -> None:
        self.fail_connection(code, reason)

    # --- keep-alive ---

    def ping_now(self) -> None:
        """Write a ping frame (control frames may go between whole messages)."""
        io = self.io_proto
        if self.ws_proto.state is not OPEN or io is None or io.transport is None \
                or io.transport.is_closing():
            return
        self.ws_proto.send_ping(b"")
        for chunk in self.ws_proto.data_to_send():
            if chunk:
                io.transport.write(chunk)


class Pinger:
    """One task per process that keeps every LeanWebsocket alive or fails it (1011)."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.task: asyncio.Task[None] | None = None
        self.failed = 0

    def start(self) -> None:
        if self.interval > 0 and self.task is None:
            self.task = asyncio.create_task(self._run(), name="ws-pinger")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    def sweep(self, now: float) -> None:
        for ws in list(LeanWebsocket.live):
            if ws.ws_proto.state is not OPEN:
                continue
            silent = now - ws.last_seen
            if silent >= self.interval + self.timeout:
                self.failed += 1
                log.info("ws_ping_timeout", extra={"event": "ws_ping_timeout",
                                                   "silent_s": round(silent, 1)})
                ws.fail_connection(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
            elif silent >= self.interval * 0.9 and (ws.ping_sent < ws.last_seen
                                                    or now - ws.ping_sent >= self.interval):
                ws.ping_sent = now
                ws.ping_now()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Sweep a few times per interval so that a connection's ping goes out within
        # about a tenth of an interval of the moment it fell silent for `interval`.
        step = max(0.05, self.interval / 10)
        while True:
            await asyncio.sleep(step)
            try:
                self.sweep(loop.time())
            except Exception:
                log.exception("ws_pinger_error", extra={"event": "ws_pinger_error"})


class LazyEvent(asyncio.Event):
    """An asyncio.Event whose waiter deque (~600 bytes) exists only once someone waits.

    Sanic gives every connection two Events (`_can_write`, `_data_received`) that an idle
    WebSocket never waits on."""

    def __init__(self) -> None:  # not calling super(): it allocates the deque
        self._waiters: deque[asyncio.Future[bool]] | None = None  # type: ignore[assignment]
        self._value = False

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        if self._waiters is None:
            self._waiters = deque()
        return await super().wait()

    def set(self) -> None:
        if not self._value:
            self._value = True
            for fut in self._waiters or ():
                if not fut.done():
                    fut.set_result(True)


class LeanWebSocketProtocol(WebSocketProtocol):
    """Sanic's HTTP/WebSocket protocol with lazily allocated Events (see LazyEvent), whose
    objects reference counting frees as soon as the connection is over.

    Sanic's objects of one connection reference each other in cycles: the protocol and its
    WebSocket (`websocket` / `io_proto`), the `Http` and its request (`request` / `stream`),
    the `Http` and its own bound method (`response_func`), websockets' protocol and its
    parser generator; and the protocol's timeout timer keeps the protocol for up to half a
    timeout after the close. Only a full collection of the cyclic GC frees such a cycle,
    so under churn every closed connection (~5 KiB: request, headers, transports, frames)
    stayed in the heap until the next one. Once the TCP connection is gone *and* Sanic's
    connection task has finished (both: either may come last), nothing uses them again:
    `_release` cuts the cycles.
    """

    __slots__ = ("_conn_http", "_lost", "_task_over")  # Sanic's protocols have no __dict__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._can_write = LazyEvent()
        self._can_write.set()
        self._data_received = LazyEvent()
        self._conn_http: Any = None  # the connection's Http (Sanic clears `_http` itself)
        self._lost = False  # connection_lost was called
        self._task_over = False  # Sanic's connection task has finished

    def _setup_connection(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_connection(*args, **kwargs)
        self._conn_http = self._http

    async def connection_task(self) -> None:
        try:
            await super().connection_task()
        finally:
            self._task_over = True
            self._release()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost = True
        self._release()

    def _release(self) -> None:
        if not (self._lost and self._task_over):
            return
        timer = self._callback_check_timeouts
        if timer is not None:
            timer.cancel()  # a closed connection has no timeout left to check
            self._callback_check_timeouts = None
        http, self._conn_http = self._conn_http, None
        if http is not None:
            http.response_func = None
            http.request = None
        self.request = None
        ws, self.websocket = self.websocket, None
        if isinstance(ws, LeanWebsocket):
            ws.release()


def install() -> None:
    """Make Sanic's WebSocket handshake create LeanWebsocket connections.

    Sanic builds the connection object from a module global of its WebSocket protocol
    module, so this sets that global (idempotent). `chat.app.create_app` calls it."""
    websocket_protocol.WebsocketImplProtocol = LeanWebsocket  # type: ignore[misc]
