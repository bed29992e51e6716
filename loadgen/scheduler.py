"""A run: its configuration, the users ramped in, messages handed out at the total rate,
the drain until every acknowledged message arrived, and the report dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .accounting import LatencyHistogram, UserTrack, account
from .users import SimUser


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
