"""traffic_shift's elbv2 driver against a moto server (no AWS), run as Ansible runs it.

Each test builds its own VPC, ALB, blue/green target groups (IP targets registered, which
moto reports healthy) and a listener forwarding 90/10 with stickiness, then runs
`ansible localhost -m canarychat.platform.traffic_shift` with endpoint_url pointing at the
emulator (moto with our patches: roles/data/files/moto_patches/, whose
cloudwatch_percentiles answers the p95 statistic).

A chat's metrics are put while the module bakes by `publishing` (a thread standing in for
the chat's publisher: namespace CanaryChat, dimension Color, Sends/SendErrors counts and
AckLatency Values/Counts, each stamped "now"), at a 1 s period (chat_period=1) to keep the
tests short; the chat itself publishes every 10 s. ALB metrics are put with the dimensions
ALB publishes (TargetGroup + LoadBalancer per target group, LoadBalancer alone for the
load balancer's own 5xx).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.conftest import REPO, VENV_BIN, Service
from tests.integration.test_traffic_shift_haproxy import FakeChat, run_module, serve

pytestmark = [pytest.mark.integration, pytest.mark.aws]

REGION = "ap-northeast-2"


@dataclass
class Alb:
    elbv2: Any
    cloudwatch: Any
    endpoint: str
    name: str
    lb_arn: str
    listener_arn: str
    blue_arn: str
    green_arn: str
    blue_name: str
    green_name: str

    def weights(self, actions: list[dict[str, Any]] | None = None) -> dict[str, int]:
        action = (actions or self.default_actions())[0]
        tgs = {t["TargetGroupArn"]: t["Weight"] for t in action["ForwardConfig"]["TargetGroups"]}
        return {"blue": tgs[self.blue_arn], "green": tgs[self.green_arn]}

    def default_actions(self) -> list[dict[str, Any]]:
        listener = self.elbv2.describe_listeners(ListenerArns=[self.listener_arn])["Listeners"][0]
        return listener["DefaultActions"]

    def dimensions(self, tg_arn: str) -> list[dict[str, str]]:
        return [{"Name": "TargetGroup", "Value": tg_arn.split(":", 5)[5]},
                {"Name": "LoadBalancer", "Value": "/".join(
                    self.lb_arn.split(":", 5)[5].split("/")[1:4])}]

    def lb_dimension(self) -> list[dict[str, str]]:
        return [{"Name": "LoadBalancer", "Value": "/".join(
            self.lb_arn.split(":", 5)[5].split("/")[1:4])}]

    def args(self, weight: int, **extra: Any) -> dict[str, Any]:
        return {"driver": "elbv2", "weight": weight, "region": REGION,
                "endpoint_url": self.endpoint, "listener_arn": self.listener_arn,
                "blue_target_group_arn": self.blue_arn, "green_target_group_arn": self.green_arn,
                "chat_period": 1, **extra}


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@contextmanager
def publishing(cloudwatch: Any, color: str, sends: int = 10, errors: int = 0,
               latency_ms: float = 5.0, every: float = 0.25) -> Iterator[None]:
    """Stands in for a chat of `color` publishing its CanaryChat metrics while the block
    runs: every `every` s, `sends` sends of which `errors` failed, acked in latency_ms."""
    stop = threading.Event()
    dims = [{"Name": "Color", "Value": color}]

    def run() -> None:
        while not stop.is_set():
            t = now_utc()
            cloudwatch.put_metric_data(Namespace="CanaryChat", MetricData=[
                {"MetricName": "Sends", "Dimensions": dims, "Timestamp": t,
                 "Value": float(sends), "Unit": "Count", "StorageResolution": 1},
                {"MetricName": "SendErrors", "Dimensions": dims, "Timestamp": t,
                 "Value": float(errors), "Unit": "Count", "StorageResolution": 1},
                {"MetricName": "AckLatency", "Dimensions": dims, "Timestamp": t,
                 "Values": [latency_ms], "Counts": [float(max(sends - errors, 1))],
                 "Unit": "Milliseconds", "StorageResolution": 1},
            ])
            stop.wait(every)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def clients(endpoint: str) -> tuple[Any, Any, Any]:
    kw = {"region_name": REGION, "endpoint_url": endpoint}
    return boto3.client("ec2", **kw), boto3.client("elbv2", **kw), boto3.client("cloudwatch",
                                                                                **kw)


@pytest.fixture
def alb(moto_server: Service) -> Alb:
    ec2, elbv2, cloudwatch = clients(moto_server.url)
    tag = uuid.uuid4().hex[:8]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24",
                                 AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
               for i, az in ((1, "a"), (2, "c"))]
    name = f"chat-{tag}"
    lb_arn = elbv2.create_load_balancer(Name=name, Subnets=subnets, Scheme="internet-facing",
                                        Type="application")["LoadBalancers"][0][
        "LoadBalancerArn"]
    arns = {}
    for color, ip in (("blue", "10.0.1.10"), ("green", "10.0.2.10")):
        arn = elbv2.create_target_group(
            Name=f"{color}-{tag}", Protocol="HTTP", Port=8080, VpcId=vpc, TargetType="ip",
            HealthCheckPath="/readyz")["TargetGroups"][0]["TargetGroupArn"]
        elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": ip, "Port": 8080}])
        arns[color] = arn
    listener_arn = elbv2.create_listener(
        LoadBalancerArn=lb_arn, Protocol="HTTP", Port=80,
        DefaultActions=[{"Type": "forward", "ForwardConfig": {
            "TargetGroups": [{"TargetGroupArn": arns["blue"], "Weight": 90},
                             {"TargetGroupArn": arns["green"], "Weight": 10}],
            "TargetGroupStickinessConfig": {"Enabled": True, "DurationSeconds": 120}}}],
    )["Listeners"][0]["ListenerArn"]
    return Alb(elbv2, cloudwatch, moto_server.url, name, lb_arn, listener_arn, arns["blue"],
               arns["green"], f"blue-{tag}", f"green-{tag}")


def test_shift_to_50_reads_back_and_keeps_the_rest_of_the_action(alb: Alb) -> None:
    before = alb.default_actions()
    with publishing(alb.cloudwatch, "green"):
        res = run_module(alb.args(50, bake_seconds=3, poll_interval=0.5))
    assert not res.get("failed"), res
    assert res["changed"] is True
    assert res["weights_before"] == {"blue": 90, "green": 10}
    assert res["weights_after"] == {"blue": 50, "green": 50}
    assert alb.weights() == {"blue": 50, "green": 50}
    after = alb.default_actions()
    for tg in before[0]["ForwardConfig"]["TargetGroups"]:
        tg["Weight"] = 50
    assert after == before, "only the two weights changed"
    assert after[0]["ForwardConfig"]["TargetGroupStickinessConfig"] == {
        "Enabled": True, "DurationSeconds": 120}
    healthy = [g for g in res["gates"] if g["gate"] == "healthy"]
    assert healthy and all(g["value"] == 1 and g["source"] == "elbv2" for g in healthy)
    ours = [g for g in res["gates"] if g["source"] == "canarychat"]
    last = {g["gate"]: g for g in ours}
    assert set(last) == {"error_rate", "p95_ms", "sends"}
    assert last["error_rate"]["value"] == 0.0 and last["error_rate"]["ok"] is True
    assert last["p95_ms"]["value"] == 5.0 and last["p95_ms"]["ok"] is True
    assert last["sends"]["value"] >= 20 and last["sends"]["ok"] is True
    alb5xx = [g for g in res["gates"] if g["gate"] == "alb_5xx"]
    assert alb5xx and all(g["value"] == 0 and g["ok"] is True for g in alb5xx)


def test_green_send_errors_trip_the_error_rate_and_send_everyone_to_blue(alb: Alb) -> None:
    with publishing(alb.cloudwatch, "green", sends=10, errors=3):
        res = run_module(alb.args(50, bake_seconds=30, poll_interval=0.5))
    assert res.get("failed") is True
    assert "gate error_rate breached on green (source canarychat)" in res["msg"]
    assert "measured 0.3 > threshold 0.05" in res["msg"]
    assert "everyone sent to blue (blue 100 / green 0)" in res["msg"]
    assert res["rolled_back"] is True
    assert res["weights_after"] == {"blue": 100, "green": 0}
    assert alb.weights() == {"blue": 100, "green": 0}
    assert " SendErrors of " in res["breach"]["detail"]


def test_errors_from_before_the_step_do_not_count(alb: Alb) -> None:
    """A minute of failing sends stamped before the step: the gate reads only datapoints
    whose period starts at or after the moment the weights were applied."""
    dims = [{"Name": "Color", "Value": "green"}]
    t = now_utc() - datetime.timedelta(seconds=2)
    alb.cloudwatch.put_metric_data(Namespace="CanaryChat", MetricData=[
        {"MetricName": "Sends", "Dimensions": dims, "Timestamp": t, "Value": 100.0},
        {"MetricName": "SendErrors", "Dimensions": dims, "Timestamp": t, "Value": 100.0}])
    with publishing(alb.cloudwatch, "green"):
        res = run_module(alb.args(50, bake_seconds=3, poll_interval=0.5))
    assert not res.get("failed"), res
    assert alb.weights() == {"blue": 50, "green": 50}


def test_slow_acks_trip_the_p95_gate(alb: Alb) -> None:
    with publishing(alb.cloudwatch, "green", latency_ms=900.0):
        res = run_module(alb.args(50, bake_seconds=30, poll_interval=0.5))
    assert res.get("failed") is True
    assert "gate p95_ms breached on green (source canarychat)" in res["msg"]
    assert "measured 900 > threshold 500" in res["msg"]
    assert alb.weights() == {"blue": 100, "green": 0}


def test_a_green_nobody_uses_fails_with_insufficient_data_unless_allow_idle(alb: Alb) -> None:
    res = run_module(alb.args(50, bake_seconds=2, poll_interval=0.5))
    assert res.get("failed") is True
    assert res["msg"].startswith(
        "gate sends breached on green (source canarychat): insufficient data: measured 0 < "
        "threshold 20 sends during the bake")
    assert res["breach"]["gate"] == "sends"
    assert alb.weights() == {"blue": 100, "green": 0}

    res = run_module(alb.args(50, bake_seconds=2, poll_interval=0.5, allow_idle=True))
    assert not res.get("failed"), res
    assert alb.weights() == {"blue": 50, "green": 50}
    sends = res["gates"][-1]
    assert sends["gate"] == "sends" and sends["value"] == 0 and sends["ok"] is None
    # with no data the rate and the percentile are readings without a value
    for g in res["gates"]:
        if g["gate"] in ("error_rate", "p95_ms"):
            assert g["value"] is None and g["ok"] is None


def test_elb_5xx_of_the_load_balancer_trip_the_step(alb: Alb) -> None:
    """ALB's own 502s (a crashing green) are only in HTTPCode_ELB_5XX_Count with the
    LoadBalancer dimension, per minute: put at the start of the next minute, read once the
    bake reaches it."""
    now = time.time()
    if now % 60 > 45:  # leave the step time to apply before the minute the 5xx are in
        time.sleep(61 - now % 60)
        now = time.time()
    minute = now - now % 60 + 60
    alb.cloudwatch.put_metric_data(Namespace="AWS/ApplicationELB", MetricData=[
        {"MetricName": "HTTPCode_ELB_5XX_Count", "Dimensions": alb.lb_dimension(),
         "Timestamp": datetime.datetime.fromtimestamp(minute, datetime.UTC), "Value": 7.0,
         "Unit": "Count"}])
    with publishing(alb.cloudwatch, "green"):
        res = run_module(alb.args(50, bake_seconds=90, poll_interval=1))
    assert res.get("failed") is True
    assert "gate alb_5xx breached on green (source cloudwatch)" in res["msg"]
    assert "measured 7 > threshold 0" in res["msg"]
    assert "0 target 5xx + 7 ELB 5xx" in res["breach"]["detail"]
    assert alb.weights() == {"blue": 100, "green": 0}


def test_on_breach_previous_restores_the_previous_weights(alb: Alb) -> None:
    with publishing(alb.cloudwatch, "green", sends=10, errors=3):
        res = run_module(alb.args(50, bake_seconds=30, poll_interval=0.5,
                                  on_breach="previous"))
    assert res.get("failed") is True
    assert "previous weights restored (blue 90 / green 10)" in res["msg"]
    assert alb.weights() == {"blue": 90, "green": 10}


def test_weights_in_a_listener_rule_are_found_and_moved_there(alb: Alb) -> None:
    """The listener answers 403 by default and forwards, weighted, only in a rule matching
    a secret origin header: the step moves the rule's weights and leaves the rest alone."""
    fixed = [{"Type": "fixed-response", "FixedResponseConfig": {
        "StatusCode": "403", "ContentType": "text/plain", "MessageBody": "forbidden"}}]
    alb.elbv2.modify_listener(ListenerArn=alb.listener_arn, DefaultActions=fixed)
    conditions = [{"Field": "http-header", "HttpHeaderConfig": {
        "HttpHeaderName": "X-Origin-Verify", "Values": ["s3cret"]}}]
    rule_arn = alb.elbv2.create_rule(
        ListenerArn=alb.listener_arn, Priority=10, Conditions=conditions,
        Actions=[{"Type": "forward", "ForwardConfig": {
            "TargetGroups": [{"TargetGroupArn": alb.blue_arn, "Weight": 90},
                             {"TargetGroupArn": alb.green_arn, "Weight": 10}],
            "TargetGroupStickinessConfig": {"Enabled": True, "DurationSeconds": 120}}}],
    )["Rules"][0]["RuleArn"]

    def rule() -> dict[str, Any]:
        return alb.elbv2.describe_rules(RuleArns=[rule_arn])["Rules"][0]

    with publishing(alb.cloudwatch, "green"):
        res = run_module(alb.args(50, bake_seconds=2, poll_interval=0.5))
    assert not res.get("failed"), res
    assert res["weights_before"] == {"blue": 90, "green": 10}
    assert alb.weights(rule()["Actions"]) == {"blue": 50, "green": 50}
    assert rule()["Conditions"] == conditions
    assert rule()["Actions"][0]["ForwardConfig"]["TargetGroupStickinessConfig"] == {
        "Enabled": True, "DurationSeconds": 120}
    assert alb.default_actions()[0]["Type"] == "fixed-response"

    res = run_module(alb.args(0, rollback=True))
    assert not res.get("failed"), res
    assert alb.weights(rule()["Actions"]) == {"blue": 100, "green": 0}


def test_alarm_in_alarm_state_refuses_the_step(alb: Alb) -> None:
    alarm = f"{alb.name}-green-5xx"
    alb.cloudwatch.put_metric_alarm(
        AlarmName=alarm, Namespace="AWS/ApplicationELB", MetricName="HTTPCode_Target_5XX_Count",
        Dimensions=alb.dimensions(alb.green_arn), Statistic="Sum", Period=60,
        EvaluationPeriods=1, Threshold=5, ComparisonOperator="GreaterThanThreshold")
    alb.cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM",
                                   StateReason="test: green is failing")
    res = run_module(alb.args(50, alarm_names=[alarm], bake_seconds=10, poll_interval=0.5))
    assert res.get("failed") is True
    assert f"gate alarm {alarm} breached on green" in res["msg"]
    assert "state ALARM" in res["msg"]
    assert alb.weights() == {"blue": 100, "green": 0}

    alb.cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="OK", StateReason="test: fine")
    res = run_module(alb.args(50, alarm_names=[alarm], allow_idle=True))
    assert not res.get("failed"), res
    assert alb.weights() == {"blue": 50, "green": 50}
    assert [g["value"] for g in res["gates"] if g["gate"] == "alarm"] == ["OK"]


def test_a_missing_alarm_is_a_configuration_error(alb: Alb) -> None:
    res = run_module(alb.args(50, alarm_names=["no-such-alarm"]))
    assert res.get("failed") is True
    assert "alarm(s) not found: no-such-alarm" in res["msg"]
    assert alb.weights() == {"blue": 90, "green": 10}


def test_check_mode_changes_nothing(alb: Alb) -> None:
    res = run_module(alb.args(50), "--check", "--diff")
    assert not res.get("failed"), res
    assert res["changed"] is True
    assert res["diff"]["after"] == {"weights": {"blue": 50, "green": 50}}
    assert alb.weights() == {"blue": 90, "green": 10}


def test_precheck_refuses_a_green_without_healthy_targets(alb: Alb) -> None:
    alb.elbv2.deregister_targets(TargetGroupArn=alb.green_arn,
                                 Targets=[{"Id": "10.0.2.10", "Port": 8080}])
    res = run_module(alb.args(50))
    assert res.get("failed") is True
    assert res["msg"].startswith("pre-check refused the step: gate healthy breached on green "
                                 "(source elbv2): measured 0 < threshold 1")
    assert alb.weights() == {"blue": 90, "green": 10}


def test_rollback_ignores_alarms_and_metrics(alb: Alb) -> None:
    alarm = f"{alb.name}-green-p95"
    alb.cloudwatch.put_metric_alarm(
        AlarmName=alarm, Namespace="AWS/ApplicationELB", MetricName="TargetResponseTime",
        Dimensions=alb.dimensions(alb.green_arn), ExtendedStatistic="p95", Period=60,
        EvaluationPeriods=1, Threshold=0.5, ComparisonOperator="GreaterThanThreshold")
    alb.cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="test")
    res = run_module(alb.args(0, rollback=True, alarm_names=[alarm], bake_seconds=60))
    assert not res.get("failed"), res
    assert res["gates"] == []
    assert alb.weights() == {"blue": 100, "green": 0}


def test_listener_and_target_groups_by_name(alb: Alb) -> None:
    res = run_module({"driver": "elbv2", "weight": 100, "region": REGION,
                      "endpoint_url": alb.endpoint, "load_balancer_name": alb.name,
                      "listener_port": 80, "blue_target_group_name": alb.blue_name,
                      "green_target_group_name": alb.green_name, "allow_idle": True})
    assert not res.get("failed"), res
    assert alb.weights() == {"blue": 0, "green": 100}


def test_the_chats_own_metrics_gate_the_elbv2_step_too(alb: Alb) -> None:
    """CloudWatch has nothing yet; green's /metrics already shows failing sends."""
    green = FakeChat("green", faulty=True)
    server, port = serve(green)
    try:
        res = run_module(alb.args(50, bake_seconds=30, poll_interval=0.3, metrics_urls={
            "green": f"http://127.0.0.1:{port}/metrics"}))
    finally:
        server.shutdown()
        server.server_close()
    assert res.get("failed") is True
    assert "gate error_rate breached on green (source metrics)" in res["msg"]
    assert alb.weights() == {"blue": 100, "green": 0}


def test_module_defaults_of_our_aws_group_reach_traffic_shift(alb: Alb, tmp_path: Path) -> None:
    """DESIGN's trap: `group/aws` module defaults do not reach a module of our collection.
    Our roles use `group/canarychat.platform.aws` (meta/runtime.yml: our modules, extended
    with amazon.aws's and community.aws's groups). The task itself names neither endpoint
    nor region: without the defaults it would have no region (and would call real AWS)."""
    playbook = tmp_path / "shift.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Shift with module defaults",
        "hosts": "localhost",
        "gather_facts": False,
        "module_defaults": {"group/canarychat.platform.aws": {"endpoint_url": alb.endpoint,
                                                              "region": REGION}},
        "tasks": [{
            "name": "Move green to 50",
            "canarychat.platform.traffic_shift": {
                "driver": "elbv2", "weight": 50, "listener_arn": alb.listener_arn,
                "blue_target_group_arn": alb.blue_arn,
                "green_target_group_arn": alb.green_arn, "allow_idle": True},
            "register": "shifted",
        }],
    }], sort_keys=False))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env.pop("AWS_REGION", None)
    env.pop("AWS_DEFAULT_REGION", None)
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}", str(playbook)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert alb.weights() == {"blue": 50, "green": 50}
