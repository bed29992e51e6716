# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see galaxy.yml)
"""The gating core of traffic_shift: pure functions, no I/O.

Everything here takes plain values (texts already fetched, API responses already
received) and returns plain values, so that unit tests call it directly and both drivers
(haproxy, elbv2) share one definition of a weight, a gate reading and a breach.
"""

from __future__ import annotations

import copy
import csv
import io
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

def weights_for(green_percent):
    """Green gets `green_percent` (0-100), blue the rest."""
    green = int(green_percent)
    if green < 0 or green > 100:
        raise ValueError("weight must be between 0 and 100, got %r" % (green_percent,))
    return {"blue": 100 - green, "green": green}


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


# --------------------------------------------------------------------------- HAProxy

HRSP_FIELDS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")


def parse_show_stat(text):
    """Parse the CSV of the runtime API's `show stat` into a list of dicts."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise ValueError("not a `show stat` answer: %r" % (text[:200],))
    header = lines[0][2:]
    rows = []
    for row in csv.DictReader(io.StringIO("\n".join([header, *lines[1:]]))):
        rows.append({k: v for k, v in row.items() if k and k != "-"})
    return rows


def stat_row(rows, backend, server):
    for row in rows:
        if row.get("pxname") == backend and row.get("svname") == server:
            return row
    return None


def server_is_healthy(row):
    """A server takes traffic when it is UP (also "UP 1/3", going down but still in) or
    not health-checked at all; DOWN, MAINT, DRAIN and NOLB servers take no new traffic."""
    status = (row.get("status") or "").strip()
    return status == "UP" or status.startswith("UP ") or status == "no check"


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def server_responses(row):
    """(5xx responses, responses that were not client faults) of one `show stat` row.

    4xx answers are the client's fault: a hostile audience sending junk must not dilute
    the rate, so they stay out of the denominator as they stay out of the numerator.
    """
    total = sum(_int(row.get(f)) for f in HRSP_FIELDS if f != "hrsp_4xx")
    return _int(row.get("hrsp_5xx")), total


def haproxy_5xx_rate(before_row, after_row):
    """Share of a server's HTTP responses (4xx aside) that were 5xx between two reads."""
    e0, t0 = server_responses(before_row)
    e1, t1 = server_responses(after_row)
    total = counter_delta(t0, t1)
    if total <= 0:
        return None
    return counter_delta(e0, e1) / total


def parse_get_weight(text):
    """`get weight chat/green` answers "10 (initial 10)"."""
    m = re.match(r"\s*(\d+)", text)
    if not m:
        raise ValueError("unexpected `get weight` answer: %r" % (text.strip(),))
    return int(m.group(1))


# --------------------------------------------------------------------------- ELBv2

def forward_weights(actions, arns):
    """Weights of the given target group ARNs in a listener's forward action.

    `arns` maps color -> target group ARN; returns color -> weight: 0 for a color the
    action does not forward to, 100 for the only target group of a plain forward."""
    action = _forward_action(actions)
    weights = {color: 0 for color in arns}
    if action is None:
        return weights
    groups = (action.get("ForwardConfig") or {}).get("TargetGroups")
    if groups:
        for tg in groups:
            for color, arn in arns.items():
                if tg.get("TargetGroupArn") == arn:
                    weights[color] = int(tg.get("Weight", 1))
        return weights
    for color, arn in arns.items():
        if action.get("TargetGroupArn") == arn:
            weights[color] = 100
    return weights


def _forward_action(actions):
    forwards = [a for a in actions if a.get("Type") == "forward"]
    return forwards[0] if forwards else None


def rewrite_forward_weights(actions, weights_by_arn):
    """A copy of a listener's default actions with only the weights of the forward
    action changed to `weights_by_arn` (ARN -> weight).

    Everything else is kept: other actions, Order, stickiness, other target groups of the
    forward config and their weights. A plain `TargetGroupArn` forward becomes a
    ForwardConfig (the action-level ARN is dropped: the API refuses both together when
    they differ)."""
    new = copy.deepcopy(list(actions))
    action = _forward_action(new)
    if action is None:
        raise ValueError("the listener's default actions have no forward action")
    config = action.setdefault("ForwardConfig", {})
    groups = config.get("TargetGroups")
    if not groups:
        groups = []
        if action.get("TargetGroupArn"):
            groups.append({"TargetGroupArn": action["TargetGroupArn"], "Weight": 1})
        config["TargetGroups"] = groups
    present = set()
    for tg in groups:
        arn = tg.get("TargetGroupArn")
        if arn in weights_by_arn:
            tg["Weight"] = int(weights_by_arn[arn])
            present.add(arn)
    for arn, weight in weights_by_arn.items():
        if arn not in present:
            groups.append({"TargetGroupArn": arn, "Weight": int(weight)})
    action.pop("TargetGroupArn", None)
    return new


def arn_resource(arn):
    """The resource part of an ARN: arn:aws:elasticloadbalancing:r:a:<resource>."""
    parts = arn.split(":", 5)
    if len(parts) != 6:
        raise ValueError("not an ARN: %r" % (arn,))
    return parts[5]


def target_group_dimension(tg_arn):
    """CloudWatch `TargetGroup` dimension value: targetgroup/<name>/<id>."""
    return arn_resource(tg_arn)


def load_balancer_dimension(lb_or_listener_arn):
    """CloudWatch `LoadBalancer` dimension value (app/<name>/<id>) from the load balancer's
    ARN or one of its listeners' ARNs."""
    resource = arn_resource(lb_or_listener_arn)
    parts = resource.split("/")
    kind, parts = parts[0], parts[1:]
    if kind not in ("loadbalancer", "listener") or len(parts) < 3:
        raise ValueError("not a load balancer or listener ARN: %r" % (lb_or_listener_arn,))
    return "/".join(parts[:3])


def metric_sum(values):
    """Sum of CloudWatch datapoints, None when there are none (no data is not zero)."""
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def share(part, whole):
    """part / whole, None when there is nothing to divide (no requests: no reading)."""
    if whole is None or whole <= 0:
        return None
    return (part or 0.0) / whole


def worst(values):
    """The highest of per-period readings (a p95 over several periods: the worst one)."""
    values = [v for v in values if v is not None]
    return max(values) if values else None


def weighted_rule(rules, arns):
    """The listener rule (not the default one) whose forward action lists every target
    group of `arns` (color -> ARN), or None: where the weights live when the listener
    forwards through a rule (e.g. one matching a secret origin header) and answers
    everything else with its default action."""
    wanted = set(arns.values())
    for rule in sorted(rules, key=_rule_priority):
        if rule.get("IsDefault"):
            continue
        action = _forward_action(rule.get("Actions") or [])
        if action is None:
            continue
        groups = (action.get("ForwardConfig") or {}).get("TargetGroups") or []
        if wanted <= {tg.get("TargetGroupArn") for tg in groups}:
            return rule
    return None


def _rule_priority(rule):
    try:
        return int(rule.get("Priority"))
    except (TypeError, ValueError):
        return 1 << 30


def period_start(ts, period):
    """The start of the CloudWatch period holding `ts` (epoch seconds): CloudWatch rounds
    a query's StartTime down like this (to the minute, or to the 5/10/20/30-second
    division of a minute for those periods) and stamps each datapoint with the start of
    its period."""
    return ts - (ts % period)


def since_apply(timestamps, values, applied_at):
    """The datapoints whose period starts at or after `applied_at` (epoch seconds): a
    period that started before the weights moved mixes the old weights in, so it never
    counts. Returns (values, timestamps), oldest first."""
    points = sorted((t, values[i]) for i, t in enumerate(timestamps)
                    if t >= applied_at and values[i] is not None)
    return [point[1] for point in points], [point[0] for point in points]
