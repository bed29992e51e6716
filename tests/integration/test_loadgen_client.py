"""The load generator's client behaviour, against a scripted peer that speaks the protocol.

The real chat server cannot be told "answer the first try of every send with unavailable"
or "deliver seq 7 twice to one user"; this small in-process WebSocket peer (websockets'
own server, real sockets on a free port) can, so these tests pin down that the load
generator retries, migrates, resumes, and *notices* loss and duplication end to end.
The tests against the real chat service are in test_loadgen_stack.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from loadgen import LoadGenConfig, exit_code, run_loadgen
from tests.conftest import REPO, free_port


@dataclass
class ConnRecord:
    """One connection as the peer saw it (monotonic times, peer side)."""

    name: str
    since: int | None
    opened: float
    history_at: float | None = None       # when the peer sent its history frame
    closed_at: float | None = None
    closed_by_peer: bool = False          # the peer closed it (1012), not the client
    sends: list[float] = field(default_factory=list)


@dataclass
class Peer:
    """One room, durable in memory, exactly-once in-order fan-out through per-client queues."""

    color: str = "blue"
    unavailable_first_try: bool = False
    migrate_after: int | None = None      # send migrate to everyone after N stored messages
    drop_all_after: int | None = None     # close everyone with 1012 after N stored messages
    duplicate_seq: int | None = None      # deliver this seq twice to the first client
    skip_seq: int | None = None           # never deliver this seq to the first client
    history_cap: int = 1000               # history after `since` stops here, with more=true
    drop_half_after: int | None = None    # close every other client after N stored messages
    refuse_until: float = 0.0             # monotonic time until which handshakes get 503
    history_delay: float = 0.0            # seconds between welcome and history (live buffered)
    history_gate: asyncio.Event | None = None   # history waits for this too
    gate_only_since: bool = False         # ... only on connections with `since`
    close_before_history: int = 0         # close this many `since` connections after welcome
    migrate_before_history: int = 0       # send migrate to this many, before their history
    records: list[ConnRecord] = field(default_factory=list)
    seq: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    tried: set[str] = field(default_factory=set)
    clients: list[asyncio.Queue[str | None]] = field(default_factory=list)
    record_of: dict[int, ConnRecord] = field(default_factory=dict)   # id(queue) -> record
    first: asyncio.Queue[str | None] | None = None
    fired: bool = False
    ten_stored: asyncio.Event = field(default_factory=asyncio.Event)
    next_user: int = 0
    http_requests: int = 0

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        q = parse_qs(urlsplit(ws.request.path).query)
        room, name = q["room"][0], q["name"][0]
        since = int(q["since"][0]) if "since" in q else None
        out: asyncio.Queue[str | None] = asyncio.Queue()
        self.next_user += 1
        rec = ConnRecord(name, since, time.monotonic())
        self.records.append(rec)
        cut = since is not None and self.close_before_history > 0
        if cut:
            self.close_before_history -= 1
        move = since is not None and not cut and self.migrate_before_history > 0
        if move:
            self.migrate_before_history -= 1
        # welcome, history and registration with no await between: no gap, no repeat
        out.put_nowait(json.dumps({"type": "welcome", "user_id": self.next_user, "name": name,
                                   "room": room, "color": self.color, "version": "v1",
                                   "server": "peer", "seq": self.seq}))
        hist = [m for m in self.messages if since is None or m["seq"] > since]
        more = False
        if since is None:
            hist = hist[-50:]
        elif len(hist) >= self.history_cap:
            # like the real server: the first N after since, then live from now on
            hist, more = hist[:self.history_cap], True
        if cut:
            out.put_nowait("__close_1012__")
        if move:
            out.put_nowait(json.dumps({"type": "migrate"}))
        out.put_nowait(json.dumps({"type": "history", "messages": hist, "more": more}))
        if self.first is None:
            self.first = out
        self.clients.append(out)
        self.record_of[id(out)] = rec
        writer = asyncio.create_task(self._write(ws, out, rec))
        try:
            async for raw in ws:
                f = json.loads(raw)
                rec.sends.append(time.monotonic())
                cid = f["client_id"]
                if self.unavailable_first_try and cid not in self.tried:
                    self.tried.add(cid)
                    out.put_nowait(json.dumps({"type": "error", "code": "unavailable",
                                               "message": "storage down"}))
                    continue
                if cid not in self.ids:
                    self.seq += 1
                    self.ids[cid] = self.seq
                    m = {"type": "message", "room": room, "seq": self.seq, "user_id": 1,
                         "name": name, "text": f["text"], "ts": int(time.time() * 1000),
                         "color": self.color}
                    self.messages.append(m)
                    self._fan_out(m)
                out.put_nowait(json.dumps({"type": "ack", "client_id": cid,
                                           "seq": self.ids[cid]}))
                self._maybe_fire()
                if self.seq >= 10:
                    self.ten_stored.set()
        finally:
            rec.closed_at = time.monotonic()
            self.clients.remove(out)
            out.put_nowait(None)
            await writer

    def http(self, connection: ServerConnection, request: Request) -> Response | None:
        """GET /api/rooms/<room>/messages?since=&limit= (the one room there is)."""
        url = urlsplit(request.path)
        if url.path == "/ws" and time.monotonic() < self.refuse_until:
            return connection.respond(503, "try later")
        if not url.path.startswith("/api/rooms/"):
            return None
        q = parse_qs(url.query)
        since, limit = int(q["since"][0]), int(q["limit"][0])
        self.http_requests += 1
        page = [m for m in self.messages if m["seq"] > since][:limit]
        return connection.respond(200, json.dumps({"messages": page}))

    def close_live(self) -> None:
        """Close (1012) every connection whose history went out; candidates stay."""
        for c in self.clients:
            if self.record_of[id(c)].history_at is not None:
                c.put_nowait("__close_1012__")

    def _fan_out(self, m: dict[str, Any]) -> None:
        frame = json.dumps(m)
        for c in self.clients:
            if c is self.first and m["seq"] == self.skip_seq:
                continue
            c.put_nowait(frame)
            if c is self.first and m["seq"] == self.duplicate_seq:
                c.put_nowait(frame)

    def _maybe_fire(self) -> None:
        if self.fired:
            return
        if self.migrate_after is not None and self.seq >= self.migrate_after:
            self.fired = True
            self.color = "green"        # new connections land on "green"
            for c in self.clients:
                c.put_nowait(json.dumps({"type": "migrate"}))
        if self.drop_all_after is not None and self.seq >= self.drop_all_after:
            self.fired = True
            for c in self.clients:
                c.put_nowait("__close_1012__")
        if self.drop_half_after is not None and self.seq >= self.drop_half_after:
            # the others keep talking while these cannot get back in for a moment
            self.fired = True
            self.refuse_until = time.monotonic() + 0.7
            for c in self.clients[::2]:
                c.put_nowait("__close_1012__")

    async def _write(self, ws: ServerConnection, out: asyncio.Queue[str | None],
                     rec: ConnRecord) -> None:
        while (frame := await out.get()) is not None:
            if frame == "__close_1012__":
                rec.closed_by_peer = True
                await ws.close(1012, "going away")
                return
            if frame.startswith('{"type": "history"'):
                # a slow join: live frames wait in `out` behind the history, like the server
                if self.history_delay:
                    await asyncio.sleep(self.history_delay)
                if self.history_gate is not None and (rec.since is not None
                                                      or not self.gate_only_since):
                    await self.history_gate.wait()
                rec.history_at = time.monotonic()
            try:
                await ws.send(frame)
            except Exception:
                if frame.startswith('{"type": "history"'):
                    rec.history_at = None     # it never went out: closed meanwhile
                return


@asynccontextmanager
async def running(peer: Peer) -> AsyncIterator[str]:
    port = free_port()
    async with serve(peer.handler, "127.0.0.1", port, compression=None,
                     process_request=peer.http):
        yield f"ws://127.0.0.1:{port}/ws"


def cfg(url: str, **kw: Any) -> LoadGenConfig:
    base: dict[str, Any] = dict(url=url, users=6, rate=30.0, duration=1.5, ramp=0.2, drain=3.0,
                                seed=7, backoff_base=0.05, backoff_cap=0.3)
    base.update(kw)
    return LoadGenConfig(**base)


async def test_clean_peer_gives_a_clean_report() -> None:
    peer = Peer()
    async with running(peer) as url:
        r = await run_loadgen(cfg(url))
    assert r["connected"] == 6 and r["sent"] > 30 and r["acked"] == r["sent"]
    assert r["expected_deliveries"] == 6 * r["acked"] == r["delivered"]
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == r["unexpected_closes"] == 0
    assert r["connections_by_color"] == {"blue": 6}
    assert r["drain_complete"] is True and r["drain_s"] is not None
    assert r["closed_before_history"] == r["history_timeouts"] == 0
    assert exit_code(r) == 0


async def test_unavailable_is_retried_with_the_same_client_id_and_nothing_is_lost() -> None:
    peer = Peer(unavailable_first_try=True)
    async with running(peer) as url:
        r = await run_loadgen(cfg(url))
    assert r["errors"].get("unavailable", 0) == r["sent"] > 0
    assert r["retries"] >= r["sent"] and r["acked"] == r["sent"]
    assert len(peer.ids) == r["sent"]            # each message stored once
    assert r["lost"] == 0 and exit_code(r) == 0


async def test_migrate_is_followed_make_before_break() -> None:
    peer = Peer(migrate_after=10)
    async with running(peer) as url:
        r = await run_loadgen(cfg(url))
    assert r["migrations"] == 6 and r["unexpected_closes"] == 0
    assert r["new_connections_by_color"] == {"blue": 6, "green": 6}
    assert r["connections_by_color"] == {"green": 6}
    assert r["close_codes"] == {"1000": 12}                # old ones by us, then the rest
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0 and exit_code(r) == 0


async def test_server_going_away_is_an_unexpected_close_resumed_with_since() -> None:
    peer = Peer(drop_all_after=10)
    async with running(peer) as url:
        r = await run_loadgen(cfg(url))
    assert r["unexpected_closes"] == 6 and r["reconnects"] == 6
    assert r["close_codes"] == {"1012": 6, "1000": 6}   # theirs, then ours at the end
    assert r["lost"] == 0 and r["duplicated"] == 0 and exit_code(r) == 0


async def test_churn_reconnects_make_before_break_and_loses_nothing() -> None:
    peer = Peer()
    async with running(peer) as url:
        r = await run_loadgen(cfg(url, churn=0.4, duration=2.0))
    assert r["churns"] >= 6 and r["unexpected_closes"] == 0
    assert r["handshakes"] == 6 + r["churns"] == sum(r["new_connections_by_color"].values())
    assert len(r["new_connections"]) == r["handshakes"]
    assert {why for _, _, why in r["new_connections"]} == {"join", "churn"}
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0 and exit_code(r) == 0


async def test_history_with_more_is_completed_over_http() -> None:
    peer = Peer(drop_half_after=10, history_cap=1)
    async with running(peer) as url:
        r = await run_loadgen(cfg(url, duration=2.5))
    assert r["reconnects"] == 3 and r["failed_handshakes_by_reason"].get("http_503", 0) >= 3
    assert r["http_fills"] >= 3 and peer.http_requests == r["http_fills"]
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0 and exit_code(r) == 0


async def test_a_duplicate_delivery_fails_the_run() -> None:
    peer = Peer(duplicate_seq=5)
    async with running(peer) as url:
        r = await run_loadgen(cfg(url))
    assert r["duplicated"] == 1 and r["lost"] == 0
    assert exit_code(r) == 1


async def test_a_missed_delivery_is_lost_and_fails_the_run() -> None:
    peer = Peer(skip_seq=5)
    async with running(peer) as url:
        r = await run_loadgen(cfg(url, drain=1.0))
    assert r["lost"] == 1 and r["duplicated"] == 0
    assert exit_code(r) == 1


async def test_stop_ends_an_open_ended_run_with_a_report() -> None:
    peer = Peer()
    holder: list[Any] = []
    async with running(peer) as url:
        task = asyncio.create_task(run_loadgen(cfg(url, duration=0), on_start=holder.append))
        await asyncio.wait_for(peer.ten_stored.wait(), 10)
        holder[0].stop()
        r = await asyncio.wait_for(task, 10)
    assert r["sent"] >= 10 and r["lost"] == 0 and exit_code(r) == 0


async def test_cli_runs_until_sigterm_then_drains_and_reports(tmp_path: Path) -> None:
    peer = Peer()
    out = tmp_path / "report.json"
    async with running(peer) as url:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chat", "loadgen", "--url", url, "--users", "4",
            "--rate", "20", "--duration", "0", "--ramp", "0.2", "--json", str(out),
            "--progress", "0.3",
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            await asyncio.wait_for(peer.ten_stored.wait(), 30)
            proc.send_signal(signal.SIGTERM)
            stdout, _ = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, stdout.decode()
    report = json.loads(out.read_text())
    assert report["sent"] >= 10 and report["acked"] == report["sent"]
    assert report["lost"] == 0 and report["connected"] == 4
    assert "LOST" in stdout.decode()
    assert "[loadgen +" in stdout.decode() and "live 4/4 (blue=4)" in stdout.decode()


def assert_switched_only_after_history(peer: Peer) -> None:
    """Per user, from the peer's side: nothing was sent on a connection before its history
    went out, a replaced connection was closed (by the client) only after its successor's
    history went out, and no connection was opened while an earlier one still waited for
    its history."""
    by_user: dict[str, list[ConnRecord]] = {}
    for rec in peer.records:
        by_user.setdefault(rec.name, []).append(rec)
    for name, recs in by_user.items():
        recs.sort(key=lambda r: r.opened)
        for i, rec in enumerate(recs):
            if rec.sends:
                assert rec.history_at is not None and min(rec.sends) > rec.history_at, name
            for earlier in recs[:i]:
                if earlier.history_at is not None:
                    assert rec.opened > earlier.history_at, (name, i)
        with_history = [r for r in recs if r.history_at is not None]
        for old, new in itertools.pairwise(with_history):
            if old.closed_by_peer:
                continue
            assert old.closed_at is not None and new.history_at is not None
            assert old.closed_at > new.history_at, name


async def test_a_user_counts_as_connected_only_once_its_history_arrived() -> None:
    gate = asyncio.Event()
    peer = Peer(history_gate=gate)
    holder: list[Any] = []
    async with running(peer) as url:
        task = asyncio.create_task(run_loadgen(cfg(url), on_start=holder.append))
        await asyncio.sleep(0)
        lg = holder[0]
        for _ in range(500):                      # every user has its welcome, no history
            if lg.stats.handshakes == 6:
                break
            await asyncio.sleep(0.02)
        assert lg.stats.handshakes == 6
        assert lg.stats.connected_users == 0 and lg.stats.sent == 0
        assert all(u.conn is None and u.candidate is not None for u in lg.users)
        assert sum(lg._live().values()) == 0
        assert "awaiting history 6" in lg.status_line()
        gate.set()
        r = await asyncio.wait_for(task, 30)
    assert r["connected"] == 6 and r["sent"] > 0 and r["acked"] == r["sent"]
    assert r["history_wait_ms"]["p50"] is not None and r["awaiting_history_at_end"] == 0
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0 and exit_code(r) == 0
    assert_switched_only_after_history(peer)


async def test_churn_keeps_the_old_connection_until_the_new_history_arrived() -> None:
    """Joins slower than the churn interval: the old connection carries the sends and
    keeps receiving (its copies overlap the new history), the next churn waits."""
    peer = Peer(history_delay=0.6)
    async with running(peer) as url:
        r = await run_loadgen(cfg(url, churn=0.3, duration=3.0))
    assert r["churns"] >= 6 and r["unexpected_closes"] == 0
    # + at most one candidate per user still waiting for its history at the end (closed)
    assert 6 + r["churns"] <= r["handshakes"] <= 12 + r["churns"]
    assert r["history_wait_ms"]["p50"] >= 590       # the peer's delay, as measured
    assert r["overlap_dropped"] > 0                  # the old one kept delivering meanwhile
    by_path = r["latency_by_path_ms"]
    assert by_path["live"]["n"] + by_path["history_or_http"]["n"] == r["delivered"]
    assert r["acked"] == r["sent"] > 0
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0 and exit_code(r) == 0
    assert_switched_only_after_history(peer)


async def test_a_migration_whose_new_connection_closes_before_its_history_is_retried(
) -> None:
    peer = Peer(migrate_after=10, history_delay=0.2, close_before_history=3)
    async with running(peer) as url:
        r = await run_loadgen(cfg(url, duration=2.5))
    assert r["closed_before_history"] == 3 and r["history_timeouts"] == 0
    assert r["migrations"] == 6 and r["unexpected_closes"] == 0
    assert r["handshakes"] == 6 + 6 + 3
    assert r["connections_by_color"] == {"green": 6}
    assert r["acked"] == r["sent"] > 0
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0 and exit_code(r) == 0
    assert_switched_only_after_history(peer)


async def wait_for(pred: Any, what: str, within: float = 15.0) -> None:
    for _ in range(int(within / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_old_connection_lost_while_the_new_waits_for_history_leaves_no_connection(
) -> None:
    """migrate, then the old connections are closed (1012) while the new ones still wait
    for their history: the users have no connection (not held, sends wait) until the
    history arrives, then the new one takes over; nothing is lost or repeated."""
    gate = asyncio.Event()
    peer = Peer(migrate_after=10, history_gate=gate, gate_only_since=True)
    holder: list[Any] = []
    async with running(peer) as url:
        task = asyncio.create_task(run_loadgen(cfg(url, duration=0), on_start=holder.append))
        await asyncio.sleep(0)
        lg = holder[0]
        await wait_for(lambda: all(u.candidate is not None for u in lg.users),
                       "every user's replacement waiting for its history")
        assert all(u.conn is not None and u.conn.color == "blue" for u in lg.users)
        peer.close_live()
        await wait_for(lambda: all(u.conn is None for u in lg.users), "old ones dropped")
        assert lg._held() == [] and sum(lg._live().values()) == 0
        assert lg.stats.migrations == 0 and lg.stats.reconnects == 0
        gate.set()
        await wait_for(lambda: lg._live() == {"green": 6}, "every user on green")
        acked = lg.stats.acked
        await asyncio.wait_for(lg.wait_acked(acked + 6), 15)   # sends flow again
        lg.stop()
        r = await asyncio.wait_for(task, 30)
    assert r["migrations"] == 6 and r["unexpected_closes"] == 6 and r["reconnects"] == 0
    assert r["connections_by_color"] == {"green": 6} and r["held_to_delivery"] == 6
    assert r["acked"] == r["sent"] > 0
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0 and exit_code(r) == 0
    assert_switched_only_after_history(peer)


async def test_a_new_connection_told_to_migrate_before_its_history_is_not_switched_to(
) -> None:
    """Its instance began draining while it joined: the user stays on the old connection
    and opens another; the abandoned one never carried a send."""
    peer = Peer(migrate_after=10, history_delay=0.3, migrate_before_history=3)
    async with running(peer) as url:
        r = await run_loadgen(cfg(url, duration=2.5))
    assert r["migrated_before_history"] == 3 and r["closed_before_history"] == 0
    assert r["migrations"] == 6 and r["unexpected_closes"] == 0
    assert r["handshakes"] == 6 + 6 + 3
    abandoned = [rec for rec in peer.records if rec.since is not None
                 and rec.history_at is None]
    assert len(abandoned) == 3 and not any(rec.sends for rec in abandoned)
    assert r["connections_by_color"] == {"green": 6}
    assert r["acked"] == r["sent"] > 0
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0 and exit_code(r) == 0
    assert_switched_only_after_history(peer)
