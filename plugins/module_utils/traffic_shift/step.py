# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see galaxy.yml)
"""One canary step, independent of the load balancer: pre-check, apply, verify, bake,
on a breach everyone to blue (or the previous weights). The driver (haproxy or elbv2)
only reads and writes weights and takes gate readings; clocks are injectable so unit
tests can drive a step with a fake driver.

A driver provides:
    read_weights() -> {"blue": int, "green": int}
    apply_weights(weights) -> None
    health_readings(color, thresholds) -> [reading]       (gate "healthy")
    start_bake(step_start_epoch) -> None                   (baselines for deltas)
    bake_readings(color, thresholds) -> [reading]          (error rate, p95, alarms)
    sends_reading(color, thresholds) -> reading            (gate "sends"; needed when
                                                            thresholds.min_sends > 0)
and optionally:
    mark_applied(epoch) -> None     the weights were written at `epoch`: windows of
                                    time-stamped data (CloudWatch) start there
"""

from __future__ import annotations

import time
from typing import Any

from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.core import (
    bake_color,
    breach_message,
    breach_weights,
    first_breach,
    gaining_color,
    weights_match,
)


class StepFailed(Exception):
    """The step failed; `result` is what the module returns with its failure."""

    def __init__(self, msg, result):
        super(StepFailed, self).__init__(msg)
        self.msg = msg
        self.result = result


class Clock(object):
    """Wall clock for timestamps, monotonic clock for durations, sleep for polling."""

    def __init__(self, wall=time.time, monotonic=time.monotonic, sleep=time.sleep):
        self.wall = wall
        self.monotonic = monotonic
        self.sleep = sleep


def _round(seconds):
    return round(seconds, 3)


def wait_for_weights(driver, wanted, timeout, clock, interval=0.2):
    """Read the weights back until they match `wanted`; returns the last read."""
    deadline = clock.monotonic() + timeout
    while True:
        actual = driver.read_weights()
        if weights_match(actual, wanted) or clock.monotonic() >= deadline:
            return actual
        clock.sleep(interval)


def run_step(driver, target, thresholds, bake_seconds=0, poll_interval=5.0,
             auto_rollback=True, verify=True, verify_timeout=30.0, rollback=False,
             check_mode=False, clock=None, on_breach="blue", allow_idle=False):
    """Move the weights to `target` ({"blue": b, "green": g}) under the gates.

    Returns the module result; raises StepFailed (with the result) on a refused
    pre-check, a weight that does not read back, or a gate breach during the bake.
    `rollback=True` moves the weights with neither pre-check nor bake: a failing gate
    never blocks a rollback.

    On a breach (auto_rollback) the weights become blue 100 / green 0 (`on_breach`
    "blue") or the ones before the step ("previous"). With `thresholds.min_sends` > 0 the
    bake ends with the sends gate: fewer sends than that from the watched color during
    the bake is a breach ("insufficient data") unless `allow_idle`.
    """
    clock = clock or Clock()
    t_start = clock.monotonic()
    timings = {"apply_seconds": 0.0, "verify_seconds": 0.0, "bake_seconds": 0.0,
               "total_seconds": 0.0}
    gates: list[dict[str, Any]] = []
    before = driver.read_weights()
    result: dict[str, Any] = {
        "changed": not weights_match(before, target),
        "weights_before": dict(before),
        "weights_after": dict(target),
        "gates": gates,
        "timings": timings,
        "rolled_back": False,
    }

    def finish():
        timings["total_seconds"] = _round(clock.monotonic() - t_start)
        return result

    def restore(reason):
        """Move the weights to the breach weights (auto_rollback) and fail with `reason`."""
        result["weights_after"] = dict(driver.read_weights())
        if auto_rollback:
            back = breach_weights(before, on_breach)
            driver.apply_weights(back)
            result["weights_after"] = dict(wait_for_weights(driver, back, verify_timeout,
                                                            clock))
            result["rolled_back"] = True
            result["changed"] = not weights_match(result["weights_after"], before)
            if on_breach == "blue":
                reason += "; everyone sent to blue (blue %s / green %s)" % (
                    back.get("blue"), back.get("green"))
            else:
                reason += "; previous weights restored (blue %s / green %s)" % (
                    before.get("blue"), before.get("green"))
        else:
            reason += "; auto_rollback is off, weights left at blue %s / green %s" % (
                result["weights_after"].get("blue"), result["weights_after"].get("green"))
        finish()
        raise StepFailed(reason, result)

    if not result["changed"]:
        result["msg"] = "weights already blue %s / green %s" % (before["blue"], before["green"])
        return finish()

    gain = gaining_color(before, target)
    if not rollback and gain is not None:
        readings = driver.health_readings(gain, thresholds)
        gates.extend(readings)
        breach = first_breach(readings)
        if breach is not None:
            result["changed"] = False
            result["weights_after"] = dict(before)
            result["breach"] = breach
            finish()
            raise StepFailed("pre-check refused the step: " + breach_message(breach), result)

    if check_mode:
        result["msg"] = "would move weights from blue %s / green %s to blue %s / green %s" % (
            before["blue"], before["green"], target["blue"], target["green"])
        return finish()

    if not rollback:
        driver.start_bake(clock.wall())

    t = clock.monotonic()
    driver.apply_weights(target)
    timings["apply_seconds"] = _round(clock.monotonic() - t)
    mark_applied = getattr(driver, "mark_applied", None)
    if mark_applied is not None and not rollback:
        mark_applied(clock.wall())

    if verify:
        t = clock.monotonic()
        actual = wait_for_weights(driver, target, verify_timeout, clock)
        timings["verify_seconds"] = _round(clock.monotonic() - t)
        if not weights_match(actual, target):
            result["weights_after"] = dict(actual)
            restore("weights did not read back within %ss: wanted blue %s / green %s, "
                    "read blue %s / green %s" % (verify_timeout, target["blue"],
                                                 target["green"], actual.get("blue"),
                                                 actual.get("green")))

    if rollback:
        result["msg"] = "rolled to blue %s / green %s without gates" % (
            target["blue"], target["green"])
        return finish()

    color = bake_color(before, target)
    t = clock.monotonic()
    deadline = t + max(0.0, float(bake_seconds))
    while True:
        try:
            readings = driver.health_readings(color, thresholds)
            readings += driver.bake_readings(color, thresholds)
        except Exception as e:  # a gate that cannot be read at all: back out, then fail
            timings["bake_seconds"] = _round(clock.monotonic() - t)
            restore("reading the gates failed: %s" % (e,))
        gates.extend(readings)
        breach = first_breach(readings)
        if breach is not None:
            timings["bake_seconds"] = _round(clock.monotonic() - t)
            result["breach"] = breach
            restore(breach_message(breach))
        now = clock.monotonic()
        if now >= deadline:
            break
        clock.sleep(min(float(poll_interval), deadline - now))
    if thresholds.min_sends > 0:
        try:
            reading = driver.sends_reading(color, thresholds)
        except Exception as e:
            timings["bake_seconds"] = _round(clock.monotonic() - t)
            restore("reading the gates failed: %s" % (e,))
        if allow_idle and reading["ok"] is False:
            reading = dict(reading, ok=None, detail="; ".join(
                [d for d in (reading.get("detail"), "allow_idle: not judged") if d]))
        gates.append(reading)
        if reading["ok"] is False:
            timings["bake_seconds"] = _round(clock.monotonic() - t)
            result["breach"] = reading
            restore(breach_message(reading))
    timings["bake_seconds"] = _round(clock.monotonic() - t)
    result["msg"] = "moved to blue %s / green %s; gates passed for %ss" % (
        target["blue"], target["green"], bake_seconds)
    return finish()
