"""traffic_shift's elbv2 driver against a moto server (no AWS), run as Ansible runs it.

Each test builds its own VPC, ALB, blue/green target groups (IP targets registered, which
moto reports healthy) and a listener forwarding 90/10 with stickiness, then runs
`ansible localhost -m canarychat.platform.traffic_shift` with endpoint_url pointing at moto.
CloudWatch data is put with the dimensions ALB publishes per target group (TargetGroup +
LoadBalancer); moto returns Sum but no percentiles, so p95 reads as "no data" (moto 5.2.5
even answers 500 to a p95 query over TargetResponseTime datapoints, so tests put none).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import uuid
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

    def weights(self) -> dict[str, int]:
        action = self.default_actions()[0]
        tgs = {t["TargetGroupArn"]: t["Weight"] for t in action["ForwardConfig"]["TargetGroups"]}
        return {"blue": tgs[self.blue_arn], "green": tgs[self.green_arn]}

    def default_actions(self) -> list[dict[str, Any]]:
        listener = self.elbv2.describe_listeners(ListenerArns=[self.listener_arn])["Listeners"][0]
        return listener["DefaultActions"]

    def dimensions(self, tg_arn: str) -> list[dict[str, str]]:
        return [{"Name": "TargetGroup", "Value": tg_arn.split(":", 5)[5]},
                {"Name": "LoadBalancer", "Value": "/".join(
                    self.lb_arn.split(":", 5)[5].split("/")[1:4])}]

    def args(self, weight: int, **extra: Any) -> dict[str, Any]:
        return {"driver": "elbv2", "weight": weight, "region": REGION,
                "endpoint_url": self.endpoint, "listener_arn": self.listener_arn,
                "blue_target_group_arn": self.blue_arn, "green_target_group_arn": self.green_arn,
                **extra}


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
    res = run_module(alb.args(50, bake_seconds=1, poll_interval=0.5))
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
    # No CloudWatch data yet: readings without a value, neither pass nor breach.
    cw = [g for g in res["gates"] if g["source"] == "cloudwatch"]
    assert {g["gate"] for g in cw} == {"error_rate", "p95_ms"}
    assert all(g["value"] is None and g["ok"] is None for g in cw)


def test_green_5xx_in_cloudwatch_refuses_the_step_and_keeps_the_weights(alb: Alb) -> None:
    now = datetime.datetime.now(datetime.UTC)
    dims = alb.dimensions(alb.green_arn)
    alb.cloudwatch.put_metric_data(Namespace="AWS/ApplicationELB", MetricData=[
        {"MetricName": "HTTPCode_Target_5XX_Count", "Dimensions": dims, "Timestamp": now,
         "Value": 30.0, "Unit": "Count"},
        {"MetricName": "RequestCount", "Dimensions": dims, "Timestamp": now,
         "Value": 100.0, "Unit": "Count"},
    ])
    res = run_module(alb.args(50, bake_seconds=30, poll_interval=0.5))
    assert res.get("failed") is True
    assert "gate error_rate breached on green (source cloudwatch)" in res["msg"]
    assert "measured 0.3 > threshold 0.05" in res["msg"]
    assert res["rolled_back"] is True
    assert res["weights_after"] == {"blue": 90, "green": 10}
    assert alb.weights() == {"blue": 90, "green": 10}
    reading = res["breach"]
    assert reading["detail"].startswith("30 5xx of 100 requests since")
    # moto computes no percentiles (and fails outright on a p95 query over datapoints it
    # holds, so none are put here): p95 is a reading without a value.
    p95 = [g for g in res["gates"] if g["gate"] == "p95_ms"]
    assert p95 and all(g["value"] is None and g["ok"] is None for g in p95)


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
    assert alb.weights() == {"blue": 90, "green": 10}

    alb.cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="OK", StateReason="test: fine")
    res = run_module(alb.args(50, alarm_names=[alarm]))
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
                      "green_target_group_name": alb.green_name})
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
    assert alb.weights() == {"blue": 90, "green": 10}


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
                "green_target_group_arn": alb.green_arn},
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
