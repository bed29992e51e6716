"""Signed admin requests: the `Canary-HMAC-SHA256` Authorization scheme.

A bearer token is a replayable credential: whoever sees one request (for instance on the
plain-HTTP hop from CloudFront to the ALB) can send it again, and any other admin call too.
A signed request carries no reusable secret instead:

    Authorization: Canary-HMAC-SHA256 t=<unix seconds>,n=<nonce>,s=<signature>

    signature = hex HMAC-SHA256(key = admin token (UTF-8),
                                METHOD "\\n" PATH "\\n" t "\\n" n "\\n" hex SHA-256(body))

METHOD is upper case, PATH the request path exactly as sent (no query string), body the raw
request bytes. The server accepts a signature only while `t` is within CHAT_ADMIN_SKEW_SECONDS
(default 60) of its clock, and each nonce only once: the nonce is claimed in Redis with
`SET NX EX` for twice that window, so every instance refuses a replay (chat/bus.py,
`RoomBus.claim_admin_nonce`). The signer on the Ansible side is the filter
`canarychat.platform.admin_signature` (plugins/filter/admin_signature.py), which builds the
same string; the scheme is documented in docs/protocol.md.

Everything here is pure (no I/O): parsing, signing and the checks that need no Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass

SCHEME = "Canary-HMAC-SHA256"

# t: unix seconds (at most 12 digits); n: 16-64 URL-safe characters; s: 64 lower-case hex;
# one optional space after each comma.
# Only ASCII is accepted: a header with any other byte does not match (Sanic hands header
# bytes that are not UTF-8 over as surrogates, which no pattern here matches either).
_PARAMS = re.compile(
    r"t=(?P<t>[0-9]{1,12}), ?n=(?P<n>[A-Za-z0-9_-]{16,64}), ?s=(?P<s>[0-9a-f]{64})", re.ASCII)


class SignatureError(Exception):
    """The request is not a valid signed admin call; `reason` is safe to show the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Signed:
    timestamp: int
    nonce: str
    signature: str


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def string_to_sign(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    return "\n".join((method.upper(), path, str(timestamp), nonce,
                      body_digest(body))).encode("utf-8")


def signature(token: str, method: str, path: str, timestamp: int, nonce: str,
              body: bytes) -> str:
    return hmac.new(token.encode("utf-8"), string_to_sign(method, path, timestamp, nonce, body),
                    hashlib.sha256).hexdigest()


def authorization(token: str, method: str, path: str, body: bytes,
                  timestamp: int | None = None, nonce: str | None = None) -> str:
    """The Authorization header value for one request (now, with a fresh nonce by default)."""
    t = int(time.time()) if timestamp is None else timestamp
    n = secrets.token_hex(16) if nonce is None else nonce
    return f"{SCHEME} t={t},n={n},s={signature(token, method, path, t, n, body)}"


def is_signed(header: str) -> bool:
    """Whether the header uses this scheme (case-insensitive, as HTTP schemes are)."""
    scheme = header.split(" ", 1)[0]
    return scheme.lower() == SCHEME.lower()


def parse(header: str) -> Signed:
    """The parameters of a `Canary-HMAC-SHA256 t=..,n=..,s=..` header, in that order."""
    parts = header.split(" ", 1)
    if len(parts) != 2 or parts[0].lower() != SCHEME.lower():
        raise SignatureError("malformed")
    m = _PARAMS.fullmatch(parts[1].strip())
    if m is None:
        raise SignatureError("malformed")
    return Signed(int(m["t"]), m["n"], m["s"])


def verify(token: str, header: str, method: str, path: str, body: bytes, *,
           skew: float, now: float | None = None) -> Signed:
    """Check format, freshness and signature (constant-time); the nonce is the caller's.

    Raises SignatureError("malformed" | "stale timestamp" | "bad signature").
    """
    signed = parse(header)
    now = time.time() if now is None else now
    if abs(now - signed.timestamp) > skew:
        raise SignatureError("stale timestamp")
    want = signature(token, method, path, signed.timestamp, signed.nonce, body)
    if not hmac.compare_digest(want.encode("ascii"), signed.signature.encode("ascii")):
        raise SignatureError("bad signature")
    return signed


def nonce_ttl(skew: float) -> int:
    """Seconds a used nonce must be remembered: a timestamp stays acceptable for 2 x skew."""
    return max(1, math.ceil(2 * skew))
