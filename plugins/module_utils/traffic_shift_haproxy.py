# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see galaxy.yml)
"""traffic_shift's haproxy driver: weights through HAProxy's runtime API (stats socket),
gates from the chat's /metrics and from HAProxy's own per-server counters."""

from __future__ import annotations

import socket
import time

from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift_core import (
    GATE_ERROR_RATE,
    GATE_HEALTHY,
    GATE_SENDS,
    haproxy_5xx_rate,
    make_reading,
    parse_get_weight,
    parse_show_stat,
    server_is_healthy,
    stat_row,
)
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift_metrics import (
    ChatMetrics,
)


class RuntimeAPIError(Exception):
    pass


class RuntimeAPI(object):
    """A minimal client of HAProxy's runtime API: one command line per connection
    (commands separated by ';' run in order on that connection)."""

    def __init__(self, address, timeout=5.0):
        self.address = address
        self.timeout = timeout

    def _connect(self):
        if "/" in self.address or ":" not in self.address:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = self.address
        else:
            host, port = self.address.rsplit(":", 1)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = (host.strip("[]") or "127.0.0.1", int(port))
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except OSError as e:
            sock.close()
            raise RuntimeAPIError("cannot connect to the HAProxy runtime API at %s: %s"
                                  % (self.address, e)) from e
        return sock

    def run(self, command):
        sock = self._connect()
        try:
            sock.sendall(command.encode("utf-8") + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            raise RuntimeAPIError("HAProxy runtime API %s: %s" % (self.address, e)) from e
        finally:
            sock.close()
        return b"".join(chunks).decode("utf-8", "replace")


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
        cmd = ";".join("get weight %s/%s" % (self.backend, self.servers[c])
                       for c in ("blue", "green"))
        out = self.api.run(cmd)
        parts = [p for p in out.split("\n") if p.strip()]
        if len(parts) != 2:
            raise RuntimeAPIError("unexpected answer to %r: %r" % (cmd, out.strip()))
        weights = {}
        for i, color in enumerate(("blue", "green")):
            answer = parts[i]
            try:
                weights[color] = parse_get_weight(answer)
            except ValueError:
                raise RuntimeAPIError("HAProxy cannot read the weight of %s/%s: %s" % (
                    self.backend, self.servers[color], answer.strip())) from None
        return weights

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
