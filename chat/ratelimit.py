"""Per-connection limits on incoming frames: a token bucket and a strike counter.

`chat.connection` gives every connection one of each (CHAT_RATE_*): a frame over the
bucket is answered `rate_limited`; too many of those within the window close it (1008).
"""

from __future__ import annotations

import time
from collections import deque


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
