# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see galaxy.yml)
"""traffic_shift's haproxy driver: weights through HAProxy's runtime API (stats socket,
the client in module_utils/haproxy_runtime.py), gates from the chat's /metrics and from
HAProxy's own per-server counters (`show stat` rows)."""

from __future__ import annotations

import time

from ansible_collections.canarychat.platform.plugins.module_utils.haproxy_runtime import (
    RuntimeAPIError,
    parse_show_stat,
    stat_row,
)
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.core import (
    GATE_ERROR_RATE,
    GATE_HEALTHY,
    GATE_SENDS,
    counter_delta,
    make_reading,
)
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.metrics import (
    ChatMetrics,
)

HRSP_FIELDS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")


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


class HAProxyDriver(object):
    def __init__(self, api, backend="chat", servers=None, metrics=None, clock=None):
        self.api = api
        self.backend = backend
        self.servers = servers or {"blue": "blue", "green": "green"}
        self.metrics = metrics or ChatMetrics({}, clock=clock)
        self.wall = clock or time.time
        self._stat_base = {}

    # ---- weights
    def read_weights(self):
        colors = ("blue", "green")
        values = self.api.get_weights(["%s/%s" % (self.backend, self.servers[c]) for c in colors])
        return dict(zip(colors, values))  # noqa: B905 - get_weights answers one per server

    def apply_weights(self, weights):
        # The color losing weight first: a rollback stops new connections to green at once.
        before = self.read_weights()
        order = sorted(("blue", "green"), key=lambda c: weights[c] - before.get(c, 0))
        cmd = ";".join("set server %s/%s weight %d" % (self.backend, self.servers[c], weights[c])
                       for c in order)
        out = self.api.run(cmd).strip()
        if out:
            raise RuntimeAPIError("HAProxy refused %r: %s" % (cmd, out))

    # ---- gates
    def _stat_rows(self):
        return parse_show_stat(self.api.run("show stat"))

    def _server_row(self, rows, color):
        row = stat_row(rows, self.backend, self.servers[color])
        if row is None:
            raise RuntimeAPIError("no server %s/%s in HAProxy's stats"
                                  % (self.backend, self.servers[color]))
        return row

    def health_readings(self, color, thresholds):
        row = self._server_row(self._stat_rows(), color)
        healthy = 1 if server_is_healthy(row) else 0
        detail = "status %s, check %s" % (row.get("status"), row.get("check_status") or "-")
        return [make_reading(GATE_HEALTHY, "haproxy", color, healthy, thresholds, self.wall(),
                             detail=detail)]

    def start_bake(self, step_start):
        self._stat_base = {}
        rows = self._stat_rows()
        for color in ("blue", "green"):
            self._stat_base[color] = dict(self._server_row(rows, color))
        self.metrics.start()

    def bake_readings(self, color, thresholds):
        readings = self.metrics.readings(color, thresholds)
        now = self.wall()
        row = self._server_row(self._stat_rows(), color)
        base_row = self._stat_base.get(color)
        rate = haproxy_5xx_rate(base_row, row) if base_row is not None else None
        readings.append(make_reading(GATE_ERROR_RATE, "haproxy", color, rate, thresholds, now,
                                     detail=None if rate is not None else
                                     "no HTTP responses since the step began"))
        return readings

    def sends_reading(self, color, thresholds):
        """Gate `sends`: the increase of the color's chat_sends_total since the step began
        (its /metrics); a /metrics that cannot tell counts as no sends."""
        sends, problem = self.metrics.sends(color)
        if sends is not None:
            sends = round(sends)
        return make_reading(GATE_SENDS, "metrics", color, sends, thresholds, self.wall(),
                            detail=problem)
