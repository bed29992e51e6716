"""The gating core of traffic_shift: pure functions, called directly."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
from ansible_collections.canarychat.platform.plugins.module_utils import (
    haproxy_runtime as runtime,
)
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift import (
    core,
    elbv2,
    haproxy,
)

T = core.Thresholds(min_healthy=1, max_error_rate=0.05, max_p95_ms=500)


def metrics(sends_ok: float, sends_err: float, http: Mapping[str, float],
            buckets: Mapping[str, float]) -> str:
    """A /metrics page shaped like the chat's (docs/architecture.md)."""
    lines = [
        "# HELP chat_sends_total send frames answered",
        "# TYPE chat_sends_total counter",
        f'chat_sends_total{{color="green",version="v2",outcome="ok"}} {sends_ok}',
        f'chat_sends_total{{color="green",version="v2",outcome="error"}} {sends_err}',
        "# TYPE chat_http_requests_total counter",
    ]
    lines += [f'chat_http_requests_total{{color="green",version="v2",status="{s}"}} {n}'
              for s, n in http.items()]
    lines.append("# TYPE chat_ack_latency_seconds histogram")
    lines += [f'chat_ack_latency_seconds_bucket{{color="green",version="v2",le="{le}"}} {n}'
              for le, n in buckets.items()]
    lines += ['chat_ack_latency_seconds_count{color="green",version="v2"} 0',
              'chat_connections{color="green",version="v2"} 3']
    return "\n".join(lines) + "\n"


def counters(text: str) -> dict:
    return core.chat_counters(core.parse_prometheus(text))


# ------------------------------------------------------------------ Prometheus parsing

def test_parse_prometheus_reads_labels_values_and_skips_comments() -> None:
    samples = core.parse_prometheus(
        '# HELP x y\nchat_errors_total{code="bad \\"frame\\"",color="blue"} 7 1764270000000\n'
        "chat_draining 0\n\nnot a sample line\n")
    assert samples == [("chat_errors_total", {"code": 'bad "frame"', "color": "blue"}, 7.0),
                       ("chat_draining", {}, 0.0)]


def test_chat_counters_sum_the_series_the_gate_needs() -> None:
    c = counters(metrics(90, 10, {"2xx": 50, "4xx": 5, "5xx": 2},
                         {"0.01": 80, "0.1": 95, "+Inf": 100}))
    assert c["sends_total"] == 100 and c["sends_error"] == 10
    assert c["http_total"] == 57 and c["http_5xx"] == 2
    assert c["ack_buckets"] == {0.01: 80, 0.1: 95, math.inf: 100}


# ------------------------------------------------------------------ error rate from deltas

def test_error_rate_is_errors_over_all_sends_and_requests_between_scrapes() -> None:
    before = counters(metrics(1000, 5, {"2xx": 100, "5xx": 1}, {"+Inf": 0}))
    after = counters(metrics(1090, 15, {"2xx": 190, "5xx": 11}, {"+Inf": 0}))
    # errors: 10 sends + 10 5xx = 20; all: 100 sends + 100 requests = 200
    assert core.error_rate(before, after) == pytest.approx(0.1)


def test_error_rate_ignores_history_before_the_step() -> None:
    """A color that failed a lot before the step but is clean now passes."""
    before = counters(metrics(0, 500, {"5xx": 500}, {"+Inf": 0}))
    after = counters(metrics(100, 500, {"5xx": 500, "2xx": 100}, {"+Inf": 0}))
    assert core.error_rate(before, after) == 0.0


def test_error_rate_without_traffic_is_no_reading() -> None:
    same = counters(metrics(10, 1, {"2xx": 3}, {"+Inf": 0}))
    assert core.error_rate(same, same) is None


def test_counter_reset_counts_the_new_value_as_the_increase() -> None:
    """The chat restarted during the bake: its counters started again from zero."""
    before = counters(metrics(1000, 0, {"2xx": 1000}, {"+Inf": 0}))
    after = counters(metrics(8, 2, {"2xx": 10}, {"+Inf": 0}))
    assert core.error_rate(before, after) == pytest.approx(2 / 20)


# ------------------------------------------------------------------ p95 from bucket deltas

def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}
    # rank 95 lies in (0.1, 0.2] holding 50 observations: 0.1 + 0.1 * 45/50
    assert core.histogram_quantile(0.95, buckets) == pytest.approx(0.19)


def test_histogram_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert core.histogram_quantile(0.95, {0.5: 10.0, math.inf: 100.0}) == 0.5


def test_histogram_quantile_of_an_empty_histogram_is_none() -> None:
    assert core.histogram_quantile(0.95, {0.1: 0.0, math.inf: 0.0}) is None


def test_p95_uses_only_the_observations_made_during_the_step() -> None:
    """Before the step 1000 slow acks (>1 s); during it 100 fast ones (<=10 ms)."""
    b = {"0.01": 0, "0.1": 0, "1": 0, "+Inf": 1000}
    a = {"0.01": 100, "0.1": 100, "1": 100, "+Inf": 1100}
    before = counters(metrics(0, 0, {}, b))
    after = counters(metrics(100, 0, {}, a))
    assert core.p95_ms(before, after) == pytest.approx(9.5)


def test_p95_without_acks_is_no_reading() -> None:
    same = counters(metrics(0, 0, {}, {"0.1": 4, "+Inf": 4}))
    assert core.p95_ms(same, same) is None


# ------------------------------------------------------------------ gate evaluation

def test_gate_verdicts_pass_breach_and_no_data() -> None:
    assert core.judge(core.GATE_ERROR_RATE, 0.05, T) is True
    assert core.judge(core.GATE_ERROR_RATE, 0.051, T) is False
    assert core.judge(core.GATE_P95, 501.0, T) is False
    assert core.judge(core.GATE_HEALTHY, 0, T) is False
    assert core.judge(core.GATE_HEALTHY, 1, T) is True
    assert core.judge(core.GATE_ALARM, "ALARM", T) is False
    assert core.judge(core.GATE_ALARM, "INSUFFICIENT_DATA", T) is True
    for gate in (core.GATE_ERROR_RATE, core.GATE_P95, core.GATE_HEALTHY, core.GATE_ALARM):
        assert core.judge(gate, None, T) is None


def test_first_breach_skips_passes_and_no_data() -> None:
    readings = [
        core.make_reading(core.GATE_P95, "cloudwatch", "green", None, T, 1.0),
        core.make_reading(core.GATE_HEALTHY, "elbv2", "green", 2, T, 1.0),
        core.make_reading(core.GATE_ERROR_RATE, "cloudwatch", "green", 0.3, T, 1.0),
    ]
    assert readings[0]["ok"] is None
    assert core.first_breach(readings) is readings[2]
    assert core.first_breach(readings[:2]) is None


def test_breach_message_names_gate_threshold_and_measured_value() -> None:
    r = core.make_reading(core.GATE_ERROR_RATE, "metrics", "green", 0.3, T, 1.0)
    assert core.breach_message(r) == (
        "gate error_rate breached on green (source metrics): measured 0.3 > threshold 0.05")
    r = core.make_reading(core.GATE_HEALTHY, "haproxy", "green", 0, T, 1.0)
    assert core.breach_message(r) == (
        "gate healthy breached on green (source haproxy): measured 0 < threshold 1")
    r = core.make_reading(core.GATE_ALARM, "cloudwatch", "green", "ALARM", T, 1.0,
                          name="green-5xx")
    assert core.breach_message(r) == ("gate alarm green-5xx breached on green "
                                      "(source cloudwatch): state ALARM, threshold not ALARM")


def test_weights_gaining_and_watched_colors() -> None:
    assert core.weights_for(10) == {"blue": 90, "green": 10}
    with pytest.raises(ValueError):
        core.weights_for(101)
    assert core.gaining_color({"blue": 90, "green": 10}, {"blue": 50, "green": 50}) == "green"
    assert core.gaining_color({"blue": 50, "green": 50}, {"blue": 100, "green": 0}) == "blue"
    assert core.watched_color({"blue": 100, "green": 0}) == "blue"
    assert core.watched_color({"blue": 50, "green": 50}) == "green"


# ------------------------------------------------------------------ HAProxy show stat

SHOW_STAT = (
    "# pxname,svname,qcur,status,weight,check_status,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,"
    "hrsp_5xx,hrsp_other,-,\n"
    "fe,FRONTEND,,OPEN,,,0,10,0,0,0,0,,\n"
    "chat,blue,0,UP,90,L7OK,0,80,0,5,1,0,,\n"
    "chat,green,0,DOWN,10,L4CON,1,17,0,0,3,0,,\n"
    "chat,BACKEND,0,UP,100,,1,97,0,5,4,0,,\n\n"
)


def test_parse_show_stat_rows_by_backend_and_server() -> None:
    rows = runtime.parse_show_stat(SHOW_STAT)
    assert len(rows) == 4
    green = runtime.stat_row(rows, "chat", "green")
    assert green is not None and green["status"] == "DOWN" and green["check_status"] == "L4CON"
    assert runtime.stat_row(rows, "chat", "nope") is None
    assert "-" not in green


def test_parse_show_stat_rejects_other_answers() -> None:
    with pytest.raises(ValueError):
        runtime.parse_show_stat("Unknown command.\n")


def test_server_health_from_status() -> None:
    for status, healthy in [("UP", True), ("UP 1/3", True), ("no check", True),
                            ("DOWN", False), ("DOWN 1/2", False), ("MAINT", False),
                            ("DRAIN", False), ("NOLB", False)]:
        assert haproxy.server_is_healthy({"status": status}) is healthy, status


def test_haproxy_5xx_rate_from_counter_deltas() -> None:
    rows = runtime.parse_show_stat(SHOW_STAT)
    before = runtime.stat_row(rows, "chat", "green")
    assert before is not None
    after = dict(before, hrsp_2xx="35", hrsp_5xx="5")  # +18 2xx, +2 5xx
    assert haproxy.haproxy_5xx_rate(before, after) == pytest.approx(0.1)
    assert haproxy.haproxy_5xx_rate(before, before) is None


def test_haproxy_5xx_rate_ignores_client_faults() -> None:
    rows = runtime.parse_show_stat(SHOW_STAT)
    before = runtime.stat_row(rows, "chat", "green")
    assert before is not None
    four = int(before.get("hrsp_4xx") or 0)
    # +18 2xx, +2 5xx and +500 4xx (junk from the audience): still 2 of 20
    after = dict(before, hrsp_2xx="35", hrsp_5xx="5", hrsp_4xx=str(four + 500))
    assert haproxy.haproxy_5xx_rate(before, after) == pytest.approx(0.1)
    only_junk = dict(before, hrsp_4xx=str(four + 500))
    assert haproxy.haproxy_5xx_rate(before, only_junk) is None


def test_parse_get_weight() -> None:
    assert runtime.parse_get_weight("10 (initial 90)\n") == 10
    with pytest.raises(ValueError):
        runtime.parse_get_weight("No such server.\n")


# ------------------------------------------------------------------ ELBv2 listener actions

BLUE = "arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:targetgroup/chat-blue/aaa"
GREEN = "arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:targetgroup/chat-green/bbb"
OTHER = "arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:targetgroup/other/ccc"
LISTENER = ("arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:"
            "listener/app/canary-chat/50dc6c495c0c9188/f2f7dc8efc522ab2")


def weighted_actions() -> list[dict]:
    return [{
        "Type": "forward",
        "Order": 1,
        "ForwardConfig": {
            "TargetGroups": [{"TargetGroupArn": BLUE, "Weight": 90},
                             {"TargetGroupArn": GREEN, "Weight": 10},
                             {"TargetGroupArn": OTHER, "Weight": 0}],
            "TargetGroupStickinessConfig": {"Enabled": True, "DurationSeconds": 300},
        },
    }]


def test_rewrite_changes_only_the_two_weights() -> None:
    actions = weighted_actions()
    new = elbv2.rewrite_forward_weights(actions, {BLUE: 50, GREEN: 50})
    assert new == [{
        "Type": "forward",
        "Order": 1,
        "ForwardConfig": {
            "TargetGroups": [{"TargetGroupArn": BLUE, "Weight": 50},
                             {"TargetGroupArn": GREEN, "Weight": 50},
                             {"TargetGroupArn": OTHER, "Weight": 0}],
            "TargetGroupStickinessConfig": {"Enabled": True, "DurationSeconds": 300},
        },
    }]
    assert actions == weighted_actions(), "the input is not modified"


def test_rewrite_of_a_plain_forward_becomes_a_weighted_forward_config() -> None:
    actions = [{"Type": "forward", "TargetGroupArn": BLUE, "Order": 1}]
    new = elbv2.rewrite_forward_weights(actions, {BLUE: 90, GREEN: 10})
    assert new == [{"Type": "forward", "Order": 1, "ForwardConfig": {"TargetGroups": [
        {"TargetGroupArn": BLUE, "Weight": 90}, {"TargetGroupArn": GREEN, "Weight": 10}]}}]
    assert elbv2.forward_weights(actions, {"blue": BLUE, "green": GREEN}) == {"blue": 100,
                                                                              "green": 0}


def test_rewrite_keeps_the_other_default_actions() -> None:
    auth = {"Type": "authenticate-oidc", "Order": 1, "AuthenticateOidcConfig": {"Issuer": "x"}}
    actions = [auth, dict(weighted_actions()[0], Order=2)]
    new = elbv2.rewrite_forward_weights(actions, {BLUE: 0, GREEN: 100})
    assert new[0] == auth
    assert elbv2.forward_weights(new, {"blue": BLUE, "green": GREEN}) == {"blue": 0,
                                                                          "green": 100}


def test_rewrite_without_a_forward_action_is_refused() -> None:
    with pytest.raises(ValueError):
        elbv2.rewrite_forward_weights([{"Type": "fixed-response"}], {BLUE: 1})


def test_cloudwatch_dimensions_come_from_the_arns() -> None:
    assert elbv2.target_group_dimension(GREEN) == "targetgroup/chat-green/bbb"
    assert elbv2.load_balancer_dimension(LISTENER) == "app/canary-chat/50dc6c495c0c9188"
    lb = "arn:aws:elasticloadbalancing:ap-northeast-2:1:loadbalancer/app/canary-chat/50dc"
    assert elbv2.load_balancer_dimension(lb) == "app/canary-chat/50dc"
    with pytest.raises(ValueError):
        elbv2.load_balancer_dimension(GREEN)


def test_cloudwatch_no_data_is_no_reading_not_zero() -> None:
    assert elbv2.metric_sum([]) is None
    assert elbv2.share(None, None) is None
    assert elbv2.share(3.0, 0.0) is None
    assert elbv2.share(None, 100.0) == 0.0
    assert elbv2.share(30.0, 100.0) == 0.3
    assert elbv2.worst([]) is None
    assert elbv2.worst([0.2, 0.9, 0.1]) == 0.9


def test_period_start_rounds_down_like_cloudwatch() -> None:
    # GetMetricData rounds StartTime down (to the minute; to the 10-second division for a
    # period of 10) and stamps each datapoint with the start of its period.
    assert elbv2.period_start(1030.0, 60) == 1020.0
    assert elbv2.period_start(1033.5, 10) == 1030.0
    assert elbv2.period_start(1020.0, 60) == 1020.0


def test_windows_start_at_apply_time_never_the_period_before() -> None:
    applied = 1033.5  # inside the period stamped 1030, which began before the weights moved
    values, stamps = elbv2.since_apply([1040.0, 1030.0, 1050.0, 1020.0],
                                      [2.0, 99.0, 3.0, 50.0], applied)
    assert stamps == [1040.0, 1050.0] and values == [2.0, 3.0]
    # a period starting exactly at the apply time counts
    assert elbv2.since_apply([1030.0], [7.0], 1030.0) == ([7.0], [1030.0])
    assert elbv2.since_apply([], [], applied) == ([], [])
    assert elbv2.since_apply([1040.0], [None], applied) == ([], [])


def test_sends_gate_no_data_is_a_breach_named_insufficient_data() -> None:
    t = core.Thresholds(min_sends=20)
    assert core.judge(core.GATE_SENDS, 20, t) is True
    assert core.judge(core.GATE_SENDS, 19, t) is False
    assert core.judge(core.GATE_SENDS, 0, t) is False
    assert core.judge(core.GATE_SENDS, None, t) is False  # no data is not a pass
    r = core.make_reading(core.GATE_SENDS, "canarychat", "green", 3, t, 1.0)
    assert r["ok"] is False and r["threshold"] == 20
    assert core.breach_message(r) == (
        "gate sends breached on green (source canarychat): insufficient data: measured 3 < "
        "threshold 20 sends during the bake")


def test_alb_5xx_gate_is_a_count() -> None:
    t = core.Thresholds(max_alb_5xx=0)
    assert core.judge(core.GATE_ALB_5XX, 0, t) is True
    assert core.judge(core.GATE_ALB_5XX, 1, t) is False
    assert core.judge(core.GATE_ALB_5XX, 3, core.Thresholds(max_alb_5xx=3)) is True
    r = core.make_reading(core.GATE_ALB_5XX, "cloudwatch", "green", 4, t, 1.0)
    assert core.breach_message(r) == (
        "gate alb_5xx breached on green (source cloudwatch): measured 4 > threshold 0")


def test_breach_weights_blue_or_previous() -> None:
    before = {"blue": 50, "green": 50}
    assert core.breach_weights(before, "blue") == {"blue": 100, "green": 0}
    assert core.breach_weights(before, "previous") == before
    with pytest.raises(ValueError):
        core.breach_weights(before, "green")


def test_bake_watches_the_gaining_color() -> None:
    assert core.bake_color({"blue": 90, "green": 10}, {"blue": 50, "green": 50}) == "green"
    assert core.bake_color({"blue": 50, "green": 50}, {"blue": 90, "green": 10}) == "blue"
    assert core.bake_color({"blue": 50, "green": 50}, {"blue": 50, "green": 50}) == "green"


def rule(arn: str, priority: str, groups: list[str], default: bool = False) -> dict:
    return {"RuleArn": arn, "Priority": priority, "IsDefault": default, "Actions": [{
        "Type": "forward", "Order": 1,
        "ForwardConfig": {"TargetGroups": [{"TargetGroupArn": g, "Weight": 1}
                                           for g in groups]}}]}


def test_weighted_rule_is_the_rule_forwarding_to_both_target_groups() -> None:
    arns = {"blue": BLUE, "green": GREEN}
    fixed_403 = {"RuleArn": "r-default", "Priority": "default", "IsDefault": True,
                 "Actions": [{"Type": "fixed-response", "FixedResponseConfig": {
                     "StatusCode": "403"}}]}
    only_blue = rule("r-blue", "5", [BLUE])
    both = rule("r-both", "10", [BLUE, GREEN])
    also_both = rule("r-later", "20", [GREEN, BLUE, OTHER])
    assert elbv2.weighted_rule([fixed_403, also_both, only_blue, both], arns)["RuleArn"] == \
        "r-both"
    # no rule forwards to both: the weights are in the default action
    assert elbv2.weighted_rule([fixed_403, only_blue], arns) is None
    assert elbv2.weighted_rule([rule("r-def", "default", [BLUE, GREEN], default=True)],
                              arns) is None
