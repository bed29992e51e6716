# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see galaxy.yml)
"""The chat's own signals as a gate source: error rate and p95 of one color from the
increase of its /metrics counters since the step began (docs/architecture.md). Both
drivers use it: on HAProxy it is the main source, on AWS it complements CloudWatch's
one-minute datapoints when the chat's /metrics of a color can be reached."""

from __future__ import annotations

import time

from ansible.module_utils.urls import open_url
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.core import (
    GATE_ERROR_RATE,
    GATE_P95,
    chat_counters,
    counter_delta,
    error_rate,
    make_reading,
    p95_ms,
    parse_prometheus,
)


def fetch_text(url, timeout):
    response = open_url(url, timeout=timeout, validate_certs=False)
    return response.read().decode("utf-8", "replace")


class ChatMetrics(object):
    """Scrapes color -> /metrics URL; readings are deltas against the step's baseline."""

    def __init__(self, urls, timeout=3.0, fetch=fetch_text, clock=None):
        self.urls = dict(urls or {})
        self.timeout = timeout
        self.fetch = fetch
        self.wall = clock or time.time
        self._base = {}

    def _scrape(self, color):
        url = self.urls.get(color)
        if not url:
            return None, "no metrics URL for %s" % color
        try:
            return chat_counters(parse_prometheus(self.fetch(url, self.timeout))), None
        except Exception as e:  # an unreachable /metrics is "no data", not a pass
            return None, "scraping %s failed: %s" % (url, e)

    def start(self):
        """Take the baseline of every color (before the weights move)."""
        self._base = {}
        for color in self.urls:
            counters = self._scrape(color)[0]
            if counters is not None:
                self._base[color] = counters

    def sends(self, color):
        """(sends of `color` since the baseline, detail): (None, why) when /metrics cannot
        tell (no URL, unreachable, no baseline)."""
        counters, problem = self._scrape(color)
        base = self._base.get(color)
        if counters is None:
            return None, problem
        if base is None:
            return None, "no baseline of %s's /metrics" % color
        return counter_delta(base["sends_total"], counters["sends_total"]), None

    def readings(self, color, thresholds):
        """error_rate and p95_ms of `color` since the baseline (value None: no data)."""
        now = self.wall()
        counters, problem = self._scrape(color)
        base = self._base.get(color)
        if counters is not None and base is None:
            # The baseline scrape failed: this one becomes the baseline.
            self._base[color] = counters
            problem = "baseline taken now"
        if counters is None or base is None:
            return [make_reading(GATE_ERROR_RATE, "metrics", color, None, thresholds, now,
                                 detail=problem),
                    make_reading(GATE_P95, "metrics", color, None, thresholds, now,
                                 detail=problem)]
        rate = error_rate(base, counters)
        p95 = p95_ms(base, counters)
        return [make_reading(GATE_ERROR_RATE, "metrics", color, rate, thresholds, now,
                             detail=None if rate is not None else
                             "no sends or requests since the step began"),
                make_reading(GATE_P95, "metrics", color, p95, thresholds, now,
                             detail=None if p95 is not None else
                             "no acks since the step began")]
