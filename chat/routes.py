"""The HTTP surface besides `/ws` and the admin API: the request gate, the security
headers, the probes, the read APIs and the static site
(docs/architecture.md, "The chat's HTTP surface besides `/ws`").

`create_app` (chat/app.py) builds the parts these routes read and calls the `register_*`
functions below once; each route is a closure over those parts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sanic import Request, Sanic
from sanic.response import HTTPResponse, file, text
from sanic.response import json as json_response

from . import gate, protocol
from .bus import BusErrors, RoomBus
from .config import Config
from .drain import Drainer
from .lbweights import WeightsPoller
from .metrics import Metrics
from .stats import BoardStats, aggregate
from .store import MessageStore, StoreUnavailable

log = logging.getLogger("chat")

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


def origin_allowed(config: Config, request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser; browsers always send Origin on WebSocket requests
    if "*" in config.allowed_origins or origin.rstrip("/") in config.allowed_origins:
        return True
    return urlsplit(origin).netloc.lower() == (request.headers.get("host") or "").lower()


def problem(status: int, message: str, **extra: Any) -> HTTPResponse:
    """A JSON error answer: `{"error": message, **extra}`."""
    return json_response({"error": message, **extra}, status=status)


def register_middleware(app: Sanic, config: Config, drainer: Drainer, metrics: Metrics,
                        board: BoardStats) -> None:
    """The request gate before routing, the security headers and the gate's counts after."""

    @app.on_request
    async def _gate(request: Request) -> HTTPResponse | None:
        request.ctx.join = None
        refused = gate.bad_path(request.path)
        if refused:
            return problem(400, refused)
        if request.path not in PROBES and not gate.host_allowed(config.allowed_hosts,
                                                               request.headers.get("host")):
            return problem(421, "host not served here (CHAT_ALLOWED_HOSTS)")
        if request.path == "/ws":
            refused = gate.bad_handshake_headers(request.headers)
            if refused:
                return problem(400, refused)
            try:
                request.ctx.join = protocol.parse_join_query(
                    {k: request.args.getlist(k) for k in request.args})
            except ValueError as e:
                return problem(400, str(e))
            if not origin_allowed(config, request):
                return problem(403, "origin not allowed")
            if drainer.draining:
                return problem(503, "draining", reason="draining")
            return None
        if (config.fault_rate and gate.counts_in_gate(request)
                and random.random() < config.fault_rate):
            return problem(500, "injected fault (CHAT_FAULT_RATE)")
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


def register_http(app: Sanic, config: Config, drainer: Drainer, bus: RoomBus,
                  store: MessageStore, metrics: Metrics, lb_weights: WeightsPoller) -> None:
    """The probes (`/healthz`, `/readyz`, `/version`, `/metrics`) and the read APIs."""

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
            return problem(400, "room must be 1-32 letters, digits, spaces or _-.")
        try:
            since = protocol.parse_since(request.args.get("since"))
            limit = protocol.parse_limit(request.args.get("limit"))
        except ValueError as e:
            return problem(400, str(e))
        try:
            messages = await store.messages_page(room, since=since, limit=limit)
        except StoreUnavailable:
            return problem(503, "storage unavailable")
        return json_response({"room": room, "messages": messages},
                             headers={"Cache-Control": "no-store"})

    @app.get("/api/stats")
    async def api_stats(request: Request) -> HTTPResponse:
        try:
            instances = await bus.read_stats()
            weights, events = await bus.deploy_state()
        except BusErrors:
            return problem(503, "redis unavailable")
        # the load balancer's own weights once read; before that (or with no source
        # configured) those of the last canary event
        weights = lb_weights.value or weights
        return json_response({"ts": int(time.time() * 1000), "colors": aggregate(instances),
                              "weights": weights, "events": events},
                             headers={"Cache-Control": "no-store"})


def register_site(app: Sanic, static_dir: str) -> None:
    """The web client at `/` and the deploy board at `/board`, from `static_dir`."""
    site = Path(static_dir).resolve()

    @app.get("/board")
    async def board_page(request: Request) -> HTTPResponse:
        return await file(site / "board.html", mime_type="text/html; charset=utf-8")

    app.static("/", str(site), index="index.html", name="site")
