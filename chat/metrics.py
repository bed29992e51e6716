"""Prometheus text exposition, by hand. Names as listed in docs/architecture.md.

Every series carries the `color` and `version` labels of this instance.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from .protocol import ErrorCode

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}" if body else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_: str, label: str | None = None) -> None:
        self.name, self.help, self.label = name, help_, label
        self.values: dict[str, float] = {}

    def inc(self, label_value: str = "", by: float = 1.0) -> None:
        self.values[label_value] = self.values.get(label_value, 0.0) + by

    def total(self, label_value: str | None = None) -> float:
        if label_value is None:
            return sum(self.values.values())
        return self.values.get(label_value, 0.0)

    def render(self, base: list[tuple[str, str]]) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        items = sorted(self.values.items()) or ([] if self.label else [("", 0.0)])
        for lv, v in items:
            pairs = base + ([(self.label, lv)] if self.label else [])
            lines.append(f"{self.name}{_labels(pairs)} {_num(v)}")
        return lines


class Gauge:
    def __init__(self, name: str, help_: str) -> None:
        self.name, self.help = name, help_
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, by: float = 1.0) -> None:
        self.value += by

    def render(self, base: list[tuple[str, str]]) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge",
                f"{self.name}{_labels(base)} {_num(self.value)}"]


class Histogram:
    def __init__(self, name: str, help_: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help_, buckets
        self.counts = [0] * (len(buckets) + 1)  # last: +Inf only
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, base: list[tuple[str, str]]) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for le, c in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += c
            lines.append(f"{self.name}_bucket{_labels([*base, ('le', _num(le))])} {running}")
        lines.append(f"{self.name}_sum{_labels(base)} {_num(self.sum)}")
        lines.append(f"{self.name}_count{_labels(base)} {self.count}")
        return lines


class Metrics:
    """The instance's metrics; `render()` is the body of GET /metrics."""

    def __init__(self, color: str, version: str) -> None:
        self.base = [("color", color), ("version", version)]
        self.connections = Gauge("chat_connections", "Open WebSockets on this instance")
        self.handshakes = Counter("chat_handshakes_total", "WebSocket handshakes accepted")
        self.sends = Counter("chat_sends_total",
                             "Send frames answered with ack (ok) or unavailable (error)",
                             "outcome")
        self.messages_out = Counter("chat_messages_out_total",
                                    "Message frames queued to local clients")
        self.errors = Counter("chat_errors_total", "Error frames sent, by code", "code")
        self.http = Counter("chat_http_requests_total",
                            "Responses to valid public read API requests (the canary gate's "
                            "requests), by status class", "status")
        self.http_client_faults = Counter(
            "chat_http_client_faults_total",
            "Public read API requests answered 4xx (the client's fault; not in the gate)")
        self.ack_latency = Histogram("chat_ack_latency_seconds", "Send received to ack sent")
        self.store_latency = Histogram("chat_store_latency_seconds", "DynamoDB message write")
        self.delivery_latency = Histogram("chat_delivery_latency_seconds",
                                          "Message ts to queued to the local client")
        self.draining = Gauge("chat_draining", "1 while this instance drains")
        self.histories = Counter("chat_histories_total",
                                 "Joins' history frames, by where they were read from", "source")
        # Series the canary gate divides by exist from the start.
        self.sends.values.update(ok=0.0, error=0.0)
        self.http.values.update({"2xx": 0.0, "5xx": 0.0})
        self.errors.values.update({code.value: 0.0 for code in ErrorCode})
        self.histories.values.update(memory=0.0, store=0.0)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.connections, self.handshakes, self.sends, self.messages_out,
                       self.errors, self.http, self.http_client_faults, self.ack_latency,
                       self.store_latency, self.delivery_latency, self.draining,
                       self.histories):
            lines.extend(metric.render(self.base))
        return "\n".join(lines) + "\n"
