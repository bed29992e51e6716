"""Per-color health metrics for CloudWatch: `PutMetricData` every CHAT_CLOUDWATCH_INTERVAL.

The contract (docs/aws-metrics.md): namespace `CanaryChat` (CHAT_CLOUDWATCH_NAMESPACE), one
series per color with exactly the dimension `Color`, so every task of a color adds into the
same series; `StorageResolution` 1 on every datum.

| metric             | unit         | what                                                    |
|--------------------|--------------|---------------------------------------------------------|
| `Sends`            | Count        | send frames taken for storing: answered ack or error    |
| `SendErrors`       | Count        | of those, answered `unavailable` (the server's fault)   |
| `AckLatency`       | Milliseconds | send received to ack queued, as Values/Counts           |
| `Connections`      | Count        | live WebSockets of this task when the batch is built    |
| `UnexpectedCloses` | Count        | connections that ended without a clean close (below)    |

The hot path only adds to integers and to a dict of latency buckets (`Tally`); a background
task (`Publisher`) swaps the tally for a fresh one every interval and sends it in as few
requests as the API's limits allow. A put that fails is logged and dropped: the tally it
carried is gone, so memory never grows with an unreachable CloudWatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .aio import cancel_task

log = logging.getLogger("chat.cloudwatch")

NAMESPACE = "CanaryChat"
DIMENSION = "Color"

# PutMetricData limits (API reference, PutMetricData and MetricDatum): at most 150 values in
# one datum's Values/Counts; at most 1000 different metrics and 1 MB per request (HTTP
# POST); values within +-2^360, never NaN or infinite; timestamps up to two weeks old.
MAX_VALUES_PER_DATUM = 150
MAX_DATUMS_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 1_000_000
# Our own, far below the 1 MB: a request this size or smaller is sent as one.
REQUEST_BUDGET_BYTES = 256 * 1024

# Latency samples are kept at two significant digits (1.0-9.9 ms in 0.1 ms steps, 10-99 ms
# in 1 ms steps, ...): at most 5% off, about 90 buckets a decade, and the clamp below
# bounds the number of buckets (and of Values a batch can carry) whatever the load.
LATENCY_MIN_MS = 0.01
LATENCY_MAX_MS = 3_600_000.0  # an hour: a send never waits that long

# Batches go this long after each beat of the wall clock, so that a timer waking a little
# early still sends after the boundary and not a sliver of a batch just before it.
BEAT_OFFSET = 0.05

# One put: 2 s to connect, 5 s to answer, one attempt; the whole flush at most PUT_SECONDS.
PUT_SECONDS = 8.0


def bucket_ms(ms: float) -> float:
    """The latency bucket a sample of `ms` milliseconds is counted in (2 significant digits)."""
    if not ms > LATENCY_MIN_MS:  # also NaN
        return LATENCY_MIN_MS
    if ms >= LATENCY_MAX_MS:
        return LATENCY_MAX_MS
    return float(f"{ms:.2g}")


# What ends a connection "unexpectedly" (docs/aws-metrics.md): the peer vanished without a
# close frame from either side (1006 to both), or the server gave up on it with a
# server-side failure (1011: keepalive timeout or internal error; 1013: too slow to keep up,
# or storage down at join). Not: a close the client started (1000, 1001, ...), a drain's
# 1012 or any close of a client already told to migrate, nor the server refusing the
# client's own bad input (1007, 1008, 1009).
SERVER_FAILURE_CODES = frozenset({1011, 1013})


def unexpected_close(*, sent: int | None, received: int | None,
                     received_first: bool | None, migrated: bool) -> bool:
    """Whether a finished connection counts in `UnexpectedCloses`.

    `sent` / `received`: the codes of the close frames the server sent / received (None: no
    such frame); `received_first`: the client's close frame came before ours.
    """
    if migrated:
        return False
    if sent is None and received is None:
        return True  # no close handshake at all: 1006 on both sides
    if received is not None and (sent is None or received_first):
        return False  # the client closed
    return sent in SERVER_FAILURE_CODES


def close_codes(ws: Any) -> tuple[int | None, int | None, bool | None]:
    """(sent, received, received_first) from a Sanic WebSocket's websockets protocol."""
    proto = getattr(ws, "ws_proto", None)
    sent = getattr(getattr(proto, "close_sent", None), "code", None)
    received = getattr(getattr(proto, "close_rcvd", None), "code", None)
    first = getattr(proto, "close_rcvd_then_sent", None)
    return sent, received, first


@dataclass
class Tally:
    """One interval's figures; the hot path's only write target. `started`: wall-clock
    epoch seconds of the interval's first instant, the Timestamp its batch carries."""

    started: float = field(default_factory=time.time)
    sends: int = 0
    send_errors: int = 0
    unexpected_closes: int = 0
    latency: dict[float, int] = field(default_factory=dict)  # bucket ms -> samples

    def ack(self, seconds: float) -> None:
        self.sends += 1
        key = bucket_ms(seconds * 1000.0)
        self.latency[key] = self.latency.get(key, 0) + 1

    def error(self) -> None:
        self.sends += 1
        self.send_errors += 1


def metric_data(tally: Tally, *, color: str, connections: float,
                at: datetime) -> list[dict[str, Any]]:
    """The MetricData of one interval: four single values and AckLatency as Values/Counts
    in datums of at most MAX_VALUES_PER_DATUM values (same name, dimensions and timestamp:
    CloudWatch adds them up). No AckLatency datum when nothing was acked."""
    dims = [{"Name": DIMENSION, "Value": color}]

    def datum(name: str, unit: str, **value: Any) -> dict[str, Any]:
        return {"MetricName": name, "Dimensions": dims, "Timestamp": at, "Unit": unit,
                "StorageResolution": 1, **value}

    data = [datum("Sends", "Count", Value=float(tally.sends)),
            datum("SendErrors", "Count", Value=float(tally.send_errors)),
            datum("Connections", "Count", Value=float(max(0.0, connections))),
            datum("UnexpectedCloses", "Count", Value=float(tally.unexpected_closes))]
    items = sorted(tally.latency.items())
    for i in range(0, len(items), MAX_VALUES_PER_DATUM):
        chunk = items[i:i + MAX_VALUES_PER_DATUM]
        data.append(datum("AckLatency", "Milliseconds", Values=[v for v, _ in chunk],
                          Counts=[float(c) for _, c in chunk]))
    return data


def next_boundary(wall: float, interval: float) -> float:
    """Seconds from `wall` (epoch seconds) to the next multiple of `interval` since the
    epoch: the publisher's beat, so that with an interval dividing the gate's period (10 s)
    each batch covers one CloudWatch period and not a piece of two."""
    return interval - (wall % interval)


def datum_bytes(datum: dict[str, Any]) -> int:
    """A generous estimate of a datum's share of a request body (query protocol: every field
    a `MetricData.member.N.Field.member.M=value&` pair, about 60 bytes a value)."""
    values = len(datum.get("Values", ())) * 2 or 1
    return 400 + 60 * values


def batches(data: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split into requests within MAX_DATUMS_PER_REQUEST datums and REQUEST_BUDGET_BYTES."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for datum in data:
        n = datum_bytes(datum)
        if current and (len(current) >= MAX_DATUMS_PER_REQUEST
                        or size + n > REQUEST_BUDGET_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(datum)
        size += n
    if current:
        out.append(current)
    return out


class Publisher:
    """Owns the tally; `start()` / `stop()` run the background PutMetricData loop."""

    def __init__(self, *, color: str, namespace: str, interval: float, region: str,
                 enabled: bool, connections: Callable[[], float]) -> None:
        self.color, self.namespace, self.interval = color, namespace, interval
        self.region, self.enabled = region, enabled
        self.connections = connections
        self.tally = Tally()
        self.task: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self.puts_ok = 0
        self.puts_failed = 0

    # --- hot path: no I/O, no awaits ---

    def ack(self, seconds: float) -> None:
        self.tally.ack(seconds)

    def send_error(self) -> None:
        self.tally.error()

    def closed(self, ws: Any, migrated: bool) -> None:
        sent, received, first = close_codes(ws)
        if unexpected_close(sent=sent, received=received, received_first=first,
                            migrated=migrated):
            self.tally.unexpected_closes += 1

    # --- lifecycle ---

    async def start(self) -> None:
        if not self.enabled:
            return
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session
        # Endpoint: botocore's own resolution (AWS_ENDPOINT_URL_CLOUDWATCH, AWS_ENDPOINT_URL,
        # else the regional endpoint); one attempt per put.
        config = AioConfig(connect_timeout=2, read_timeout=5,
                           retries={"max_attempts": 1, "mode": "standard"})
        self._client = await self._stack.enter_async_context(get_session().create_client(
            "cloudwatch", region_name=self.region, config=config))
        self.tally = Tally()  # what came before start is not in any interval
        self.task = asyncio.create_task(self._run(), name="cloudwatch")
        log.info("cloudwatch_start", extra={
            "event": "cloudwatch_start", "namespace": self.namespace,
            "interval_s": self.interval, "endpoint": self._client.meta.endpoint_url})

    async def stop(self, final_timeout: float = 2.0) -> None:
        """Stop the loop and publish the last partial interval (bounded)."""
        if self.task is None:
            return
        await cancel_task(self.task)
        self.task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), final_timeout)
        await self._stack.aclose()
        self._client = None

    async def _run(self) -> None:
        # Batches on the wall clock's beat (next_boundary). A put slower than the interval
        # delays the next batch (which then carries everything since this one: nothing is
        # lost, one datapoint is larger); a put that fails or outlasts PUT_SECONDS drops its
        # own batch only.
        while True:
            await asyncio.sleep(next_boundary(time.time(), self.interval) + BEAT_OFFSET)
            try:
                await asyncio.wait_for(self.flush(), PUT_SECONDS)
            except TimeoutError:
                self.puts_failed += 1
                log.warning("cloudwatch_put_failed", extra={
                    "event": "cloudwatch_put_failed", "error": "timeout"})

    async def flush(self) -> None:
        """Send the current tally (and start a new one); a failure drops it.

        The batch is stamped with the tally's start, never the time it is sent: CloudWatch
        files a datum in the period holding its Timestamp, and the gate counts only periods
        that start at or after the weights moved, so a tally that began before the move
        (say the last seconds of the previous step's traffic, sent just after the move)
        must land in a period the gate drops (docs/aws-metrics.md)."""
        tally, self.tally = self.tally, Tally()
        data = metric_data(tally, color=self.color, connections=self.connections(),
                           at=datetime.fromtimestamp(tally.started, UTC))
        t0 = time.monotonic()
        for batch in batches(data):
            try:
                await self._client.put_metric_data(Namespace=self.namespace, MetricData=batch)
                self.puts_ok += 1
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure: log it, drop the batch, carry on
                self.puts_failed += 1
                log.warning("cloudwatch_put_failed", extra={
                    "event": "cloudwatch_put_failed", "error": str(e)[:300],
                    "dropped_sends": tally.sends})
        log.debug("cloudwatch_put", extra={"event": "cloudwatch_put", "sends": tally.sends,
                                           "seconds": round(time.monotonic() - t0, 3)})
