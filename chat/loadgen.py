"""Load generator: N simulated chat users in one asyncio process, checking every delivery.

``python -m chat loadgen --url ws://127.0.0.1:8080/ws --users 100 --rate 20 --duration 60``

Each simulated user behaves like the web client (docs/protocol.md): it joins a room, sends
messages with a unique ``client_id`` and waits for the ``ack`` (one send in flight per user,
so an ``unavailable`` error, which carries no ``client_id``, always names the send to retry
with the same ``client_id``), follows ``migrate`` make-before-break (new connection with
``since`` first, then close the old one) and reconnects with exponential backoff and full
jitter after an unexpected close, resuming with ``since``.

A new connection (join, reconnect, churn, migration) becomes the user's connection only once
its ``history`` frame has arrived, not at its ``welcome``: until then the old connection (if
still open) stays the one the user sends on and keeps receiving, and the user counts as
connected / recovered only from that history on. A user's next churn is timed from that
moment, so a slow join is never abandoned for another one that would resume from the same
``since``. A candidate that closes before its history, is told to ``migrate`` before it, or
gets none within ``history_timeout``, is closed and retried with backoff
(``closed_before_history``, ``migrated_before_history``, ``history_timeouts`` in the
report); ``history_wait_ms`` is welcome-to-history time.

Accounting (what "lost", "duplicated" and "out of order" mean):

* every ``ack`` adds its ``seq`` to the room's set of acknowledged sequence numbers, whoever
  sent it;
* a user is *expected* to receive every acknowledged ``seq`` of its room greater than the
  room's ``seq`` in its first ``welcome``; only users still connected when sending stops
  are held to that (a user that gave up reconnecting is reported, not counted);
* ``lost``: expected but never received on any of the user's connections after the drain;
* ``duplicated`` / ``out of order``: judged per connection, because the server promises
  exactly-once, in-order delivery on each connection. The overlap of two connections of one
  user during a migration is normal; the user drops those copies by ``seq`` (reported as
  ``overlap_dropped``, not as an error).

Delivery latency is ``receive wall clock - message ts`` (the accepting instance's clock, in
ms; one machine locally, NTP-synced hosts on AWS), for each first receipt of an expected
message. Ack latency is measured on the local clock from the first send to the ``ack``.

The core is importable: ``await run_loadgen(LoadGenConfig(...))`` returns the report dict;
``LoadGen.stop()`` (or SIGINT/SIGTERM under ``main``) ends sending, drains and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

# --------------------------------------------------------------------------- accounting


class SeqSet:
    """A set of sequence numbers, compact for the dense runs a chat room produces.

    Numbers at or above ``base`` live in a bytearray (one byte each); the few below it
    (history before the user joined) in a plain set.
    """

    __slots__ = ("_bits", "_low", "base")

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self._bits = bytearray()
        self._low: set[int] = set()

    def add(self, seq: int) -> bool:
        """Add ``seq``; return True when it was not there yet."""
        if seq < self.base:
            if seq in self._low:
                return False
            self._low.add(seq)
            return True
        i = seq - self.base
        if i >= len(self._bits):
            self._bits.extend(bytes(i - len(self._bits) + 1024))
        if self._bits[i]:
            return False
        self._bits[i] = 1
        return True

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        if seq < self.base:
            return seq in self._low
        i = seq - self.base
        return i < len(self._bits) and self._bits[i] == 1


class LatencyHistogram:
    """Log-scale histogram (1 % buckets): constant memory for hour-long runs."""

    _STEP = math.log(1.01)

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0

    def add(self, ms: float) -> None:
        self.n += 1
        # bucket -1 holds 0 ms and below (clock skew); others are 1.01**i ms
        self.counts[-1 if ms <= 0.01 else round(math.log(ms) / self._STEP)] += 1

    def percentile(self, p: float) -> float | None:
        if self.n == 0:
            return None
        rank = max(1, math.ceil(self.n * p / 100.0))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return 0.0 if i == -1 else round(math.exp(i * self._STEP), 2)
        return None  # pragma: no cover - unreachable

    def summary(self) -> dict[str, float | None]:
        return {"p50": self.percentile(50), "p95": self.percentile(95),
                "p99": self.percentile(99)}


@dataclass
class ConnTrack:
    """What one WebSocket connection delivered, to judge the server's per-connection order."""

    since: int | None
    last_seq: int = -1
    seen: SeqSet = field(default_factory=SeqSet)
    base: int | None = None           # where the compact part of `seen` starts

    def __post_init__(self) -> None:
        self.seen = SeqSet(self.base if self.base is not None else (self.since or 0))


@dataclass
class UserTrack:
    """One simulated user's view of its room, across all of its connections."""

    room: str
    join_seq: int | None = None       # room seq in the first welcome
    last_seq: int = 0                 # highest seq received (the `since` to resume from)
    received: SeqSet = field(default_factory=SeqSet)
    delivered: int = 0                # first receipts of seqs > join_seq
    duplicated: int = 0
    out_of_order: int = 0
    overlap_dropped: int = 0
    anomalies: list[dict[str, Any]] = field(default_factory=list)  # first few, for debugging

    def on_welcome(self, frame: dict[str, Any]) -> None:
        if self.join_seq is None:
            self.join_seq = int(frame.get("seq") or 0)
            self.received = SeqSet(self.join_seq + 1)
            self.last_seq = max(self.last_seq, self.join_seq)

    def on_message(self, conn: ConnTrack, frame: dict[str, Any], now_ms: float,
                   latency: LatencyHistogram | None = None,
                   via: LatencyHistogram | None = None) -> bool:
        """Account one ``message`` (live or from ``history``); True if it is new to the user."""
        seq = int(frame["seq"])
        if seq <= conn.last_seq:
            kind = "duplicated" if seq in conn.seen else "out_of_order"
            if kind == "duplicated":
                self.duplicated += 1
            else:
                self.out_of_order += 1
            if len(self.anomalies) < 10:
                self.anomalies.append({"kind": kind, "seq": seq, "after": conn.last_seq,
                                       "since": conn.since, "color": frame.get("color"),
                                       "room": self.room})
        conn.last_seq = max(conn.last_seq, seq)
        conn.seen.add(seq)
        if not self.received.add(seq):
            self.overlap_dropped += 1
            return False
        self.last_seq = max(self.last_seq, seq)
        if self.join_seq is not None and seq > self.join_seq:
            self.delivered += 1
            if latency is not None and isinstance(frame.get("ts"), int | float):
                latency.add(now_ms - float(frame["ts"]))
                if via is not None:       # the same sample, by how it arrived
                    via.add(now_ms - float(frame["ts"]))
        return True

    def missing(self, acked: Iterable[int]) -> int:
        return len(self.missing_seqs(acked))

    def missing_seqs(self, acked: Iterable[int]) -> list[int]:
        base = self.join_seq if self.join_seq is not None else 0
        return [s for s in acked if s > base and s not in self.received]

    def expected(self, acked: Iterable[int]) -> int:
        base = self.join_seq if self.join_seq is not None else 0
        return sum(1 for s in acked if s > base)


def account(users: Iterable[UserTrack], acked: dict[str, set[int]]) -> dict[str, Any]:
    """Totals over the users held to delivery (see the module docstring).

    ``lost_seqs`` names, per room, up to 20 lost sequence numbers and how many users missed
    each: the first thing to look at when a run fails.
    """
    expected = delivered = duplicated = out_of_order = overlap = 0
    lost = 0
    missed: dict[str, Counter[int]] = {}
    anomalies: list[dict[str, Any]] = []
    for u in users:
        anomalies.extend(u.anomalies[:20 - len(anomalies)])
        room_acked = acked.get(u.room, set())
        exp = u.expected(room_acked)
        seqs = u.missing_seqs(room_acked)
        miss = len(seqs)
        if seqs:
            missed.setdefault(u.room, Counter()).update(seqs)
        expected += exp
        lost += miss
        delivered += exp - miss
        duplicated += u.duplicated
        out_of_order += u.out_of_order
        overlap += u.overlap_dropped
    return {"expected_deliveries": expected, "delivered": delivered, "lost": lost,
            "duplicated": duplicated, "out_of_order": out_of_order,
            "overlap_dropped": overlap,
            "order_anomalies": anomalies,
            "lost_seqs": {room: {str(k): v for k, v in sorted(c.items())[:20]}
                          for room, c in missed.items()}}


def exit_code(report: dict[str, Any]) -> int:
    """Non-zero when anything was lost, duplicated or out of order, or nobody connected."""
    if report.get("lost", 0) or report.get("duplicated", 0) or report.get("out_of_order", 0):
        return 1
    if not report.get("connected", 0):
        return 2
    return 0


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0, min(cap, base * (2 ** min(attempt, 20))))


# --------------------------------------------------------------------------- simulation

HTTP_PAGE = 1000


def api_messages_url(ws_url: str, room: str, since: int, limit: int) -> str:
    """``ws://host/ws`` -> ``http://host/api/rooms/<room>/messages?since=&limit=``."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    base = parts.path[:-3] if parts.path.endswith("/ws") else parts.path.rstrip("/")
    path = f"{base}/api/rooms/{quote(room, safe='')}/messages"
    return urlunsplit((scheme, parts.netloc, path,
                       urlencode({"since": since, "limit": limit}), ""))


def _get_json(url: str) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())



@dataclass
class LoadGenConfig:
    url: str = "ws://127.0.0.1:8080/ws"
    # more /ws URLs (e.g. two instances without a load balancer): users start on
    # url, extra_urls[0], ... in turn and move to the next one on every new connection
    extra_urls: list[str] = field(default_factory=list)
    users: int = 100
    rate: float = 20.0                 # messages per second, all users together
    duration: float = 60.0             # seconds of sending; 0 = until stop()
    rooms: int = 1
    room_prefix: str | None = None     # default: "lg-<random>"
    origin: str | None = None
    ramp: float = 5.0                  # seconds over which users join
    drain: float = 15.0                # at most this long for in-flight deliveries
    churn: float = 0.0                 # mean seconds between planned reconnects per user
    seed: int | None = None
    connect_timeout: float = 10.0
    history_timeout: float = 60.0      # welcome -> history; then the candidate is given up
    ack_timeout: float = 10.0
    backoff_base: float = 0.2          # reconnect/retry backoff: full jitter under
    backoff_cap: float = 10.0          # min(cap, base * 2**attempt)
    progress: float = 0.0              # print a status line to stderr every N s (0: never)


@dataclass
class Stats:
    connected_users: int = 0
    handshakes: int = 0
    failed_handshakes: int = 0
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    unexpected_closes: int = 0
    close_codes: Counter[str] = field(default_factory=Counter)
    migrations: int = 0
    churns: int = 0
    reconnects: int = 0
    scheduled: int = 0                 # turns handed out by the rate scheduler
    skipped_backlog: int = 0           # turns skipped: that user already had 5 queued
    unsent_at_stop: int = 0            # still queued when sending stopped
    sent: int = 0                      # distinct messages sent (client_ids)
    send_frames: int = 0               # including retries
    retries: int = 0
    http_fills: int = 0                # pages fetched over HTTP after a history with more
    closed_before_history: int = 0     # candidates that said welcome, then closed
    history_timeouts: int = 0          # candidates given up: no history in history_timeout
    migrated_before_history: int = 0   # candidates given up: told to migrate before it
    acked: int = 0
    rejected: int = 0                  # invalid / too_long: never acked, not retried
    errors: Counter[str] = field(default_factory=Counter)
    new_by_color: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[int, str, str]] = field(default_factory=list)  # (epoch ms, color, why)


class _Conn:
    """One WebSocket of a user with its reader task."""

    def __init__(self, ws: ClientConnection, track: ConnTrack, welcome: dict[str, Any],
                 url: str) -> None:
        self.ws = ws
        self.url = url
        self.track = track
        self.welcome = welcome
        self.color = str(welcome.get("color", "?"))
        self.closed = asyncio.Event()
        self.history = asyncio.Event()   # set once its history frame has been accounted
        self.welcomed_at = time.monotonic()
        self.migrate = asyncio.Event()
        self.closing_by_us = False
        self.reader: asyncio.Task[None] | None = None

    async def close(self, reason: str) -> None:
        """Close it ourselves (not counted as unexpected) and wait for its reader."""
        self.closing_by_us = True
        with contextlib.suppress(Exception):
            await self.ws.close(1000, reason)
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await self.reader


class _Done(Exception):
    pass


class SimUser:
    def __init__(self, lg: LoadGen, index: int, room: str, name: str) -> None:
        self.lg = lg
        self.index = index
        self.room = room
        self.name = name
        self.track = UserTrack(room)
        self.conn: _Conn | None = None     # the connection in use (its history arrived)
        self.candidate: _Conn | None = None  # a new one still waiting for its history
        self.connected = asyncio.Event()
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.inflight: str | None = None
        self.idle = asyncio.Event()      # set while no send is in flight
        self.idle.set()
        self.reply: asyncio.Future[dict[str, Any]] | None = None
        self.ever_connected = False
        self.url_turn = 0                # which of the configured URLs is next
        self.fail_streak = 0             # connections lost before their history, in a row

    # ---- connections

    def _ws_url(self) -> str:
        params: dict[str, str] = {"room": self.room, "name": self.name}
        if self.track.join_seq is not None:
            params["since"] = str(self.track.last_seq)
        urls = [self.lg.cfg.url, *self.lg.cfg.extra_urls]
        parts = urlsplit(urls[(self.index + self.url_turn) % len(urls)])
        query = urlencode(params)
        if parts.query:
            query = parts.query + "&" + query
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))

    async def _open_once(self, why: str) -> _Conn:
        cfg, st = self.lg.cfg, self.lg.stats
        since = self.track.last_seq if self.track.join_seq is not None else None
        try:
            url = self._ws_url()
            ws = await connect(url,
                               origin=Origin(cfg.origin) if cfg.origin else None,
                               compression=None,
                               proxy=None, open_timeout=cfg.connect_timeout,
                               max_size=2**20, ping_interval=20, ping_timeout=20,
                               close_timeout=5, user_agent_header="canary-chat-loadgen")
        except Exception as e:
            st.failed_handshakes += 1
            reason = (f"http_{e.response.status_code}" if isinstance(e, InvalidStatus)
                      else type(e).__name__)
            st.failed_by_reason[reason] += 1
            raise
        try:
            raw = await asyncio.wait_for(ws.recv(), cfg.connect_timeout)
            welcome = json.loads(raw)
            if welcome.get("type") != "welcome":
                raise ValueError(f"first frame is {welcome.get('type')!r}, not welcome")
        except Exception as e:
            st.failed_handshakes += 1
            st.failed_by_reason["no_welcome"] += 1
            with contextlib.suppress(Exception):
                await ws.close()
            raise ConnectionError(f"no welcome: {e}") from e
        st.handshakes += 1
        self.track.on_welcome(welcome)
        # an old, busy room: keep the bitmap small (history before the join is only 50)
        base = since if since is not None else max(0, int(welcome.get("seq") or 0) - 100)
        conn = _Conn(ws, ConnTrack(since, base=base), welcome, url)
        color = conn.color
        st.new_by_color[color] += 1
        st.timeline.append((int(time.time() * 1000), color, why))
        conn.reader = asyncio.create_task(self._read(conn))
        self.candidate = conn
        try:
            await self._await_history(conn)
        finally:
            self.candidate = None
        return conn

    async def _await_history(self, conn: _Conn) -> None:
        """Return once ``conn``'s history has arrived; else close it and raise."""
        st = self.lg.stats
        waits = [asyncio.ensure_future(e.wait())
                 for e in (conn.history, conn.closed, conn.migrate, self.lg.closing_event)]
        try:
            await asyncio.wait(waits, timeout=self.lg.cfg.history_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if conn.history.is_set():
            # (if it closed right after its history, the user loop sees that as a close)
            return
        if conn.closed.is_set():
            st.closed_before_history += 1
            raise ConnectionError("closed before its history")
        if self.lg.closing:
            pass
        elif conn.migrate.is_set():
            # its instance is draining: it never becomes the user's connection, another
            # attempt (through the load balancer) goes to a ready instance
            st.migrated_before_history += 1
        else:
            st.history_timeouts += 1
        await conn.close("no history")
        raise ConnectionError("no history in time")

    async def _open(self, why: str) -> _Conn:
        """Open a connection, retrying with backoff until its history arrived or the run
        stops."""
        attempt = self.fail_streak
        while True:
            if self.lg.closing:
                raise _Done
            try:
                return await self._open_once(why)
            except Exception:
                self.url_turn += 1
                delay = backoff_delay(attempt, self.lg.cfg.backoff_base,
                                      self.lg.cfg.backoff_cap, self.lg.rng)
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.lg.closing_event.wait(), delay)

    async def _read(self, conn: _Conn) -> None:
        track = conn.track
        user = self.track
        lat = self.lg.latency
        try:
            async for raw in conn.ws:
                f = json.loads(raw)
                t = f.get("type")
                if t == "message":
                    user.on_message(track, f, time.time() * 1000, lat, self.lg.latency_live)
                elif t == "history":
                    now = time.time() * 1000
                    hist = f.get("messages") or []
                    self.fail_streak = 0      # this connection works: backoff starts over
                    for m in hist:
                        user.on_message(track, m, now, lat, self.lg.latency_recovered)
                    if f.get("more") and hist:
                        # history stops at 1,000 messages and live frames start later:
                        # the ones between come from the HTTP API, like the web client
                        self.lg.background(self._fill_after(conn.url, int(hist[-1]["seq"])))
                    if not conn.history.is_set():
                        self.lg.history_wait.add((time.monotonic() - conn.welcomed_at) * 1000)
                        conn.history.set()   # now it may replace the user's connection
                elif t == "ack":
                    self._on_reply(f)
                elif t == "error":
                    self.lg.stats.errors[str(f.get("code"))] += 1
                    if f.get("code") in ("unavailable", "rate_limited", "invalid", "too_long"):
                        self._on_reply(f)
                elif t == "migrate":
                    conn.migrate.set()
                # presence / welcome repeats: nothing to check
        except ConnectionClosed:
            pass
        except Exception as e:  # a bad frame is a finding, not a crash of the whole run
            self.lg.stats.errors[f"client_{type(e).__name__}"] += 1
            with contextlib.suppress(Exception):
                await conn.ws.close(1011)
        finally:
            rcvd = conn.ws.close_code
            code = "none" if rcvd is None else str(rcvd)
            self.lg.stats.close_codes[code] += 1
            conn.closed.set()

    async def _fill_after(self, ws_url: str, since: int) -> None:
        track = ConnTrack(since)        # its own order check: pages come in seq order
        for _ in range(100):
            url = api_messages_url(ws_url, self.room, since, HTTP_PAGE)
            try:
                body = await asyncio.to_thread(_get_json, url)
            except Exception as e:
                self.lg.stats.errors[f"http_fill_{type(e).__name__}"] += 1
                return
            self.lg.stats.http_fills += 1
            msgs = body.get("messages", []) if isinstance(body, dict) else body
            now = time.time() * 1000
            for m in msgs:
                self.track.on_message(track, m, now, self.lg.latency, self.lg.latency_recovered)
            if len(msgs) < HTTP_PAGE:
                return
            since = int(msgs[-1]["seq"])

    def _on_reply(self, f: dict[str, Any]) -> None:
        cid = f.get("client_id")
        if self.reply is None or self.reply.done():
            return
        if cid is None or cid == self.inflight:
            self.reply.set_result(f)

    async def _retire(self, old: _Conn) -> None:
        """Close a replaced connection once the send in flight on it has its answer."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), 2.0)
        await old.close("migrated")

    async def _drop_when_closed(self, conn: _Conn) -> None:
        """While a replacement waits for its history: if the connection in use dies, the
        user has none (like during a reconnect) until the replacement takes over."""
        await conn.closed.wait()
        if self.conn is conn and not conn.closing_by_us:
            self.conn = None
            self.connected.clear()

    async def run_connections(self) -> None:
        st = self.lg.stats
        try:
            conn = await self._open("join")
        except _Done:
            return
        self.ever_connected = True
        st.connected_users += 1
        if st.connected_users == len(self.lg.users):
            self.lg.all_joined.set()
        self.conn = conn
        self.connected.set()
        while True:
            waits: dict[asyncio.Future[Any], str] = {
                asyncio.ensure_future(conn.closed.wait()): "closed",
                asyncio.ensure_future(conn.migrate.wait()): "migrate",
                asyncio.ensure_future(self.lg.closing_event.wait()): "stop"}
            churn = self.lg.cfg.churn
            if churn > 0:
                waits[asyncio.ensure_future(
                    asyncio.sleep(self.lg.rng.expovariate(1.0 / churn)))] = "churn"
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for p in pending:
                p.cancel()
            reasons = {waits[d] for d in done}
            if "stop" in reasons:
                return
            if "closed" in reasons and not conn.closing_by_us:
                # the server (or the network) ended the connection under us
                st.unexpected_closes += 1
                self.connected.clear()
                self.conn = None
                st.reconnects += 1
                self.url_turn += 1
                # full jitter even on the first retry: a restarted server must not get
                # every client back in the same instant
                delay = backoff_delay(self.fail_streak, self.lg.cfg.backoff_base,
                                      self.lg.cfg.backoff_cap, self.lg.rng)
                self.fail_streak += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.lg.closing_event.wait(), delay)
                try:
                    conn = await self._open("reconnect")
                except _Done:
                    return
                self.conn = conn
                self.connected.set()
                continue
            why = "migrate" if "migrate" in reasons else "churn"
            self.url_turn += 1
            # make-before-break: `conn` stays the user's connection (sends, deliveries)
            # until the new one's history has arrived; no churn timer runs meanwhile
            watch = asyncio.create_task(self._drop_when_closed(conn))
            try:
                new = await self._open(why)
            except _Done:
                return
            finally:
                watch.cancel()
            if why == "migrate":
                st.migrations += 1
            else:
                st.churns += 1
            if conn.closed.is_set() and not conn.closing_by_us:
                st.unexpected_closes += 1  # the old one died before the new one's history
            old, conn = conn, new
            self.conn = conn
            self.connected.set()
            self.lg.background(self._retire(old))

    # ---- sending

    async def run_sender(self) -> None:
        cfg, st = self.lg.cfg, self.lg.stats
        while True:
            text = await self.outbox.get()
            cid = uuid.uuid4().hex
            self.inflight = cid
            self.idle.clear()
            st.sent += 1
            t0 = time.monotonic()
            attempt = 0
            try:
                while True:
                    await self.connected.wait()
                    conn = self.conn
                    if conn is None or conn.closed.is_set():
                        await asyncio.sleep(0.05)  # the reconnect is under way
                        continue
                    loop = asyncio.get_running_loop()
                    self.reply = loop.create_future()
                    try:
                        await conn.ws.send(json.dumps(
                            {"type": "send", "text": text, "client_id": cid}))
                    except ConnectionClosed:
                        await conn.closed.wait()
                        continue
                    st.send_frames += 1
                    closed = asyncio.ensure_future(conn.closed.wait())
                    futs: set[asyncio.Future[Any]] = {self.reply, closed}
                    try:
                        done, _ = await asyncio.wait(futs, timeout=cfg.ack_timeout,
                                                     return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        closed.cancel()
                    if self.reply.done():
                        f = self.reply.result()
                        if f.get("type") == "ack":
                            self.lg.on_ack(self, int(f["seq"]), time.monotonic() - t0)
                            break
                        if f.get("code") in ("invalid", "too_long"):
                            st.rejected += 1
                            break
                        # unavailable / rate_limited: same client_id after a backoff
                        st.retries += 1
                        await asyncio.sleep(backoff_delay(attempt, cfg.backoff_base,
                                                          cfg.backoff_cap, self.lg.rng))
                        attempt += 1
                        continue
                    # connection closed or no answer in time: send again (idempotent)
                    st.retries += 1
                    if not done:
                        attempt += 1
            finally:
                self.inflight = None
                self.reply = None
                self.idle.set()


class LoadGen:
    def __init__(self, cfg: LoadGenConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        prefix = cfg.room_prefix or f"lg-{uuid.uuid4().hex[:6]}"
        self.rooms = [f"{prefix}-{i + 1}" for i in range(max(1, cfg.rooms))]
        run = uuid.uuid4().hex[:4]
        self.users = [SimUser(self, i, self.rooms[i % len(self.rooms)], f"u{i + 1}-{run}")
                      for i in range(cfg.users)]
        self.stats = Stats()
        self.latency = LatencyHistogram()
        self.ack_latency = LatencyHistogram()
        self.latency_live = LatencyHistogram()       # first receipts in live frames
        self.latency_recovered = LatencyHistogram()  # ... in a history or an HTTP page
        self.history_wait = LatencyHistogram()   # welcome -> history of each connection
        self.acked: dict[str, set[int]] = {r: set() for r in self.rooms}
        self.stop_event = asyncio.Event()      # stop sending
        self.closing_event = asyncio.Event()   # close everything
        self.closing = False
        self.started_at = 0.0
        self.sending_s = 0.0
        self.drain_s: float | None = None      # how long the drain took (None: not reached)
        self.drain_complete = False
        self.awaiting_at_end: int | None = None  # candidates waiting for history then
        self.all_joined = asyncio.Event()      # every user connected once
        self._bg: set[asyncio.Task[None]] = set()
        self._ack_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def stop(self) -> None:
        """End the sending phase now (then drain and report). Safe to call repeatedly."""
        self.stop_event.set()

    def on_ack(self, user: SimUser, seq: int, latency_s: float) -> None:
        self.stats.acked += 1
        self.acked[user.room].add(seq)
        self.ack_latency.add(latency_s * 1000)
        while self._ack_waiters and self._ack_waiters[0][0] <= self.stats.acked:
            _, fut = self._ack_waiters.pop(0)
            if not fut.done():
                fut.set_result(None)

    async def wait_acked(self, n: int) -> None:
        """Return once ``n`` messages have been acknowledged (the load is flowing)."""
        if self.stats.acked >= n:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ack_waiters.append((n, fut))
        self._ack_waiters.sort(key=lambda w: w[0])
        await fut

    def _held(self) -> list[UserTrack]:
        return [u.track for u in self.users
                if u.ever_connected and u.conn is not None and not u.conn.closed.is_set()]

    def _complete(self) -> bool:
        if any(u.inflight is not None for u in self.users):
            return False
        return all(t.missing(self.acked[t.room]) == 0 for t in self._held())

    async def _schedule(self) -> None:
        """Hand out messages at the total rate, round-robin over users that have joined."""
        cfg = self.cfg
        interval = 1.0 / cfg.rate if cfg.rate > 0 else math.inf
        order = list(self.users)
        self.rng.shuffle(order)
        i = 0
        n = 0
        start = time.monotonic()
        end = start + cfg.duration if cfg.duration > 0 else math.inf
        while not self.stop_event.is_set():
            due = start + n * interval
            now = time.monotonic()
            if due >= end:
                break
            if due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), due - now)
                continue
            n += 1
            for _ in range(len(order)):
                u = order[i % len(order)]
                i += 1
                if u.ever_connected:
                    # one send in flight per user; a user whose acks lag 5 messages behind
                    # skips its turn (counted: the server is slower than the offered load)
                    self.stats.scheduled += 1
                    if u.outbox.qsize() < 5:
                        u.outbox.put_nowait(f"msg {n} from {u.name} · 안녕 hello")
                    else:
                        self.stats.skipped_backlog += 1
                    break
        self.sending_s = time.monotonic() - start

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.started_at = time.time()
        conn_tasks: list[asyncio.Task[None]] = []
        senders: list[asyncio.Task[None]] = []
        try:
            for k, u in enumerate(self.users):
                if cfg.ramp > 0 and cfg.users > 1:
                    delay = cfg.ramp * k / cfg.users
                    conn_tasks.append(asyncio.create_task(self._delayed(delay, u)))
                else:
                    conn_tasks.append(asyncio.create_task(u.run_connections()))
                senders.append(asyncio.create_task(u.run_sender()))
            if cfg.progress > 0:
                self.background(self._progress(cfg.progress))
            # sending starts once the ramp is over (or at once when stopped early)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), cfg.ramp)
            # everyone in before the first message (slow handshakes on a busy machine),
            # but a few users who cannot connect do not hold the run for long
            waits = [asyncio.ensure_future(e.wait()) for e in (self.all_joined, self.stop_event)]
            await asyncio.wait(waits, timeout=cfg.connect_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            await self._schedule()
            for u in self.users:   # drop what was never sent
                while not u.outbox.empty():
                    u.outbox.get_nowait()
                    self.stats.unsent_at_stop += 1
            drain_from = time.monotonic()
            deadline = drain_from + cfg.drain
            # a poll: completeness is a computation over all users, not one event
            while time.monotonic() < deadline and not self._complete():  # noqa: ASYNC110
                await asyncio.sleep(0.25)
            self.drain_complete = self._complete()
            self.drain_s = time.monotonic() - drain_from
            held, live = self._held(), self._live()
            self.awaiting_at_end = self._awaiting_history()
        finally:
            self.closing = True
            self.closing_event.set()
            for t in senders:
                t.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            await asyncio.gather(*conn_tasks, return_exceptions=True)
            await asyncio.gather(*(self._close(u) for u in self.users), return_exceptions=True)
        return self.report(held, live)

    def status_line(self) -> str:
        """One line for a long run in a terminal: is everyone still there, is it flowing?"""
        st = self.stats
        live = self._live()
        colors = " ".join(f"{c}={n}" for c, n in sorted(live.items()))
        lat = self.latency.summary()
        p99 = "-" if lat["p99"] is None else f"{lat['p99']:.0f}ms"
        return (f"[loadgen +{time.time() - self.started_at:5.0f}s] live {sum(live.values())}"
                f"/{self.cfg.users} ({colors})  sent {st.sent} acked {st.acked}"
                f"  unexpected closes {st.unexpected_closes}  migrations {st.migrations}"
                f"  p99 {p99}  awaiting history {self._awaiting_history()}")

    def _awaiting_history(self) -> int:
        return sum(1 for u in self.users if u.candidate is not None)

    async def _progress(self, every: float) -> None:
        while not self.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing_event.wait(), every)
            if not self.closing:
                print(self.status_line(), file=sys.stderr, flush=True)

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _delayed(self, delay: float, u: SimUser) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing_event.wait(), delay)
        if not self.closing:
            await u.run_connections()

    async def _close(self, u: SimUser) -> None:
        c = u.conn
        if c is None:
            return
        await c.close("loadgen done")

    def _live(self) -> Counter[str]:
        live: Counter[str] = Counter()
        for u in self.users:
            if u.conn is not None and not u.conn.closed.is_set():
                live[u.conn.color] += 1
        return live

    def report(self, held: list[UserTrack] | None = None,
               live: Counter[str] | None = None) -> dict[str, Any]:
        """The report; ``held``/``live`` as of the end of sending (default: now)."""
        st = self.stats
        held = self._held() if held is None else held
        live = self._live() if live is None else live
        totals = account(held, self.acked)
        lat = self.latency.summary()
        ack = self.ack_latency.summary()
        return {
            "url": self.cfg.url, "extra_urls": self.cfg.extra_urls,
            "users": self.cfg.users, "rooms": self.rooms,
            "rate": self.cfg.rate, "duration_s": round(self.sending_s, 2),
            "drain_s": None if self.drain_s is None else round(self.drain_s, 2),
            "drain_complete": self.drain_complete,
            "awaiting_history_at_end": (self._awaiting_history() if self.awaiting_at_end is None
                                        else self.awaiting_at_end),
            "connected": st.connected_users,
            "held_to_delivery": len(held),
            "disconnected_at_end": sum(1 for u in self.users if u.ever_connected) - len(held),
            "never_connected": sum(1 for u in self.users if not u.ever_connected),
            "handshakes": st.handshakes,
            "failed_handshakes": st.failed_handshakes,
            "failed_handshakes_by_reason": dict(st.failed_by_reason),
            "unexpected_closes": st.unexpected_closes,
            "reconnects": st.reconnects, "migrations": st.migrations, "churns": st.churns,
            "scheduled": st.scheduled, "skipped_backlog": st.skipped_backlog,
            "unsent_at_stop": st.unsent_at_stop,
            "sent": st.sent, "send_frames": st.send_frames, "retries": st.retries,
            "acked": st.acked, "rejected": st.rejected, "http_fills": st.http_fills,
            "closed_before_history": st.closed_before_history,
            "history_timeouts": st.history_timeouts,
            "migrated_before_history": st.migrated_before_history,
            **totals,
            "latency_ms": {**lat, "basis": "receive wall clock - message ts (server clock)"},
            "ack_latency_ms": {**ack, "basis": "local clock, first send to ack"},
            "latency_by_path_ms": {
                "live": {**self.latency_live.summary(), "n": self.latency_live.n},
                "history_or_http": {**self.latency_recovered.summary(),
                                    "n": self.latency_recovered.n}},
            "history_wait_ms": {**self.history_wait.summary(),
                                "basis": "local clock, welcome to history, per connection"},
            "errors": dict(st.errors),
            "close_codes": dict(st.close_codes),
            "connections_by_color": dict(live),
            "new_connections_by_color": dict(st.new_by_color),
            "new_connections": [list(x) for x in st.timeline],
        }


async def run_loadgen(cfg: LoadGenConfig,
                      on_start: Callable[[LoadGen], None] | None = None) -> dict[str, Any]:
    """Run one load generation and return its report; ``on_start`` gets the LoadGen (to stop it)."""
    lg = LoadGen(cfg)
    if on_start is not None:
        on_start(lg)
    return await lg.run()


# --------------------------------------------------------------------------- CLI


def format_report(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    lat, ack = r["latency_ms"], r["ack_latency_ms"]
    rows: list[tuple[str, Any]] = [
        ("users connected", f"{r['connected']} / {r['users']}"
                            f" (held to delivery at end: {r['held_to_delivery']})"),
        ("handshakes ok / failed", f"{r['handshakes']} / {r['failed_handshakes']}"),
        ("unexpected closes", r["unexpected_closes"]),
        ("migrations / churn reconnects", f"{r['migrations']} / {r['churns']}"),
        ("sent / acked (retries)", f"{r['sent']} / {r['acked']} ({r['retries']})"
                                   + (f", {r['skipped_backlog']} turns skipped: acks lagging"
                                      if r.get("skipped_backlog") else "")),
        ("expected deliveries", r["expected_deliveries"]),
        ("delivered", r["delivered"]),
        ("LOST", r["lost"]),
        ("DUPLICATED", r["duplicated"]),
        ("OUT OF ORDER", r["out_of_order"]),
        ("delivery latency p50/p95/p99",
         f"{ms(lat['p50'])} / {ms(lat['p95'])} / {ms(lat['p99'])}  (vs message ts)"),
        ("ack latency p50/p95/p99",
         f"{ms(ack['p50'])} / {ms(ack['p95'])} / {ms(ack['p99'])}  (local clock)"),
    ]
    hw = r.get("history_wait_ms")
    if hw is not None:
        rows.append(("welcome to history p50/p95/p99",
                     f"{ms(hw['p50'])} / {ms(hw['p95'])} / {ms(hw['p99'])}"
                     f"  ({r.get('closed_before_history', 0)} closed before it,"
                     f" {r.get('history_timeouts', 0)} timed out)"))
    rows += [
        ("connections by color (end)", _colors(r["connections_by_color"])),
        ("new connections by color", _colors(r["new_connections_by_color"])),
        ("errors", _colors(r["errors"]) or "none"),
        ("close codes", _colors(r["close_codes"]) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _colors(d: dict[str, int]) -> str:
    return "  ".join(f"{k}={v}" for k, v in sorted(d.items()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chat loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--url", action="append", default=None,
                   help="WebSocket URL of /ws (default ws://127.0.0.1:8080/ws); repeat it to "
                        "spread users over several instances without a load balancer")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--rate", type=float, default=20.0, help="messages/s, all users together")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of sending; 0 = until SIGINT/SIGTERM")
    p.add_argument("--rooms", type=int, default=1)
    p.add_argument("--room-prefix", default=None, help="room names <prefix>-1..N")
    p.add_argument("--origin", default=None, help="Origin header to send")
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which users join")
    p.add_argument("--drain", type=float, default=15.0,
                   help="at most this many seconds to wait for in-flight deliveries after "
                        "sending stops (ends as soon as everything arrived)")
    p.add_argument("--churn", type=float, default=0.0,
                   help="mean seconds between planned make-before-break reconnects per user")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--progress", type=float, default=10.0,
                   help="status line on stderr every N seconds (0: none)")
    p.add_argument("--json", dest="json_path", default=None, help="write the report here")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    urls = args.url or ["ws://127.0.0.1:8080/ws"]
    cfg = LoadGenConfig(url=urls[0], extra_urls=urls[1:], users=args.users, rate=args.rate,
                        duration=args.duration,
                        rooms=args.rooms, room_prefix=args.room_prefix, origin=args.origin,
                        ramp=args.ramp, drain=args.drain, churn=args.churn, seed=args.seed,
                        progress=args.progress)

    def hook(lg: LoadGen) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, lg.stop)

    report = asyncio.run(run_loadgen(cfg, on_start=hook))
    if not args.quiet:
        print(format_report(report))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, ensure_ascii=False)
    return exit_code(report)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
