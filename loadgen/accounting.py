"""What a run counts: per-connection order, per-user receipts, loss over acknowledged seqs.

The definitions of lost, duplicated and out of order are in the package docstring
(loadgen/__init__.py).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class SeqSet:
    """A set of sequence numbers, compact for the dense runs a chat room produces.

    Numbers at or above ``base`` live in a bytearray (one byte each); the few below it
    (history before the user joined) in a plain set.
    """

    __slots__ = ("_bits", "_low", "base")

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self._bits = bytearray()
        self._low: set[int] = set()

    def add(self, seq: int) -> bool:
        """Add ``seq``; return True when it was not there yet."""
        if seq < self.base:
            if seq in self._low:
                return False
            self._low.add(seq)
            return True
        i = seq - self.base
        if i >= len(self._bits):
            self._bits.extend(bytes(i - len(self._bits) + 1024))
        if self._bits[i]:
            return False
        self._bits[i] = 1
        return True

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        if seq < self.base:
            return seq in self._low
        i = seq - self.base
        return i < len(self._bits) and self._bits[i] == 1


class LatencyHistogram:
    """Log-scale histogram (1 % buckets): constant memory for hour-long runs."""

    _STEP = math.log(1.01)

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0

    def add(self, ms: float) -> None:
        self.n += 1
        # bucket -1 holds 0 ms and below (clock skew); others are 1.01**i ms
        self.counts[-1 if ms <= 0.01 else round(math.log(ms) / self._STEP)] += 1

    def percentile(self, p: float) -> float | None:
        if self.n == 0:
            return None
        rank = max(1, math.ceil(self.n * p / 100.0))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return 0.0 if i == -1 else round(math.exp(i * self._STEP), 2)
        return None  # pragma: no cover - unreachable

    def summary(self) -> dict[str, float | None]:
        return {"p50": self.percentile(50), "p95": self.percentile(95),
                "p99": self.percentile(99)}


@dataclass
class ConnTrack:
    """What one WebSocket connection delivered, to judge the server's per-connection order."""

    since: int | None
    last_seq: int = -1
    seen: SeqSet = field(default_factory=SeqSet)
    base: int | None = None           # where the compact part of `seen` starts

    def __post_init__(self) -> None:
        self.seen = SeqSet(self.base if self.base is not None else (self.since or 0))


@dataclass
class UserTrack:
    """One simulated user's view of its room, across all of its connections."""

    room: str
    join_seq: int | None = None       # room seq in the first welcome
    last_seq: int = 0                 # highest seq received (the `since` to resume from)
    received: SeqSet = field(default_factory=SeqSet)
    delivered: int = 0                # first receipts of seqs > join_seq
    duplicated: int = 0
    out_of_order: int = 0
    overlap_dropped: int = 0
    anomalies: list[dict[str, Any]] = field(default_factory=list)  # first few, for debugging

    def on_welcome(self, frame: dict[str, Any]) -> None:
        if self.join_seq is None:
            self.join_seq = int(frame.get("seq") or 0)
            self.received = SeqSet(self.join_seq + 1)
            self.last_seq = max(self.last_seq, self.join_seq)

    def on_message(self, conn: ConnTrack, frame: dict[str, Any], now_ms: float,
                   latency: LatencyHistogram | None = None,
                   via: LatencyHistogram | None = None) -> bool:
        """Account one ``message`` (live or from ``history``); True if it is new to the user."""
        seq = int(frame["seq"])
        if seq <= conn.last_seq:
            kind = "duplicated" if seq in conn.seen else "out_of_order"
            if kind == "duplicated":
                self.duplicated += 1
            else:
                self.out_of_order += 1
            if len(self.anomalies) < 10:
                self.anomalies.append({"kind": kind, "seq": seq, "after": conn.last_seq,
                                       "since": conn.since, "color": frame.get("color"),
                                       "room": self.room})
        conn.last_seq = max(conn.last_seq, seq)
        conn.seen.add(seq)
        if not self.received.add(seq):
            self.overlap_dropped += 1
            return False
        self.last_seq = max(self.last_seq, seq)
        if self.join_seq is not None and seq > self.join_seq:
            self.delivered += 1
            if latency is not None and isinstance(frame.get("ts"), int | float):
                latency.add(now_ms - float(frame["ts"]))
                if via is not None:       # the same sample, by how it arrived
                    via.add(now_ms - float(frame["ts"]))
        return True

    def missing(self, acked: Iterable[int]) -> int:
        return len(self.missing_seqs(acked))

    def missing_seqs(self, acked: Iterable[int]) -> list[int]:
        base = self.join_seq if self.join_seq is not None else 0
        return [s for s in acked if s > base and s not in self.received]

    def expected(self, acked: Iterable[int]) -> int:
        base = self.join_seq if self.join_seq is not None else 0
        return sum(1 for s in acked if s > base)


def account(users: Iterable[UserTrack], acked: dict[str, set[int]]) -> dict[str, Any]:
    """Totals over the users held to delivery (see the module docstring).

    ``lost_seqs`` names, per room, up to 20 lost sequence numbers and how many users missed
    each: the first thing to look at when a run fails.
    """
    expected = delivered = duplicated = out_of_order = overlap = 0
    lost = 0
    missed: dict[str, Counter[int]] = {}
    anomalies: list[dict[str, Any]] = []
    for u in users:
        anomalies.extend(u.anomalies[:20 - len(anomalies)])
        room_acked = acked.get(u.room, set())
        exp = u.expected(room_acked)
        seqs = u.missing_seqs(room_acked)
        miss = len(seqs)
        if seqs:
            missed.setdefault(u.room, Counter()).update(seqs)
        expected += exp
        lost += miss
        delivered += exp - miss
        duplicated += u.duplicated
        out_of_order += u.out_of_order
        overlap += u.overlap_dropped
    return {"expected_deliveries": expected, "delivered": delivered, "lost": lost,
            "duplicated": duplicated, "out_of_order": out_of_order,
            "overlap_dropped": overlap,
            "order_anomalies": anomalies,
            "lost_seqs": {room: {str(k): v for k, v in sorted(c.items())[:20]}
                          for room, c in missed.items()}}


def exit_code(report: dict[str, Any]) -> int:
    """Non-zero when anything was lost, duplicated or out of order, or nobody connected."""
    if report.get("lost", 0) or report.get("duplicated", 0) or report.get("out_of_order", 0):
        return 1
    if not report.get("connected", 0):
        return 2
    return 0
