"""The elbv2 driver's gate arithmetic with in-memory stand-ins for the elbv2 and CloudWatch
clients: which queries it sends (namespace, dimensions, period, StartTime) and what it
makes of the datapoints (windows from the apply time, no data, ELB 5xx, the listener rule).
The same driver runs against the emulator in tests/integration/test_traffic_shift_elbv2.py.
"""

from __future__ import annotations

import datetime
from typing import Any

from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift import (
    core,
    elbv2,
)

BLUE = "arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:targetgroup/chat-blue/aaa"
GREEN = "arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:targetgroup/chat-green/bbb"
LISTENER = ("arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:"
            "listener/app/canary-chat/50dc6c495c0c9188/f2f7dc8efc522ab2")
LB_DIM = [{"Name": "LoadBalancer", "Value": "app/canary-chat/50dc6c495c0c9188"}]
TG_DIM = [{"Name": "TargetGroup", "Value": "targetgroup/chat-green/bbb"}, *LB_DIM]
T = core.Thresholds(min_healthy=1, max_error_rate=0.05, max_p95_ms=500, min_sends=20,
                    max_alb_5xx=0)
UTC = datetime.UTC


def ts(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, UTC)


class FakeCloudWatch:
    """Stores datapoints per (namespace, metric, dimensions, stat) as {period start: value}
    and answers GetMetricData like CloudWatch: StartTime inclusive, EndTime exclusive,
    datapoints stamped with the start of their period."""

    def __init__(self) -> None:
        self.points: dict[tuple, dict[float, float]] = {}
        self.calls: list[dict[str, Any]] = []

    def put(self, namespace: str, metric: str, dims: list[dict[str, str]], stat: str,
            stamp: float, value: float) -> None:
        key = (namespace, metric, tuple(sorted((d["Name"], d["Value"]) for d in dims)), stat)
        self.points.setdefault(key, {})[stamp] = value

    def get_metric_data(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        start, end = kw["StartTime"].timestamp(), kw["EndTime"].timestamp()
        out = []
        for q in kw["MetricDataQueries"]:
            ms = q["MetricStat"]
            m = ms["Metric"]
            key = (m["Namespace"], m["MetricName"],
                   tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])), ms["Stat"])
            pts = sorted((t, v) for t, v in self.points.get(key, {}).items() if start <= t < end)
            out.append({"Id": q["Id"], "Timestamps": [ts(t) for t, _ in pts],
                        "Values": [v for _, v in pts]})
        return {"MetricDataResults": out}


class FakeELBv2:
    def __init__(self, rules: list[dict] | None = None) -> None:
        self.default = [{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": BLUE, "Weight": 90}, {"TargetGroupArn": GREEN, "Weight": 10}]}}]
        self.rules = rules or []
        self.modified: list[tuple[str, str]] = []

    def describe_rules(self, ListenerArn: str, **kw: Any) -> dict[str, Any]:
        default = {"RuleArn": "rule/default", "Priority": "default", "IsDefault": True,
                   "Actions": self.default}
        return {"Rules": [*self.rules, default]}

    def describe_listeners(self, ListenerArns: list[str]) -> dict[str, Any]:
        return {"Listeners": [{"ListenerArn": LISTENER, "DefaultActions": self.default}]}

    def modify_rule(self, RuleArn: str, Actions: list[dict]) -> None:
        self.modified.append(("rule", RuleArn))
        for r in self.rules:
            if r["RuleArn"] == RuleArn:
                r["Actions"] = Actions

    def modify_listener(self, ListenerArn: str, DefaultActions: list[dict]) -> None:
        self.modified.append(("listener", ListenerArn))
        self.default = DefaultActions


def driver(cw: FakeCloudWatch, lb: FakeELBv2 | None = None, now: float = 1000.0
           ) -> tuple[elbv2.ELBv2Driver, list[float]]:
    clock = [now]
    d = elbv2.ELBv2Driver(lb or FakeELBv2(), cw, LISTENER, {"blue": BLUE, "green": GREEN},
                          retry=False, clock=lambda: clock[0])
    return d, clock


def by_gate(readings: list[dict]) -> dict[str, dict]:
    return {r["gate"]: r for r in readings}


GREEN_DIM = [{"Name": "Color", "Value": "green"}]


def put_ours(cw: FakeCloudWatch, stamp: float, sends: float, errors: float, p95: float,
             color: str = "green") -> None:
    dims = [{"Name": "Color", "Value": color}]
    cw.put("CanaryChat", "Sends", dims, "Sum", stamp, sends)
    cw.put("CanaryChat", "SendErrors", dims, "Sum", stamp, errors)
    cw.put("CanaryChat", "AckLatency", dims, "p95", stamp, p95)


def test_windows_start_at_the_apply_time_and_drop_the_period_before() -> None:
    cw = FakeCloudWatch()
    # applied at 1033.5: the period stamped 1030 began before the weights moved
    put_ours(cw, 1030.0, sends=100, errors=90, p95=9000)   # the old weights' errors
    put_ours(cw, 1040.0, sends=40, errors=1, p95=30)
    put_ours(cw, 1050.0, sends=60, errors=1, p95=45)
    put_ours(cw, 1050.0, sends=500, errors=500, p95=1, color="blue")  # another color
    d, clock = driver(cw)
    d.start_bake(1033.0)
    d.mark_applied(1033.5)
    clock[0] = 1064.0
    readings = by_gate(d.bake_readings("green", T))
    assert readings["error_rate"]["value"] == 0.02  # 2 errors of 100 sends
    assert readings["error_rate"]["source"] == "canarychat"
    assert readings["p95_ms"]["value"] == 45
    assert readings["error_rate"]["ok"] is True and readings["p95_ms"]["ok"] is True
    ours = cw.calls[0]
    assert ours["StartTime"] == ts(1030.0)  # rounded down as CloudWatch would
    assert ours["EndTime"] == ts(1070.0)    # the period holding "now" included
    q = {x["Id"]: x["MetricStat"] for x in ours["MetricDataQueries"]}
    assert q["sends"]["Metric"] == {"Namespace": "CanaryChat", "MetricName": "Sends",
                                    "Dimensions": GREEN_DIM}
    assert q["sends"]["Period"] == 10 and q["sends"]["Stat"] == "Sum"
    assert q["errors"]["Metric"]["MetricName"] == "SendErrors"
    assert q["p95"]["Metric"]["MetricName"] == "AckLatency" and q["p95"]["Stat"] == "p95"
    sends = d.sends_reading("green", T)
    assert sends["value"] == 100 and sends["ok"] is True


def test_no_data_is_no_reading_mid_bake_and_a_breach_at_the_end() -> None:
    cw = FakeCloudWatch()
    put_ours(cw, 1030.0, sends=500, errors=0, p95=5)  # before the step: does not count
    d, clock = driver(cw)
    d.start_bake(1033.0)
    d.mark_applied(1033.5)
    clock[0] = 1095.0
    readings = by_gate(d.bake_readings("green", T))
    assert readings["error_rate"]["value"] is None and readings["error_rate"]["ok"] is None
    assert readings["p95_ms"]["value"] is None and readings["p95_ms"]["ok"] is None
    sends = d.sends_reading("green", T)
    assert sends["gate"] == "sends" and sends["value"] == 0 and sends["ok"] is False
    assert "insufficient data" in core.breach_message(sends)
    put_ours(cw, 1040.0, sends=19, errors=0, p95=5)
    assert d.sends_reading("green", T)["ok"] is False  # 19 < 20
    put_ours(cw, 1080.0, sends=1, errors=0, p95=5)
    assert d.sends_reading("green", T)["value"] == 20


def test_elb_5xx_of_the_load_balancer_counts_with_the_target_groups() -> None:
    cw = FakeCloudWatch()
    d, clock = driver(cw)
    d.start_bake(1079.0)
    d.mark_applied(1080.0)  # 18:00 - the minute stamped 1080 starts with the step
    cw.put("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", LB_DIM, "Sum", 1020.0, 50)  # before
    cw.put("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", LB_DIM, "Sum", 1080.0, 3)
    clock[0] = 1150.0
    readings = by_gate(d.bake_readings("green", T))
    alb = readings["alb_5xx"]
    assert alb["value"] == 3 and alb["ok"] is False and alb["source"] == "cloudwatch"
    assert "0 target 5xx + 3 ELB 5xx" in alb["detail"]
    cw.put("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", TG_DIM, "Sum", 1140.0, 2)
    assert by_gate(d.bake_readings("green", T))["alb_5xx"]["value"] == 5
    call = cw.calls[-1]
    assert call["StartTime"] == ts(1080.0)
    q = {x["Id"]: x["MetricStat"] for x in call["MetricDataQueries"]}
    assert q["elb5xx"]["Metric"]["Dimensions"] == LB_DIM  # LoadBalancer only
    assert q["target5xx"]["Metric"]["Dimensions"] == TG_DIM
    assert q["elb5xx"]["Period"] == 60


def test_no_alb_5xx_datapoint_is_zero() -> None:
    # ALB reports 5xx counts only when they are non-zero
    d, clock = driver(FakeCloudWatch())
    d.start_bake(1000.0)
    d.mark_applied(1000.0)
    clock[0] = 1200.0
    alb = by_gate(d.bake_readings("green", T))["alb_5xx"]
    assert alb["value"] == 0 and alb["ok"] is True


def test_weights_live_in_the_listener_rule_forwarding_to_both_groups() -> None:
    rule: dict[str, Any] = {
        "RuleArn": "rule/origin", "Priority": "1", "IsDefault": False,
        "Conditions": [{"Field": "http-header", "HttpHeaderConfig": {
            "HttpHeaderName": "X-Origin-Secret", "Values": ["s"]}}],
        "Actions": [{"Type": "forward", "Order": 1, "ForwardConfig": {
            "TargetGroups": [{"TargetGroupArn": BLUE, "Weight": 70},
                             {"TargetGroupArn": GREEN, "Weight": 30}],
            "TargetGroupStickinessConfig": {"Enabled": False}}}]}
    lb = FakeELBv2(rules=[rule])
    lb.default = [{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "403"}}]
    d, _ = driver(FakeCloudWatch(), lb)
    assert d.read_weights() == {"blue": 70, "green": 30}
    d.apply_weights({"blue": 50, "green": 50})
    assert lb.modified == [("rule", "rule/origin")]
    assert d.read_weights() == {"blue": 50, "green": 50}
    action = rule["Actions"][0]
    assert action["ForwardConfig"]["TargetGroupStickinessConfig"] == {"Enabled": False}
    assert action["Order"] == 1
    assert lb.default[0]["Type"] == "fixed-response"  # the 403 default is left alone


def test_without_such_a_rule_the_default_action_carries_the_weights() -> None:
    lb = FakeELBv2()
    d, _ = driver(FakeCloudWatch(), lb)
    assert d.read_weights() == {"blue": 90, "green": 10}
    d.apply_weights({"blue": 100, "green": 0})
    assert lb.modified == [("listener", LISTENER)]
    assert d.read_weights() == {"blue": 100, "green": 0}
