"""One simulated user: its connections (join, migrate, churn, reconnect with backoff), the
history and HTTP catch-up after each, and its sender (one message in flight, retried on
``unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from .accounting import ConnTrack, UserTrack

if TYPE_CHECKING:
    from .scheduler import LoadGen


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0, min(cap, base * (2 ** min(attempt, 20))))


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
