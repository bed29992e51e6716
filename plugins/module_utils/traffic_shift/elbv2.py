# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see galaxy.yml)
"""traffic_shift's elbv2 driver: weights of an ALB listener's weighted forward (in the
listener rule that forwards to both target groups, else in the default action), gates from
DescribeTargetHealth, CloudWatch GetMetricData and DescribeAlarms.

Gates of the bake, for the watched color, over datapoints whose period starts at or after
the moment the weights were applied (never the period before):
  - `error_rate` and `p95_ms` from the chat's own metrics, namespace CanaryChat, dimension
    Color: Sum(SendErrors) / Sum(Sends) and the worst per-period p95 of AckLatency, at
    `chat_period` (10 s: the chat publishes high-resolution data every 10 s);
  - `alb_5xx`: AWS/ApplicationELB HTTPCode_Target_5XX_Count of the color's target group
    plus HTTPCode_ELB_5XX_Count of the load balancer (LoadBalancer dimension only: ALB
    does not attribute its own 5xx to a target group), at 60 s, the ALB's period. ALB
    reports these only when they are non-zero, so no datapoint is zero;
  - `sends` (end of the bake): Sum(Sends) of the color, at least `min_sends`.

The clients come from AnsibleAWSModule.client(..., retry_decorator=AWSRetry...), so every
call passes aws_retry=True; unit tests may pass plain boto3 clients with retry=False.
"""

from __future__ import annotations

import copy
import datetime
import time

from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.core import (
    GATE_ALARM,
    GATE_ALB_5XX,
    GATE_ERROR_RATE,
    GATE_HEALTHY,
    GATE_P95,
    GATE_SENDS,
    make_reading,
)


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


ALB_NAMESPACE = "AWS/ApplicationELB"
CHAT_NAMESPACE = "CanaryChat"
ALB_PERIOD = 60


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
                 chat_period=10, retry=True, clock=None, metrics=None):
        self.elbv2 = elbv2
        self.cloudwatch = cloudwatch
        self.listener_arn = listener_arn
        self.arns = dict(target_group_arns)
        self.alarm_names = list(alarm_names or [])
        self.chat_period = int(chat_period)
        self.kw = _kw(retry)
        self.wall = clock or time.time
        self.applied_at = None
        self.metrics = metrics  # optional ChatMetrics: the chat's /metrics, when reachable

    # ---- weights
    def _weighted_actions(self):
        """("rule", rule ARN, actions) of the listener rule forwarding to both target
        groups, else ("listener", listener ARN, default actions)."""
        rules = []
        marker = None
        while True:
            kwargs = {"ListenerArn": self.listener_arn}
            if marker:
                kwargs["Marker"] = marker
            resp = self.elbv2.describe_rules(**kwargs, **self.kw)
            rules += resp.get("Rules", [])
            marker = resp.get("NextMarker")
            if not marker:
                break
        rule = weighted_rule(rules, self.arns)
        if rule is not None:
            return "rule", rule["RuleArn"], rule["Actions"]
        listeners = self.elbv2.describe_listeners(ListenerArns=[self.listener_arn],
                                                  **self.kw)["Listeners"]
        return "listener", self.listener_arn, listeners[0]["DefaultActions"]

    def read_weights(self):
        return forward_weights(self._weighted_actions()[2], self.arns)

    def apply_weights(self, weights):
        kind, arn, actions = self._weighted_actions()
        actions = rewrite_forward_weights(
            actions, {self.arns[c]: weights[c] for c in ("blue", "green")})
        if kind == "rule":
            self.elbv2.modify_rule(RuleArn=arn, Actions=actions, **self.kw)
        else:
            self.elbv2.modify_listener(ListenerArn=arn, DefaultActions=actions, **self.kw)

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
        # Until mark_applied says when the weights moved, no datapoint counts before this.
        self.applied_at = float(step_start)
        if self.metrics is not None:
            self.metrics.start()

    def mark_applied(self, applied_at):
        self.applied_at = float(applied_at)

    def _chat_metric(self, qid, color, metric, stat):
        return _query(qid, CHAT_NAMESPACE, metric, [{"Name": "Color", "Value": color}],
                      self.chat_period, stat)

    def _alb_metric(self, qid, metric, dimensions, stat="Sum"):
        return _query(qid, ALB_NAMESPACE, metric, dimensions, ALB_PERIOD, stat)

    def _fetch(self, queries, period, now):
        """{query id: (values, timestamps)} of the datapoints whose period starts at or
        after the apply time. StartTime is the start of the period holding the apply time
        (CloudWatch rounds it down so anyway); the datapoint of that period began before
        the weights moved and is dropped by its Timestamp (the start of its period)."""
        applied = self.applied_at if self.applied_at is not None else now
        utc = datetime.timezone.utc
        raw: dict[str, tuple[list[float], list[float]]] = {q["Id"]: ([], []) for q in queries}
        token = None
        while True:
            kwargs = dict(MetricDataQueries=queries,
                          StartTime=datetime.datetime.fromtimestamp(
                              period_start(applied, period), utc),
                          EndTime=datetime.datetime.fromtimestamp(
                              period_start(now, period) + period, utc),
                          ScanBy="TimestampAscending")
            if token:
                kwargs["NextToken"] = token
            resp = self.cloudwatch.get_metric_data(**kwargs, **self.kw)
            for res in resp.get("MetricDataResults", []):
                values, stamps = raw.setdefault(res["Id"], ([], []))
                values.extend(res.get("Values") or [])
                stamps.extend(_epoch(t) for t in res.get("Timestamps") or [])
            token = resp.get("NextToken")
            if not token:
                break
        return {qid: since_apply(stamps, values, applied)
                for qid, (values, stamps) in raw.items()}

    def _since(self):
        applied = self.applied_at if self.applied_at is not None else self.wall()
        return "since %s" % datetime.datetime.fromtimestamp(
            applied, datetime.timezone.utc).strftime("%H:%M:%SZ")

    def _sends(self, color, now):
        data = self._fetch([self._chat_metric("sends", color, "Sends", "Sum")],
                           self.chat_period, now)
        return metric_sum(data["sends"][0]), len(data["sends"][0])

    def sends_reading(self, color, thresholds):
        now = self.wall()
        sends, points = self._sends(color, now)
        return make_reading(GATE_SENDS, "canarychat", color, round(sends or 0),
                            thresholds, now,
                            detail="%s Sends in %d datapoints of %ss %s" % (
                                _n(sends), points, self.chat_period, self._since()))

    def bake_readings(self, color, thresholds):
        now = self.wall()
        since = self._since()
        ours = self._fetch([self._chat_metric("sends", color, "Sends", "Sum"),
                            self._chat_metric("errors", color, "SendErrors", "Sum"),
                            self._chat_metric("p95", color, "AckLatency", "p95")],
                           self.chat_period, now)
        sends = metric_sum(ours["sends"][0])
        errors = metric_sum(ours["errors"][0])
        rate = share(errors, sends)
        p95 = worst(ours["p95"][0])
        lb = [{"Name": "LoadBalancer", "Value": load_balancer_dimension(self.listener_arn)}]
        tg = [{"Name": "TargetGroup", "Value": target_group_dimension(self.arns[color])}, *lb]
        alb = self._fetch([self._alb_metric("target5xx", "HTTPCode_Target_5XX_Count", tg),
                           self._alb_metric("elb5xx", "HTTPCode_ELB_5XX_Count", lb)],
                          ALB_PERIOD, now)
        target_5xx = metric_sum(alb["target5xx"][0]) or 0.0
        elb_5xx = metric_sum(alb["elb5xx"][0]) or 0.0
        readings = [
            make_reading(GATE_ERROR_RATE, "canarychat", color, rate, thresholds, now,
                         detail="%s SendErrors of %s Sends in %d datapoints %s" % (
                             _n(errors), _n(sends), len(ours["sends"][0]), since)),
            make_reading(GATE_P95, "canarychat", color, p95, thresholds, now,
                         detail=("worst of %d datapoints %s" % (len(ours["p95"][0]), since))
                         if p95 is not None else "no AckLatency p95 datapoints %s" % since),
            make_reading(GATE_ALB_5XX, "cloudwatch", color, int(target_5xx + elb_5xx),
                         thresholds, now,
                         detail="%g target 5xx + %g ELB 5xx in %d whole minutes %s" % (
                             target_5xx, elb_5xx,
                             len(set(alb["target5xx"][1]) | set(alb["elb5xx"][1])), since)),
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


def _query(qid, namespace, metric, dimensions, period, stat):
    return {
        "Id": qid,
        "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": metric,
                       "Dimensions": dimensions},
            "Period": period,
            "Stat": stat,
        },
        "ReturnData": True,
    }


def _epoch(ts):
    if isinstance(ts, datetime.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=datetime.timezone.utc)
        return ts.timestamp()
    return float(ts)


def _n(value):
    return "no" if value is None else "%g" % value
