"""The server factory: `create_app(config)` builds the Sanic app and every part it runs.

It wires the owners of chat/ together (docs/architecture.md, "The chat service"), registers
the HTTP surface (chat/routes.py), the admin API (chat/admin.py) and `/ws`
(chat/connection.py), and owns the lifecycle: Redis and DynamoDB clients start in
before_server_start; a SIGTERM drains (migrate, then 1012) in before_server_stop, before
Sanic's own shutdown would close every WebSocket with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
from typing import Any

from sanic import Request, Sanic

from . import gate, protocol
from .admin import register_admin
from .bus import BusErrors, RoomBus
from .cloudwatch import Publisher
from .config import Config
from .connection import Connections
from .drain import Drainer
from .lbweights import HaproxyStatsSource, ListenerSource, WeightsPoller, WeightsSource
from .metrics import Metrics
from .rooms import Rooms
from .routes import register_http, register_middleware, register_site
from .sends import SendPath
from .stats import BoardStats
from .store import MessageStore
from .targetwatch import TargetWatcher
from .ws import LeanWebsocket, Pinger
from .ws import install as install_lean_websockets

log = logging.getLogger("chat")
_app_ids = itertools.count(1)


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

    register_middleware(app, config, drainer, metrics, board)
    register_http(app, config, drainer, bus, store, metrics, lb_weights)
    register_admin(app, config, bus, on_control)

    @app.websocket("/ws")
    async def ws_handler(request: Request, ws: LeanWebsocket) -> None:
        await connections.serve(request, ws, request.ctx.join)

    if config.static_dir:
        register_site(app, config.static_dir)

    return app
