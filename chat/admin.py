"""The admin API the deploy tooling calls: drain, undrain, deploy events.

Every call is signed (`Canary-HMAC-SHA256`, chat/adminauth.py, single use: the nonce is
claimed in Redis), or carries `Bearer <token>` unless CHAT_ADMIN_BEARER=0; with no token
configured the API answers 404. docs/protocol.md has the scheme, docs/security.md the
threats it answers.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from . import adminauth, gate, protocol
from .bus import BusErrors, RoomBus
from .config import Config
from .routes import problem

log = logging.getLogger("chat")


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


def register_admin(app: Sanic, config: Config, bus: RoomBus,
                   on_control: Callable[[dict[str, Any]], None]) -> None:
    """`/api/admin/drain`, `/undrain` (for every instance of a color: Redis carries the
    command, and `on_control` runs it here) and `/deploy-event` (the board's history)."""

    async def _admin_check(request: Request) -> HTTPResponse | None:
        """None when the call may proceed, else the answer (404, 401 or 503).

        Signed calls (chat/adminauth.py) everywhere; `Bearer <token>` too unless
        CHAT_ADMIN_BEARER=0. Header bytes that are not UTF-8 reach us as surrogates
        (surrogateescape): they are compared as the bytes they were, never a 500.
        """
        token = config.admin_token
        if not token:
            return problem(404, "admin API disabled (CHAT_ADMIN_TOKEN unset)")
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
                return problem(503, "redis unavailable: cannot check the nonce")
            return None if fresh else _unauthorized(adminauth.SCHEME, "replayed")
        if not config.admin_bearer:
            return _unauthorized(adminauth.SCHEME, "signed request required")
        if not hmac.compare_digest(gate.bearer_bytes(header),
                                   token.encode("utf-8", "surrogateescape")):
            return _unauthorized("Bearer")
        return None

    async def _color_command(request: Request, cmd: str) -> HTTPResponse:
        denied = await _admin_check(request)
        if denied:
            return denied
        body = _body(request)
        color = body.get("color") if body else None
        if not isinstance(color, str) or not protocol.valid_color(color):
            return problem(400, 'body must be {"color": "<color>"}')
        notified = 0
        try:
            notified = await bus.publish_control({"cmd": cmd, "color": color})
        except BusErrors:
            if color != config.color:
                return problem(503, "redis unavailable: cannot reach other instances")
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
            return problem(400, 'body must be a JSON object with "action"')
        weights = body.get("weights")
        if weights is not None and not (isinstance(weights, dict) and all(
                isinstance(k, str) and isinstance(v, int | float) for k, v in weights.items())):
            return problem(400, "weights must map colors to numbers")
        event = {"ts": body.get("ts") if isinstance(body.get("ts"), int)
                 else int(time.time() * 1000),
                 "action": body["action"], "weights": weights, "ok": bool(body.get("ok", True)),
                 "gates": body.get("gates") if isinstance(body.get("gates"), dict) else {},
                 "message": str(body.get("message", ""))[:500],
                 "source": str(body.get("source", "traffic_shift"))[:64]}
        try:
            await bus.record_deploy_event(event)
        except BusErrors:
            return problem(503, "redis unavailable")
        log.info("deploy_event", extra={"event": "deploy_event", "action": event["action"],
                                        "weights": weights, "ok": event["ok"]})
        return json_response({"ok": True, "event": event}, status=201)
