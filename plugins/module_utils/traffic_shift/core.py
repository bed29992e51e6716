# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see galaxy.yml)
"""The gating core of traffic_shift: pure functions, no I/O.

Everything here takes plain values (texts already fetched, API responses already
received) and returns plain values, so that unit tests call it directly and both drivers
(haproxy, elbv2) share one definition of a weight, a gate reading and a breach. What
only one driver reads (HAProxy's `show stat` rows, an ALB listener's actions and its
CloudWatch dimensions) lives in that driver's module.
"""

from __future__ import annotations

import math
import re
from typing import Any

COLORS = ("blue", "green")

# Gate names, as they appear in readings and in failure messages.
GATE_HEALTHY = "healthy"
GATE_ERROR_RATE = "error_rate"
GATE_P95 = "p95_ms"
GATE_ALARM = "alarm"
# Sends the color gaining traffic reported during the bake (at least `min_sends`: no data
# is not a pass).
GATE_SENDS = "sends"
# 5xx answered by the ALB for the watched target group (HTTPCode_Target_5XX_Count) and by
# the load balancer itself (HTTPCode_ELB_5XX_Count), a count.
GATE_ALB_5XX = "alb_5xx"


# --------------------------------------------------------------------------- weights

# The allowed range of green's weight (a percentage), lowest and highest. The module checks
# it here; the deploy role's input check reads the same pair through the
# canarychat.platform.traffic_shift_range filter.
WEIGHT_RANGE = (0, 100)


def weights_for(green_percent):
    """Green gets `green_percent` (WEIGHT_RANGE, a percentage), blue the rest."""
    low, high = WEIGHT_RANGE
    green = int(green_percent)
    if green < low or green > high:
        raise ValueError("weight must be between %d and %d, got %r" % (low, high, green_percent))
    return {"blue": high - green, "green": green}


def gaining_color(before, after):
    """The color whose weight grows in this step (None when no weight grows)."""
    for color in COLORS:
        if after.get(color, 0) > before.get(color, 0):
            return color
    return None


def watched_color(after):
    """Green (the new release) while it gets traffic, blue when green gets none."""
    return "green" if after.get("green", 0) > 0 else "blue"


def bake_color(before, after):
    """The color the bake gates watch: the one gaining traffic in this step (green in the
    canary's progression), else the watched color of the new weights."""
    return gaining_color(before, after) or watched_color(after)


def breach_weights(before, on_breach):
    """The weights a breach puts in place: everyone on blue (`blue`, the design's rollback)
    or the weights before the step (`previous`)."""
    if on_breach == "blue":
        return {"blue": 100, "green": 0}
    if on_breach == "previous":
        return dict(before)
    raise ValueError("on_breach must be blue or previous, got %r" % (on_breach,))


def weights_match(actual, wanted):
    return all(actual.get(c) == wanted.get(c) for c in COLORS)


# --------------------------------------------------------------------------- readings

class Thresholds(object):
    """The gate thresholds of one step."""

    def __init__(self, min_healthy=1, max_error_rate=0.05, max_p95_ms=500.0, min_sends=0,
                 max_alb_5xx=0):
        self.min_healthy = int(min_healthy)
        self.max_error_rate = float(max_error_rate)
        self.max_p95_ms = float(max_p95_ms)
        self.min_sends = int(min_sends)
        self.max_alb_5xx = int(max_alb_5xx)

    def threshold_for(self, gate):
        return {
            GATE_HEALTHY: self.min_healthy,
            GATE_ERROR_RATE: self.max_error_rate,
            GATE_P95: self.max_p95_ms,
            GATE_ALARM: "not ALARM",
            GATE_SENDS: self.min_sends,
            GATE_ALB_5XX: self.max_alb_5xx,
        }[gate]


def judge(gate, value, thresholds):
    """True (pass), False (breach) or None (no reading: no data to judge).

    The sends gate is the exception: no count of sends is a breach ("insufficient
    data"), never "no data"."""
    if gate == GATE_SENDS:
        return value is not None and value >= thresholds.min_sends
    if value is None:
        return None
    if gate == GATE_ALB_5XX:
        return value <= thresholds.max_alb_5xx
    if gate == GATE_HEALTHY:
        return value >= thresholds.min_healthy
    if gate == GATE_ERROR_RATE:
        return value <= thresholds.max_error_rate
    if gate == GATE_P95:
        return value <= thresholds.max_p95_ms
    if gate == GATE_ALARM:
        return value != "ALARM"
    raise ValueError("unknown gate %r" % (gate,))


def make_reading(gate, source, color, value, thresholds, ts, detail=None, name=None):
    """One gate reading: what was measured, against what, and the verdict.

    `ok` is True (pass), False (breach) or None ("no data": neither a pass nor a breach).
    """
    if isinstance(value, float):
        value = round(value, 6)
    reading = {
        "ts": round(float(ts), 3),
        "gate": gate,
        "source": source,
        "color": color,
        "value": value,
        "threshold": thresholds.threshold_for(gate),
        "ok": judge(gate, value, thresholds),
    }
    if name is not None:
        reading["name"] = name
    if detail:
        reading["detail"] = detail
    return reading


def first_breach(readings):
    """The first reading that breaches its gate, or None."""
    for reading in readings:
        if reading["ok"] is False:
            return reading
    return None


def _fmt(value):
    if isinstance(value, float):
        return "%g" % value
    return str(value)


def breach_message(reading):
    """The failure message for a breached gate: names the gate, threshold and value."""
    gate = reading["gate"]
    what = gate
    if gate == GATE_ALARM:
        what = "alarm %s" % reading.get("name", "?")
        return ("gate %s breached on %s (source %s): state %s, threshold %s"
                % (what, reading["color"], reading["source"], reading["value"],
                   reading["threshold"]))
    if gate == GATE_SENDS:
        return ("gate sends breached on %s (source %s): insufficient data: measured %s < "
                "threshold %s sends during the bake"
                % (reading["color"], reading["source"], _fmt(reading["value"]),
                   _fmt(reading["threshold"])))
    op = "<" if gate == GATE_HEALTHY else ">"
    return ("gate %s breached on %s (source %s): measured %s %s threshold %s"
            % (what, reading["color"], reading["source"], _fmt(reading["value"]), op,
               _fmt(reading["threshold"])))


# --------------------------------------------------------------------------- Prometheus

_SAMPLE_RE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?\s*$')
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(value):
    return value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def parse_prometheus(text):
    """Parse Prometheus text exposition into a list of (name, labels dict, value)."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        labels = {}
        raw = m.group("labels")
        if raw:
            pos = 0
            while pos < len(raw):
                lm = _LABEL_RE.match(raw, pos)
                if not lm:
                    break
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        samples.append((m.group("name"), labels, value))
    return samples


def _parse_le(le):
    return math.inf if le in ("+Inf", "Inf", "inf") else float(le)


def chat_counters(samples):
    """The counters the canary gates need, summed over every series of one scrape.

    Returns a dict: sends_error, sends_total, http_5xx, http_total, ack_buckets
    ({upper bound in seconds: cumulative count}). Metric names: docs/architecture.md.
    """
    buckets: dict[float, float] = {}
    out: dict[str, Any] = {"sends_error": 0.0, "sends_total": 0.0, "http_5xx": 0.0,
                           "http_total": 0.0, "ack_buckets": buckets}
    for name, labels, value in samples:
        if name == "chat_sends_total":
            out["sends_total"] += value
            if labels.get("outcome") == "error":
                out["sends_error"] += value
        elif name == "chat_http_requests_total":
            out["http_total"] += value
            if labels.get("status") == "5xx":
                out["http_5xx"] += value
        elif name == "chat_ack_latency_seconds_bucket" and "le" in labels:
            le = _parse_le(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    return out


def counter_delta(before, after):
    """Increase of a counter between two scrapes; a decrease means the process restarted
    (the counter reset to zero), so the increase is the new value itself."""
    if after < before:
        return after
    return after - before


def error_rate(before, after):
    """Error rate of a color between two scrapes (chat_counters dicts).

    (Δ sends{outcome=error} + Δ http{status=5xx}) / (Δ all sends + Δ all requests);
    None when nothing happened in between (no data, not a pass).
    """
    errors = (counter_delta(before["sends_error"], after["sends_error"])
              + counter_delta(before["http_5xx"], after["http_5xx"]))
    total = (counter_delta(before["sends_total"], after["sends_total"])
             + counter_delta(before["http_total"], after["http_total"]))
    if total <= 0:
        return None
    return errors / total


def bucket_deltas(before, after):
    """Per-bucket increase of a cumulative histogram between two scrapes."""
    reset = any(after.get(le, 0.0) < count for le, count in before.items())
    return {le: (count if reset else count - before.get(le, 0.0))
            for le, count in after.items()}


def histogram_quantile(q, buckets):
    """Quantile q (0-1) of a cumulative histogram {upper bound: count}, interpolated
    linearly inside the bucket like Prometheus' histogram_quantile. None when empty.

    When the quantile falls in the +Inf bucket, the highest finite bound is returned.
    """
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if bounds[-1] != math.inf:
        total = max(buckets.values())
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                finite = [b for b in bounds if b != math.inf]
                return finite[-1] if finite else None
            if count == prev_count:
                return bound
            lower = prev_bound if prev_bound < bound else 0.0
            return lower + (bound - lower) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return bounds[-1] if bounds[-1] != math.inf else None


def p95_ms(before, after):
    """p95 of the ack latency between two scrapes, in milliseconds (None: no sends)."""
    seconds = histogram_quantile(0.95, bucket_deltas(before["ack_buckets"], after["ack_buckets"]))
    return None if seconds is None else seconds * 1000.0
