"""The HTTP and WebSocket surface: `create_app(config)` builds the Sanic app.

Listeners own the lifecycle: Redis and DynamoDB clients start in before_server_start;
a SIGTERM drains (migrate, then 1012) in before_server_stop, before Sanic's own shutdown
would close every WebSocket with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import itertools
import json
import logging
import random
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sanic import Request, Sanic
from sanic.response import HTTPResponse, file, text
from sanic.response import json as json_response
from websockets.exceptions import ConnectionClosed

from . import adminauth, gate, protocol
from .bus import BusErrors, RoomBus
from .cloudwatch import Publisher
from .config import Config
from .lbweights import HaproxyStatsSource, ListenerSource, WeightsPoller, WeightsSource
from .metrics import Metrics
from .protocol import ErrorCode, ProtocolError
from .rooms import Client, Rooms
from .stats import BoardStats, aggregate
from .store import MessageStore, StoreUnavailable
from .targetwatch import TargetWatcher
from .ws import LeanWebsocket, Pinger
from .ws import install as install_lean_websockets

log = logging.getLogger("chat")
_app_ids = itertools.count(1)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class TokenBucket:
    """`rate` frames per second sustained, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Strikes:
    """More than `limit` strikes within `window` seconds: out. limit 0: never."""

    __slots__ = ("at", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.at: deque[float] = deque(maxlen=limit + 1)

    def strike(self) -> bool:
        if self.limit <= 0:
            return False
        now = time.monotonic()
        self.at.append(now)
        return len(self.at) > self.limit and now - self.at[0] <= self.window


class Drainer:
    """Turns the instance not-ready and moves its clients away (migrate, then 1012).

    A join still in flight when the drain starts (handshake done, not yet live) must not
    get `migrate` before its `history`, nor be cut by the shutdown: `joining` counts such
    joins, the drain waits for them (bounded by JOIN_GRACE_SECONDS after the window), and
    `admit()` tells each one to migrate as soon as it is live, closing it with 1012 if the
    drain is already closing.
    """

    JOIN_GRACE_SECONDS = 5.0  # after the window, how long joins in flight may still land

    def __init__(self, config: Config, rooms: Rooms, metrics: Metrics) -> None:
        self.config, self.rooms, self.metrics = config, rooms, metrics
        self.draining = False
        self.closing = False  # the window is over: the rest are being closed with 1012
        self.joining = 0  # WebSocket joins between handshake and live
        self.reason = ""
        self.task: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()

    def admit(self, client: Client) -> None:
        """A client that went live while the instance drains: migrate it now."""
        if not self.draining or client.closed:
            return
        if not client.migrated:
            client.migrated = True
            client.offer(protocol.MIGRATE_FRAME)
        if self.closing:
            task = asyncio.create_task(client.close(protocol.CLOSE_GOING_AWAY,
                                                    "service restart"))
            self._late.add(task)
            task.add_done_callback(self._late.discard)

    def start(self, reason: str) -> None:
        if self.draining:
            if reason == "shutdown":
                self.reason = reason  # an admin drain in progress now ends in an exit
            return
        self.reason = reason
        self.draining = True
        self.closing = False
        self.metrics.draining.set(1)
        log.info("drain_start", extra={"event": "drain_start", "reason": reason,
                                       "clients": len(self.rooms.clients()),
                                       "joining": self.joining,
                                       "window_s": self.config.drain_seconds})
        self.task = asyncio.create_task(self._run(), name="drain")

    def stop(self) -> None:
        if not self.draining or self.reason == "shutdown":
            return  # nothing to undo, or the process is exiting anyway
        self.draining = False
        self.metrics.draining.set(0)
        if self.task:
            self.task.cancel()
        for client in self.rooms.clients():
            client.migrated = False  # a later drain asks them again
        log.info("drain_cancelled", extra={"event": "undrain"})

    async def wait(self) -> None:
        if self.task:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        window = max(0.0, self.config.drain_seconds)
        start = time.monotonic()
        clients = self.rooms.clients()
        # Migrate spread with jitter over the first 80% of the window; the rest is for
        # the clients' new connections to settle before the 1012s.
        plan = sorted((random.uniform(0, window * 0.8), i) for i in range(len(clients)))
        for at, i in plan:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            client = clients[i]
            # a client still joining (no history yet) is asked by admit() once live
            if not client.closed and not client.migrated and client.buffer is None:
                client.migrated = True
                client.offer(protocol.MIGRATE_FRAME)
        while (time.monotonic() - start < window  # noqa: ASYNC110
               and (self.rooms.clients() or self.joining)):
            await asyncio.sleep(0.05)  # clients leave on their own; poll cheaply
        self.closing = True
        rest = [c for c in self.rooms.clients() if c.buffer is None]  # joining: admit()
        for client in rest:
            if not client.migrated:
                client.migrated = True
                client.offer(protocol.MIGRATE_FRAME)
        await asyncio.gather(*(c.close(protocol.CLOSE_GOING_AWAY, "service restart")
                               for c in rest), return_exceptions=True)
        # Joins still in flight go live (admit: migrate, 1012) or fail; wait for them,
        # bounded, so a SIGTERM's shutdown does not close them with 1001 half-way.
        grace = time.monotonic() + self.JOIN_GRACE_SECONDS
        while self.joining and time.monotonic() < grace:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        late = len(self._late)
        if self._late:
            await asyncio.gather(*self._late, return_exceptions=True)
        log.info("drain_done", extra={"event": "drain_done", "closed_1012": len(rest),
                                      "joins_closed_1012": late, "joining": self.joining,
                                      "seconds": round(time.monotonic() - start, 2)})


def _origin_allowed(config: Config, request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser; browsers always send Origin on WebSocket requests
    if "*" in config.allowed_origins or origin.rstrip("/") in config.allowed_origins:
        return True
    return urlsplit(origin).netloc.lower() == (request.headers.get("host") or "").lower()


def _problem(status: int, message: str, **extra: Any) -> HTTPResponse:
    return json_response({"error": message, **extra}, status=status)


def create_app(config: Config) -> Sanic:
    install_lean_websockets()  # Sanic's handshake makes chat.ws.LeanWebsocket connections
    app = Sanic(f"canary_chat_{next(_app_ids)}", configure_logging=False,
                request_class=gate.LenientRequest)
    # Enabling WebSockets ourselves keeps Sanic from registering its own before_server_stop
    # listener that cancels every WebSocket handler: our drain must run first.
    app.websocket_enabled = True
    app.config.update(
        WEBSOCKET_MAX_SIZE=protocol.MAX_FRAME,
        # Keep-alive: one Pinger per process instead of a ping task per connection.
        WEBSOCKET_PING_INTERVAL=None,
        REQUEST_MAX_SIZE=64 * 1024,
        KEEP_ALIVE_TIMEOUT=75,  # above the ALB's 60 s idle timeout
        # from accepting a connection to the whole request (headers and body): 408 after
        REQUEST_TIMEOUT=config.request_timeout,
        GRACEFUL_SHUTDOWN_TIMEOUT=3,
        FALLBACK_ERROR_FORMAT="json",
    )
    metrics = Metrics(config.color, config.version)
    store = MessageStore(config)
    board = BoardStats()
    app.ctx.config = config
    app.ctx.metrics = metrics
    app.ctx.store = store
    app.ctx.board = board
    pinger = Pinger(config.ping_interval, config.ping_timeout)
    app.ctx.pinger = pinger

    async def presence(room: str) -> dict[str, int]:
        return await app.ctx.bus.presence(room)

    rooms = Rooms(config, store, metrics, presence)
    drainer = Drainer(config, rooms, metrics)
    app.ctx.rooms = rooms
    app.ctx.drainer = drainer
    cloudwatch = Publisher(color=config.color, namespace=config.cloudwatch_namespace,
                           interval=config.cloudwatch_interval, region=config.aws_region,
                           enabled=config.cloudwatch,
                           connections=lambda: metrics.connections.value)
    app.ctx.cloudwatch = cloudwatch
    target_watcher = TargetWatcher(
        arns=config.target_group_arns, target_id=config.target_id,
        port=config.target_port or config.port, interval=config.target_poll,
        region=config.aws_region, on_deregistered=lambda: drainer.start("deregistered"))

    weights_source: WeightsSource | None = None
    if config.weights_haproxy_url:
        weights_source = HaproxyStatsSource(config.weights_haproxy_url,
                                            config.weights_haproxy_backend)
    elif config.weights_listener_arn:
        weights_source = ListenerSource(
            config.weights_listener_arn,
            {"blue": config.weights_blue_target_group_arn or "",
             "green": config.weights_green_target_group_arn or ""},
            config.aws_region)
    lb_weights = WeightsPoller(weights_source, config.weights_poll)
    app.ctx.lb_weights = lb_weights

    def on_control(cmd: dict[str, Any]) -> None:
        if cmd.get("color") != config.color:
            return
        if cmd.get("cmd") == "drain":
            drainer.start("admin")
        elif cmd.get("cmd") == "undrain":
            drainer.stop()

    async def on_reconnect() -> None:
        await rooms.catch_up_all()

    bus = RoomBus(config, on_message=rooms.on_bus_message, on_presence=rooms.on_presence,
                  on_control=on_control, on_reconnect=on_reconnect)
    app.ctx.bus = bus
    background: list[asyncio.Task[None]] = []

    async def stats_loop() -> None:
        while True:
            await asyncio.sleep(1.0)
            snap = {"instance": config.instance_id, "color": config.color,
                    "version": config.version, "connections": int(metrics.connections.value),
                    "draining": drainer.draining, **board.snapshot()}
            with contextlib.suppress(*BusErrors):
                await bus.write_stats(snap)
            if not bus.connected.is_set():
                # Redis is down: poll the store so messages from other instances still
                # arrive (delayed, never lost).
                await rooms.catch_up_all()

    @app.before_server_start
    async def _start(app: Sanic) -> None:
        await store.start()
        await bus.start()
        background.append(asyncio.create_task(stats_loop(), name="stats"))
        pinger.start()
        await cloudwatch.start()
        await target_watcher.start()
        await lb_weights.start()
        # The interpreter, Sanic, aiohttp, redis and botocore's models: a few hundred
        # thousand objects that live as long as the process. Out of the cyclic GC's way,
        # every full collection (a pause of the event loop) walks only what came after.
        gc.collect()
        gc.freeze()
        log.info("server_start", extra={"event": "server_start", "host": config.host,
                                         "port": config.port})

    @app.before_server_stop
    async def _drain_on_stop(app: Sanic) -> None:
        await target_watcher.stop()
        drainer.start("shutdown")
        await drainer.wait()

    @app.after_server_stop
    async def _stop(app: Sanic) -> None:
        pinger.stop()
        for t in background:
            t.cancel()
        if _background:  # the last connections' cleanups still need Redis and DynamoDB
            await asyncio.wait(list(_background), timeout=STOP_CLEANUP_SECONDS)
        await cloudwatch.stop()  # the last partial interval, closes included
        await lb_weights.stop()
        await bus.close()
        await store.close()
        log.info("server_stop", extra={"event": "server_stop"})

    # --- middleware ---

    @app.on_request
    async def _gate(request: Request) -> HTTPResponse | None:
        request.ctx.join = None
        refused = gate.bad_path(request.path)
        if refused:
            return _problem(400, refused)
        if request.path not in PROBES and not gate.host_allowed(config.allowed_hosts,
                                                               request.headers.get("host")):
            return _problem(421, "host not served here (CHAT_ALLOWED_HOSTS)")
        if request.path == "/ws":
            refused = gate.bad_handshake_headers(request.headers)
            if refused:
                return _problem(400, refused)
            try:
                request.ctx.join = protocol.parse_join_query(
                    {k: request.args.getlist(k) for k in request.args})
            except ValueError as e:
                return _problem(400, str(e))
            if not _origin_allowed(config, request):
                return _problem(403, "origin not allowed")
            if drainer.draining:
                return _problem(503, "draining", reason="draining")
            return None
        if (config.fault_rate and gate.counts_in_gate(request)
                and random.random() < config.fault_rate):
            return _problem(500, "injected fault (CHAT_FAULT_RATE)")
        return None

    @app.on_response
    async def _headers(request: Request, response: HTTPResponse) -> None:
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        status = response.status
        if not gate.counts_in_gate(request):
            return  # probes, files, admin, pinned requests would dilute the gate's error rate
        if 400 <= status < 500:
            metrics.http_client_faults.inc()  # the client's fault: never in the gate
            return
        metrics.http.inc(f"{status // 100}xx")
        board.request()
        if status >= 500:
            board.failure()
            log.warning("http_5xx", extra={"event": "http_5xx", "path": request.path,
                                           "status": status})

    # --- plain HTTP ---

    @app.get("/healthz")
    async def healthz(request: Request) -> HTTPResponse:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz(request: Request) -> HTTPResponse:
        if drainer.draining:
            return json_response({"status": "unready", "reason": "draining"}, status=503)
        try:
            await bus.ping()
        except BusErrors as e:
            return json_response({"status": "unready", "reason": f"redis: {e}"}, status=503)
        if not store.answered_recently(5.0):
            try:
                await asyncio.wait_for(store.ping(), 3.0)
            except TimeoutError:
                return json_response({"status": "unready", "reason": "dynamodb: timeout"},
                                     status=503)
            except StoreUnavailable as e:
                return json_response({"status": "unready", "reason": f"dynamodb: {e}"},
                                     status=503)
        return json_response({"status": "ready"})

    @app.get("/version")
    async def version(request: Request) -> HTTPResponse:
        return json_response({"color": config.color, "version": config.version,
                              "server": config.instance_id})

    @app.get("/metrics")
    async def metrics_view(request: Request) -> HTTPResponse:
        return text(metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/rooms/<room:str>/messages")
    async def room_messages(request: Request, room: str) -> HTTPResponse:
        room = unquote(room)  # Sanic hands path parameters over still percent-encoded
        if not protocol.valid_name(room):
            return _problem(400, "room must be 1-32 letters, digits, spaces or _-.")
        try:
            since = protocol.parse_since(request.args.get("since"))
            limit = protocol.parse_limit(request.args.get("limit"))
        except ValueError as e:
            return _problem(400, str(e))
        try:
            messages = await store.messages_page(room, since=since, limit=limit)
        except StoreUnavailable:
            return _problem(503, "storage unavailable")
        return json_response({"room": room, "messages": messages},
                             headers={"Cache-Control": "no-store"})

    @app.get("/api/stats")
    async def api_stats(request: Request) -> HTTPResponse:
        try:
            instances = await bus.read_stats()
            weights, events = await bus.deploy_state()
        except BusErrors:
            return _problem(503, "redis unavailable")
        # the load balancer's own weights once read; before that (or with no source
        # configured) those of the last canary event
        weights = lb_weights.value or weights
        return json_response({"ts": int(time.time() * 1000), "colors": aggregate(instances),
                              "weights": weights, "events": events},
                             headers={"Cache-Control": "no-store"})

    # --- admin ---

    async def _admin_check(request: Request) -> HTTPResponse | None:
        """None when the call may proceed, else the answer (404, 401 or 503).

        Signed calls (chat/adminauth.py) everywhere; `Bearer <token>` too unless
        CHAT_ADMIN_BEARER=0. Header bytes that are not UTF-8 reach us as surrogates
        (surrogateescape): they are compared as the bytes they were, never a 500.
        """
        token = config.admin_token
        if not token:
            return _problem(404, "admin API disabled (CHAT_ADMIN_TOKEN unset)")
        header = request.headers.get("authorization", "")
        if adminauth.is_signed(header):
            try:
                signed = adminauth.verify(token, header, request.method, request.path,
                                          request.body or b"", skew=config.admin_skew)
            except adminauth.SignatureError as e:
                return _unauthorized(adminauth.SCHEME, e.reason)
            try:
                fresh = await bus.claim_admin_nonce(signed.nonce,
                                                    adminauth.nonce_ttl(config.admin_skew))
            except BusErrors:
                # no way to tell a replay from a first call: refuse rather than risk it
                return _problem(503, "redis unavailable: cannot check the nonce")
            return None if fresh else _unauthorized(adminauth.SCHEME, "replayed")
        if not config.admin_bearer:
            return _unauthorized(adminauth.SCHEME, "signed request required")
        if not hmac.compare_digest(gate.bearer_bytes(header),
                                   token.encode("utf-8", "surrogateescape")):
            return _unauthorized("Bearer")
        return None

    def _unauthorized(scheme: str, reason: str | None = None) -> HTTPResponse:
        body = {"error": "unauthorized"} if reason is None else {
            "error": "unauthorized", "reason": reason}
        return json_response(body, status=401, headers={"WWW-Authenticate": scheme})

    def _body(request: Request) -> dict[str, Any] | None:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def _color_command(request: Request, cmd: str) -> HTTPResponse:
        denied = await _admin_check(request)
        if denied:
            return denied
        body = _body(request)
        color = body.get("color") if body else None
        if not isinstance(color, str) or not protocol.valid_color(color):
            return _problem(400, 'body must be {"color": "<color>"}')
        notified = 0
        try:
            notified = await bus.publish_control({"cmd": cmd, "color": color})
        except BusErrors:
            if color != config.color:
                return _problem(503, "redis unavailable: cannot reach other instances")
        if color == config.color:
            on_control({"cmd": cmd, "color": color})
        log.info("admin_" + cmd, extra={"event": "admin_" + cmd, "target": color,
                                         "notified": notified})
        return json_response({"ok": True, "cmd": cmd, "color": color, "notified": notified},
                             status=202)

    @app.post("/api/admin/drain")
    async def admin_drain(request: Request) -> HTTPResponse:
        return await _color_command(request, "drain")

    @app.post("/api/admin/undrain")
    async def admin_undrain(request: Request) -> HTTPResponse:
        return await _color_command(request, "undrain")

    @app.post("/api/admin/deploy-event")
    async def admin_deploy_event(request: Request) -> HTTPResponse:
        denied = await _admin_check(request)
        if denied:
            return denied
        body = _body(request)
        if body is None or not isinstance(body.get("action"), str) \
                or not 1 <= len(body["action"]) <= 32:
            return _problem(400, 'body must be a JSON object with "action"')
        weights = body.get("weights")
        if weights is not None and not (isinstance(weights, dict) and all(
                isinstance(k, str) and isinstance(v, int | float) for k, v in weights.items())):
            return _problem(400, "weights must map colors to numbers")
        event = {"ts": body.get("ts") if isinstance(body.get("ts"), int)
                 else int(time.time() * 1000),
                 "action": body["action"], "weights": weights, "ok": bool(body.get("ok", True)),
                 "gates": body.get("gates") if isinstance(body.get("gates"), dict) else {},
                 "message": str(body.get("message", ""))[:500],
                 "source": str(body.get("source", "traffic_shift"))[:64]}
        try:
            await bus.record_deploy_event(event)
        except BusErrors:
            return _problem(503, "redis unavailable")
        log.info("deploy_event", extra={"event": "deploy_event", "action": event["action"],
                                        "weights": weights, "ok": event["ok"]})
        return json_response({"ok": True, "event": event}, status=201)

    # --- WebSocket ---

    @app.websocket("/ws")
    async def ws_handler(request: Request, ws: LeanWebsocket) -> None:
        await serve_client(app, request, ws)

    # --- static site ---

    if config.static_dir:
        site = Path(config.static_dir).resolve()

        @app.get("/board")
        async def board_page(request: Request) -> HTTPResponse:
            return await file(site / "board.html", mime_type="text/html; charset=utf-8")

        app.static("/", str(site), index="index.html", name="site")

    return app


async def serve_client(app: Sanic, request: Request, ws: LeanWebsocket) -> None:
    """One WebSocket from handshake to close (see docs/protocol.md)."""
    ctx = app.ctx
    config: Config = ctx.config
    metrics: Metrics = ctx.metrics
    store: MessageStore = ctx.store
    bus: RoomBus = ctx.bus
    rooms: Rooms = ctx.rooms
    join: protocol.JoinQuery = request.ctx.join
    metrics.handshakes.inc()
    metrics.connections.inc()
    ctx.board.handshake()
    if config.socket_sndbuf > 0:
        # A fixed kernel buffer bounds each connection's memory and lets a client that
        # stops reading show up as a stuck send (-> 1013) instead of megabytes of buffer.
        sock = request.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.socket_sndbuf)
    client: Client | None = None
    record: asyncio.Future[str] | None = None  # the connection record's put, once started
    live = False
    drainer: Drainer = ctx.drainer
    drainer.joining += 1
    joining = True
    try:
        try:
            user_id = await store.next_user_id()
            latest = await store.latest_seq(join.room)
        except StoreUnavailable as e:
            log.warning("join_unavailable", extra={"event": "join_unavailable",
                                                   "error": str(e)})
            metrics.errors.inc(ErrorCode.UNAVAILABLE.value)
            await ws.send(protocol.error_frame(ErrorCode.UNAVAILABLE, "storage unavailable"))
            await ws.close(protocol.CLOSE_TRY_LATER, "storage unavailable")
            return
        client = Client(ws, user_id=user_id, name=join.name, room=join.room,
                        queue_size=config.send_queue, metrics=metrics,
                        slow_seconds=config.slow_seconds)
        room = rooms.join(client)
        client.start()
        client.offer(protocol.welcome_frame(
            user_id=user_id, name=join.name, room=join.room, color=config.color,
            version=config.version, server=config.instance_id, seq=latest))
        try:
            await room.ensure_initialised()
            history, last, more = await room.history(join.since)
        except StoreUnavailable:
            metrics.errors.inc(ErrorCode.UNAVAILABLE.value)
            client.offer(protocol.error_frame(ErrorCode.UNAVAILABLE, "storage unavailable"))
            await client.close(protocol.CLOSE_TRY_LATER, "storage unavailable")
            return
        client.offer(protocol.history_frame(history, more))
        n_history = len(history)
        # This frame lives as long as the connection: do not keep up to 1,000 messages in it.
        del history
        room.go_live(client, last)
        live = True
        drainer.joining -= 1
        joining = False
        drainer.admit(client)  # a drain that started while this join was in flight
        log.info("ws_open", extra={"event": "ws_open", "user_id": user_id, "room": join.room,
                                   "since": join.since, "history": n_history})
        _spawn(_announce(bus, client))  # Redis may be slow or down: never hold the join
        # Shielded: a client gone half-way cancels this handler, and a put cancelled while
        # in flight may still land; the cleanup waits for it and deletes what it wrote.
        record = asyncio.ensure_future(store.add_connection(
            user_id=user_id, room=join.room, instance=config.instance_id,
            color=config.color, version=config.version))
        with contextlib.suppress(StoreUnavailable):
            await asyncio.shield(record)
        await _read_loop(app, ws, client)
    except (ConnectionClosed, asyncio.CancelledError):
        pass
    finally:
        if joining:
            drainer.joining -= 1
        metrics.connections.inc(-1)
        ctx.cloudwatch.closed(ws, client.migrated if client is not None else False)
        if client is not None:
            rooms.leave(client)
            await client.stop()
            log.info("ws_close", extra={"event": "ws_close", "user_id": client.user_id,
                                        "room": client.room, "code": client.close_code,
                                        "migrated": client.migrated})
            _spawn(_cleanup(bus, store, client.room if live else None, record))


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _announce(bus: RoomBus, client: Client) -> None:
    await bus.presence_changed(client.room, +1)
    client.offer(protocol.presence_frame(await bus.presence(client.room)))


async def _cleanup(bus: RoomBus, store: MessageStore, room: str | None,
                   record: asyncio.Future[str] | None) -> None:
    if room is not None:
        await bus.presence_changed(room, -1)
    if record is None:
        return
    try:
        connection_id = await record
    except StoreUnavailable as e:
        log.warning("connection_record_failed", extra={"event": "connection_record_failed",
                                                       "error": str(e)})
        return
    with contextlib.suppress(StoreUnavailable):
        await store.remove_connection(connection_id)


STOP_CLEANUP_SECONDS = 3.0  # at shutdown, how long closed connections' cleanups may take
SENDS_WAITING_MAX = 32  # sends of one connection waiting for storage; more: `unavailable`
SENDS_DRAIN_SECONDS = 10.0  # after the peer left, how long its last sends may still take


class _Reader:
    """A connection's incoming frames, handled as they arrive (`LeanWebsocket.consume`).

    Everything here is synchronous except storing a send: sends are stored one after
    another by a task that exists only while sends wait, so frames keep being read while
    storage is slow (a reader stuck on DynamoDB would leave the client's later frames
    unread and its pongs behind them: close 1011). At most SENDS_WAITING_MAX sends wait;
    more are answered `unavailable`.
    """

    __slots__ = ("app", "bucket", "client", "config", "metrics", "sender", "sends", "strikes",
                 "struck")

    def __init__(self, app: Sanic, client: Client) -> None:
        self.app = app
        self.client = client
        self.config: Config = app.ctx.config
        self.metrics: Metrics = app.ctx.metrics
        self.bucket = TokenBucket(self.config.rate_per_s, self.config.rate_burst)
        self.strikes = Strikes(self.config.rate_strikes, self.config.rate_strike_window)
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
            if self.strikes.strike():
                self.struck = True
                log.info("ws_rate_strikes", extra={"event": "ws_rate_strikes",
                                                   "user_id": client.user_id})
                _spawn(client.close(protocol.CLOSE_POLICY, "rate limit exceeded repeatedly"))
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
            self.app.ctx.cloudwatch.send_error()
            self.error(ErrorCode.UNAVAILABLE,
                       "too many sends waiting for storage; retry with the same client_id")
            return
        self.sends.append(frame)
        if self.sender is None:
            self.sender = asyncio.create_task(self._store_sends(),
                                              name=f"sends-{client.user_id}")

    async def _store_sends(self) -> None:
        sends = self.sends
        try:
            while sends and not self.client.closed:
                await _handle_send(self.app, self.client, sends[0], self.error)
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


async def _read_loop(app: Sanic, ws: LeanWebsocket, client: Client) -> None:
    reader = _Reader(app, client)
    ws.consume(reader.on_message)
    try:
        await ws.wait_closed()
    finally:
        ws.stop_consuming()
        await reader.finish()


async def _handle_send(app: Sanic, client: Client, frame: protocol.SendFrame,
                       error: Any) -> None:
    ctx = app.ctx
    config: Config = ctx.config
    metrics: Metrics = ctx.metrics
    received = time.monotonic()
    if config.fault_rate and random.random() < config.fault_rate:
        metrics.sends.inc("error")
        ctx.board.failure()
        ctx.cloudwatch.send_error()
        error(ErrorCode.UNAVAILABLE, "injected fault (CHAT_FAULT_RATE); retry")
        return
    try:
        t0 = time.monotonic()
        result = await ctx.store.append(room=client.room, user_id=client.user_id,
                                        name=client.name, text=frame.text,
                                        client_id=frame.client_id, color=config.color)
        metrics.store_latency.observe(time.monotonic() - t0)
    except StoreUnavailable as e:
        log.warning("store_failed", extra={"event": "store_failed", "error": str(e)})
        metrics.sends.inc("error")
        ctx.board.failure()
        ctx.cloudwatch.send_error()
        error(ErrorCode.UNAVAILABLE, "storage unavailable; retry with the same client_id")
        return
    client.offer(protocol.ack_frame(frame.client_id, result.seq))
    latency = time.monotonic() - received
    metrics.sends.inc("ok")
    metrics.ack_latency.observe(latency)
    ctx.board.ack(latency)
    ctx.cloudwatch.ack(latency)
    if result.frame is None:
        return  # a retry of a stored message: never delivered twice
    encoded = protocol.encode(result.frame)
    room = ctx.rooms.rooms.get(client.room)
    if room is not None:
        room.offer(result.seq, encoded, result.ts)
    try:
        await ctx.bus.publish_message(client.room, encoded)
    except BusErrors as e:
        log.warning("publish_failed", extra={"event": "publish_failed", "error": str(e)})
