"""This instance's figures for the deploy board (GET /api/stats), over sliding windows."""

from __future__ import annotations

import time
from collections import deque
from typing import Any


def _trim(q: deque[Any], horizon: float, key: Any = None) -> None:
    while q and (q[0] if key is None else q[0][0]) < horizon:
        q.popleft()


class BoardStats:
    WINDOW = 60.0
    RATE_WINDOW = 10.0

    def __init__(self) -> None:
        self.handshakes: deque[float] = deque()
        self.acks: deque[tuple[float, float]] = deque()  # (t, latency seconds)
        self.failures: deque[float] = deque()  # send errors and HTTP 5xx
        self.requests: deque[float] = deque()  # HTTP responses

    def handshake(self) -> None:
        self.handshakes.append(time.monotonic())

    def ack(self, latency: float) -> None:
        self.acks.append((time.monotonic(), latency))

    def failure(self) -> None:
        self.failures.append(time.monotonic())

    def request(self) -> None:
        self.requests.append(time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        horizon = now - self.WINDOW
        for q in (self.handshakes, self.failures, self.requests):
            _trim(q, horizon)
        while self.acks and self.acks[0][0] < horizon:
            self.acks.popleft()
        recent = sum(1 for t, _ in self.acks if t >= now - self.RATE_WINDOW)
        lat = sorted(x for _, x in self.acks)
        total = len(self.acks) + len(self.failures) + len(self.requests)
        return {
            "new_connections_60s": len(self.handshakes),
            "messages_per_s": round(recent / self.RATE_WINDOW, 2),
            "errors_60s": len(self.failures),
            "events_60s": total,
            "error_rate": round(len(self.failures) / total, 4) if total else 0.0,
            "p95_ms": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 2) if lat else None,
        }


def aggregate(instances: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-color board figures from the instances' snapshots."""
    colors: dict[str, dict[str, Any]] = {}
    for snap in instances:
        c = colors.setdefault(snap["color"], {
            "connections": 0, "new_connections_60s": 0, "messages_per_s": 0.0,
            "error_rate": 0.0, "p95_ms": None, "instances": 0, "version": snap["version"],
            "draining": False, "_errors": 0, "_events": 0})
        c["connections"] += snap["connections"]
        c["new_connections_60s"] += snap["new_connections_60s"]
        c["messages_per_s"] = round(c["messages_per_s"] + snap["messages_per_s"], 2)
        c["instances"] += 1
        c["draining"] = c["draining"] or snap.get("draining", False)
        c["_errors"] += snap["errors_60s"]
        c["_events"] += snap["events_60s"]
        if snap["version"] not in c["version"].split(","):
            c["version"] += "," + snap["version"]
        if snap["p95_ms"] is not None:
            c["p95_ms"] = max(c["p95_ms"] or 0.0, snap["p95_ms"])
    for c in colors.values():
        errors, events = c.pop("_errors"), c.pop("_events")
        c["error_rate"] = round(errors / events, 4) if events else 0.0
    return colors
