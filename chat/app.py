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
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sanic import Request, Sanic
from sanic.response import HTTPResponse, file, text
from sanic.response import json as json_response

from . import adminauth, gate, protocol
from .bus import BusErrors, RoomBus
from .cloudwatch import Publisher
from .config import Config
from .connection import Connections
from .drain import Drainer
from .lbweights import HaproxyStatsSource, ListenerSource, WeightsPoller, WeightsSource
from .metrics import Metrics
from .rooms import Rooms
from .sends import SendPath
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


def _origin_allowed(config: Config, request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser; browsers always send Origin on WebSocket requests
    if "*" in config.allowed_origins or origin.rstrip("/") in config.allowed_origins:
        return True
    return urlsplit(origin).netloc.lower() == (request.headers.get("host") or "").lower()


def _problem(status: int, message: str, **extra: Any) -> HTTPResponse:
    return json_response({"error": message, **extra}, status=status)


def settle_gc(full_every: int) -> None:
    """At startup, once everything the process keeps for its life exists.

    The interpreter, Sanic, aiohttp, redis and botocore's models: a few hundred thousand
    objects that live as long as the process. Frozen (gc.freeze), they are out of the
    cyclic GC's way: every full collection (a pause of the event loop) walks only what
    came after, the connections' objects. Python runs a full collection after 10
    middle-generation ones once a quarter more objects than the last full one left have
    survived since (CPython's long_lived_pending / long_lived_total); with the startup
    objects frozen, the last full one left only connections' objects, so while connections
    come that quarter is soon reached: two or three full collections (30-50 ms each at
    1,000 connections) during a 1,000-client connect burst, in the joins'
    p99. `full_every` (CHAT_GC_FULL_EVERY) middle-generation collections between two full
    ones make them that much rarer; the connection's objects are freed by reference
    counting at its end (chat/ws/lean.py breaks Sanic's cycles), so what waits for a
    full collection is little (tests/integration/test_chat_memory.py).
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, full_every)


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
    # the send path (chat/sends.py) and the connections' life (chat/connection.py)
    sends = SendPath(config, store=store, rooms=rooms, bus=bus, metrics=metrics,
                     board=board, cloudwatch=cloudwatch)
    connections = Connections(config, store=store, bus=bus, rooms=rooms, drainer=drainer,
                              sends=sends, metrics=metrics, board=board,
                              cloudwatch=cloudwatch)
    app.ctx.sends = sends
    app.ctx.connections = connections
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
        settle_gc(config.gc_full_every)
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
        await connections.wait_cleanups()
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
        await connections.serve(request, ws, request.ctx.join)

    # --- static site ---

    if config.static_dir:
        site = Path(config.static_dir).resolve()

        @app.get("/board")
        async def board_page(request: Request) -> HTTPResponse:
            return await file(site / "board.html", mime_type="text/html; charset=utf-8")

        app.static("/", str(site), index="index.html", name="site")

    return app
