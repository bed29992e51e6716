# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see galaxy.yml)
"""traffic_shift's elbv2 driver: weights of an ALB listener's forward action, gates from
DescribeTargetHealth, CloudWatch GetMetricData and DescribeAlarms.

The clients come from AnsibleAWSModule.client(..., retry_decorator=AWSRetry...), so every
call passes aws_retry=True; unit tests may pass plain boto3 clients with retry=False.
"""

from __future__ import annotations

import datetime
import time

from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift_core import (
    GATE_ALARM,
    GATE_ERROR_RATE,
    GATE_HEALTHY,
    GATE_P95,
    forward_weights,
    load_balancer_dimension,
    make_reading,
    metric_sum,
    rewrite_forward_weights,
    share,
    target_group_dimension,
    window_start,
    worst,
)

NAMESPACE = "AWS/ApplicationELB"


class ConfigError(Exception):
    pass


def _kw(retry):
    return {"aws_retry": True} if retry else {}


def find_listener_arn(elbv2, load_balancer_name, port, retry=True):
    lbs = elbv2.describe_load_balancers(Names=[load_balancer_name], **_kw(retry))
    lb_arn = lbs["LoadBalancers"][0]["LoadBalancerArn"]
    listeners = elbv2.describe_listeners(LoadBalancerArn=lb_arn, **_kw(retry))["Listeners"]
    for listener in listeners:
        if int(listener["Port"]) == int(port):
            return listener["ListenerArn"]
    raise ConfigError("load balancer %s has no listener on port %s" % (load_balancer_name, port))


def find_target_group_arn(elbv2, name, retry=True):
    groups = elbv2.describe_target_groups(Names=[name], **_kw(retry))["TargetGroups"]
    return groups[0]["TargetGroupArn"]


class ELBv2Driver(object):
    def __init__(self, elbv2, cloudwatch, listener_arn, target_group_arns, alarm_names=None,
                 period=60, lookback=60, retry=True, clock=None, metrics=None):
        self.elbv2 = elbv2
        self.cloudwatch = cloudwatch
        self.listener_arn = listener_arn
        self.arns = dict(target_group_arns)
        self.alarm_names = list(alarm_names or [])
        self.period = int(period)
        self.lookback = float(lookback)
        self.kw = _kw(retry)
        self.wall = clock or time.time
        self.window_start = None
        self.metrics = metrics  # optional ChatMetrics: the chat's own, faster signals

    # ---- weights
    def _default_actions(self):
        listeners = self.elbv2.describe_listeners(ListenerArns=[self.listener_arn],
                                                  **self.kw)["Listeners"]
        return listeners[0]["DefaultActions"]

    def read_weights(self):
        return forward_weights(self._default_actions(), self.arns)

    def apply_weights(self, weights):
        actions = rewrite_forward_weights(
            self._default_actions(), {self.arns[c]: weights[c] for c in ("blue", "green")})
        self.elbv2.modify_listener(ListenerArn=self.listener_arn, DefaultActions=actions,
                                   **self.kw)

    # ---- configuration
    def check_alarms_exist(self):
        if not self.alarm_names:
            return
        found = {a["AlarmName"] for a in self._alarms()}
        missing = [n for n in self.alarm_names if n not in found]
        if missing:
            raise ConfigError("alarm(s) not found: %s" % ", ".join(missing))

    def _alarms(self):
        alarms = []
        names = self.alarm_names
        for i in range(0, len(names), 100):
            resp = self.cloudwatch.describe_alarms(AlarmNames=names[i:i + 100],
                                                   AlarmTypes=["MetricAlarm", "CompositeAlarm"],
                                                   **self.kw)
            alarms += resp.get("MetricAlarms", []) + resp.get("CompositeAlarms", [])
        return alarms

    # ---- gates
    def health_readings(self, color, thresholds):
        resp = self.elbv2.describe_target_health(TargetGroupArn=self.arns[color], **self.kw)
        states = [d["TargetHealth"]["State"] for d in resp["TargetHealthDescriptions"]]
        healthy = sum(1 for s in states if s == "healthy")
        detail = "%d of %d targets healthy" % (healthy, len(states))
        return [make_reading(GATE_HEALTHY, "elbv2", color, healthy, thresholds, self.wall(),
                             detail=detail)]

    def start_bake(self, step_start):
        self.window_start = window_start(step_start, self.lookback, self.period)
        if self.metrics is not None:
            self.metrics.start()

    def _query(self, qid, color, metric, stat):
        return {
            "Id": qid,
            "MetricStat": {
                "Metric": {
                    "Namespace": NAMESPACE,
                    "MetricName": metric,
                    "Dimensions": [
                        {"Name": "TargetGroup",
                         "Value": target_group_dimension(self.arns[color])},
                        {"Name": "LoadBalancer",
                         "Value": load_balancer_dimension(self.listener_arn)},
                    ],
                },
                "Period": self.period,
                "Stat": stat,
            },
            "ReturnData": True,
        }

    def _metric_values(self, color, now):
        start = self.window_start if self.window_start is not None else window_start(
            now, self.lookback, self.period)
        utc = datetime.timezone.utc
        queries = [self._query("errors", color, "HTTPCode_Target_5XX_Count", "Sum"),
                   self._query("requests", color, "RequestCount", "Sum"),
                   self._query("p95", color, "TargetResponseTime", "p95")]
        values: dict[str, list[float]] = {q["Id"]: [] for q in queries}
        token = None
        while True:
            kwargs = dict(MetricDataQueries=queries,
                          StartTime=datetime.datetime.fromtimestamp(start, utc),
                          EndTime=datetime.datetime.fromtimestamp(now + self.period, utc))
            if token:
                kwargs["NextToken"] = token
            resp = self.cloudwatch.get_metric_data(**kwargs, **self.kw)
            for res in resp.get("MetricDataResults", []):
                values.setdefault(res["Id"], []).extend(res.get("Values") or [])
            token = resp.get("NextToken")
            if not token:
                return values, start

    def bake_readings(self, color, thresholds):
        now = self.wall()
        values, start = self._metric_values(color, now)
        since = "since %s" % datetime.datetime.fromtimestamp(
            start, datetime.timezone.utc).strftime("%H:%M:%SZ")
        errors = metric_sum(values["errors"])
        requests = metric_sum(values["requests"])
        rate = share(errors, requests)
        p95 = worst(values["p95"])
        readings = [
            make_reading(GATE_ERROR_RATE, "cloudwatch", color, rate, thresholds, now,
                         detail="%s 5xx of %s requests %s" % (
                             _n(errors), _n(requests), since)),
            make_reading(GATE_P95, "cloudwatch", color,
                         None if p95 is None else p95 * 1000.0, thresholds, now,
                         detail=None if p95 is not None else
                         "no TargetResponseTime p95 datapoints %s" % since),
        ]
        if self.metrics is not None:
            readings += self.metrics.readings(color, thresholds)
        if self.alarm_names:
            states = {a["AlarmName"]: a.get("StateValue") for a in self._alarms()}
            for name in self.alarm_names:
                readings.append(make_reading(GATE_ALARM, "cloudwatch", color,
                                             states.get(name), thresholds, now, name=name,
                                             detail=None if name in states else "not found"))
        return readings


def _n(value):
    return "no" if value is None else "%g" % value
