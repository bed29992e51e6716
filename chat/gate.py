"""What the server refuses before routing, and which requests the canary gate counts.

Pure functions over the request's parts; chat/routes.py calls them from its request and
response middleware. docs/security.md lists the threats they answer.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from sanic import Request
from sanic.exceptions import BadRequest

# Set by the load balancer on its color-pinned backends (/_color/<color>/...): such a
# request asked for one color by name, so it says nothing about how a weight step went.
PINNED_HEADER = "x-canary-pinned"

# The handlers (by name) of the public read APIs the page and the board call: the only
# HTTP requests the gate counts. Probes, static files, admin and metrics never enter it.
GATED_HANDLERS = frozenset({"room_messages", "api_stats"})

# C0 controls and DEL: never part of a file name or route we serve.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# What the websockets library accepts in a handshake header value (Sanic hands it the
# headers decoded as UTF-8); anything else makes Sanic answer the handshake with 500.
_WS_HEADER_VALUE = re.compile(r"[\x09\x20-\x7e\x80-\xff]*")


def bad_path(path: str) -> str | None:
    """Why a request path is refused with 400, or None when it may be routed.

    The path as sent, percent-decoded, must be UTF-8 without control characters: a NUL
    reaching the static file handler would otherwise end in `ValueError: embedded null
    byte` (a 500), and no route or file name of ours contains one.
    """
    raw = unquote_to_bytes(path)
    if _CONTROL.search(raw):
        return "path holds a control character"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "path is not UTF-8 once percent-decoded"
    return None


def bad_handshake_headers(headers: Any) -> str | None:
    """Why a /ws handshake is refused with 400 for its header values, or None."""
    for name, value in headers.items():
        if not _WS_HEADER_VALUE.fullmatch(value):
            return f"header {name} holds characters a WebSocket handshake cannot carry"
    return None


def host_allowed(allowed: tuple[str, ...], host: str | None) -> bool:
    """`Host` against CHAT_ALLOWED_HOSTS: empty allows any; an entry without a port
    allows that name on any port, `name:port` only that port. Case-insensitive."""
    if not allowed:
        return True
    if not host:
        return False
    host = host.strip().lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return host in allowed or name in allowed


def counts_in_gate(request: Request) -> bool:
    """True for a request the canary gate counts: a public read API, not pinned."""
    route = request.route
    if route is None or route.handler.__name__ not in GATED_HANDLERS:
        return False
    return request.headers.get(PINNED_HEADER) != "1"


def bearer_bytes(header: str) -> bytes:
    """The token of an `Authorization: Bearer <token>` header as bytes ("" without one).

    Sanic keeps header bytes that are not UTF-8 as surrogate escapes: they come back as
    the same bytes here (and compare unequal to any token) instead of raising.
    """
    given = header[7:] if header[:7].lower() == "bearer " else ""
    return given.encode("utf-8", "surrogateescape")


class LenientRequest(Request):
    """Sanic's Request, also for the stand-in request of an unparsable request line.

    When httptools rejects a request target (a raw NUL in it, say), Sanic answers 400
    through an empty stand-in request built from the same target, which fails the same
    way: the connection closed without an answer. The stand-in (method NONE) gets the
    path `/` instead, so the client gets its 400.
    """

    def __init__(self, url_bytes: bytes, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(url_bytes, *args, **kwargs)
        except BadRequest:
            if kwargs.get("method") != "NONE":
                raise
            super().__init__(b"/", *args, **kwargs)
