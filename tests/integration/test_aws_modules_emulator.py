"""Our AWS modules run by Ansible against the moto server: create, no-op rerun, check mode
(reports, changes nothing), diff, update, delete, delete again."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from typing import Any

import boto3
import pytest

from tests.conftest import REPO, VENV_BIN, Service

pytestmark = [pytest.mark.aws, pytest.mark.integration]

REGION = "ap-northeast-2"


def run(moto: Service, module: str, check: bool = False, **args: Any) -> dict[str, Any]:
    """One module call through `ansible` (ad hoc): the module's result."""
    args.update(endpoint_url=moto.url, region=REGION, access_key="testing",
                secret_key="testing")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    cmd = [str(VENV_BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
           "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}",
           "-m", f"canarychat.platform.{module}", "-a", json.dumps(args), "--diff"]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    start = proc.stdout.find("{")
    assert start >= 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout[start:])
    return dict(out["plays"][0]["tasks"][0]["hosts"]["localhost"])


def client(moto: Service, service: str) -> Any:
    return boto3.client(service, endpoint_url=moto.url, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_replication_group_lifecycle(moto_server: Service) -> None:
    ec = client(moto_server, "elasticache")
    rg = f"rg-{uuid.uuid4().hex[:8]}"
    spec: dict[str, Any] = dict(
        replication_group_id=rg, cache_node_type="cache.t4g.micro", num_cache_clusters=2,
        automatic_failover=True, multi_az=True, at_rest_encryption=True,
        snapshot_retention_limit=0, wait=False)

    r = run(moto_server, "elasticache_replication_group", check=True, **spec)
    assert r["changed"] is True and not r.get("failed")
    assert not [g for g in ec.describe_replication_groups()["ReplicationGroups"]
                if g["ReplicationGroupId"] == rg], "check mode created the group"

    r = run(moto_server, "elasticache_replication_group", **spec)
    assert r["changed"] is True and r["primary_endpoint"]
    g = ec.describe_replication_groups(ReplicationGroupId=rg)["ReplicationGroups"][0]
    assert (g["AutomaticFailover"], g["MultiAZ"], g["AtRestEncryptionEnabled"]) == (
        "enabled", "enabled", True)

    assert run(moto_server, "elasticache_replication_group", **spec)["changed"] is False

    r = run(moto_server, "elasticache_replication_group", check=True,
            **{**spec, "snapshot_retention_limit": 3})
    assert r["changed"] is True
    assert r["diff"]["before"]["snapshot_retention_limit"] == 0
    assert r["diff"]["after"]["snapshot_retention_limit"] == 3
    g = ec.describe_replication_groups(ReplicationGroupId=rg)["ReplicationGroups"][0]
    assert g["SnapshotRetentionLimit"] == 0, "check mode modified the group"

    r = run(moto_server, "elasticache_replication_group",
            **{**spec, "at_rest_encryption": False})
    assert r.get("failed") is True and "at_rest_encryption" in r["msg"]

    assert run(moto_server, "elasticache_replication_group", replication_group_id=rg,
               state="absent", wait=False)["changed"] is True
    # the emulator keeps it "deleting": a second absent is a no-op either way
    assert run(moto_server, "elasticache_replication_group", replication_group_id=rg,
               state="absent", wait=False)["changed"] is False


def test_dashboard_compares_bodies_as_data(moto_server: Service) -> None:
    cw = client(moto_server, "cloudwatch")
    name = f"dash-{uuid.uuid4().hex[:8]}"
    body = {"widgets": [{"type": "text", "x": 0, "y": 0, "width": 6, "height": 2,
                         "properties": {"markdown": "hello"}}]}
    assert run(moto_server, "cloudwatch_dashboard", check=True, name=name, body=body)["changed"]
    assert name not in [d["DashboardName"] for d in cw.list_dashboards()["DashboardEntries"]]
    assert run(moto_server, "cloudwatch_dashboard", name=name, body=body)["changed"] is True
    # the same body as JSON text with another key order: no change
    text = json.dumps({"widgets": [dict(reversed(list(body["widgets"][0].items())))]})
    assert run(moto_server, "cloudwatch_dashboard", name=name, body=text)["changed"] is False
    changed = {"widgets": [{**body["widgets"][0], "properties": {"markdown": "bye"}}]}
    r = run(moto_server, "cloudwatch_dashboard", check=True, name=name, body=changed)
    assert r["changed"] is True
    stored = json.loads(cw.get_dashboard(DashboardName=name)["DashboardBody"])
    assert stored == body, "check mode replaced the dashboard"
    assert run(moto_server, "cloudwatch_dashboard", name=name, state="absent")["changed"]
    assert run(moto_server, "cloudwatch_dashboard", name=name, state="absent")[
        "changed"] is False


def test_origin_access_control_lifecycle(moto_server: Service) -> None:
    cf = client(moto_server, "cloudfront")
    name = f"oac-{uuid.uuid4().hex[:8]}"

    def ours() -> list[dict[str, Any]]:
        items = cf.list_origin_access_controls()["OriginAccessControlList"].get("Items") or []
        return [o for o in items if o["Name"] == name]

    r = run(moto_server, "cloudfront_origin_access_control", name=name, description="site")
    assert r["changed"] is True and r["id"]
    again = run(moto_server, "cloudfront_origin_access_control", name=name, description="site")
    assert again["changed"] is False and again["id"] == r["id"]
    r = run(moto_server, "cloudfront_origin_access_control", name=name, description="new")
    assert r["changed"] is True and r["diff"]["after"]["Description"] == "new"
    assert ours()[0]["Description"] == "new"
    assert run(moto_server, "cloudfront_origin_access_control", check=True, name=name,
               state="absent")["changed"] is True
    assert len(ours()) == 1, "check mode deleted it"
    assert run(moto_server, "cloudfront_origin_access_control", name=name, state="absent")[
        "changed"] is True
    assert ours() == []
    assert run(moto_server, "cloudfront_origin_access_control", name=name, state="absent")[
        "changed"] is False


def test_prefix_list_lookup_finds_cloudfront_origin_facing(moto_server: Service) -> None:
    name = "com.amazonaws.global.cloudfront.origin-facing"
    r = run(moto_server, "ec2_managed_prefix_list_info", names=[name])
    assert r["changed"] is False
    assert [p["prefix_list_name"] for p in r["prefix_lists"]] == [name]
    assert r["prefix_lists"][0]["prefix_list_id"].startswith("pl-")


def test_lb_attributes_set_only_given_keys(moto_server: Service) -> None:
    ec2 = client(moto_server, "ec2")
    elbv2 = client(moto_server, "elbv2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24",
                                 AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
               for i, az in enumerate("ac")]
    name = f"lb-{uuid.uuid4().hex[:8]}"
    arn = elbv2.create_load_balancer(Name=name, Subnets=subnets)["LoadBalancers"][0][
        "LoadBalancerArn"]
    want = {"idle_timeout.timeout_seconds": 300, "routing.http2.enabled": True}

    r = run(moto_server, "elb_load_balancer_attributes", check=True, name=name,
            attributes=want)
    assert r["changed"] is True
    attrs = {a["Key"]: a["Value"] for a in elbv2.describe_load_balancer_attributes(
        LoadBalancerArn=arn)["Attributes"]}
    assert attrs.get("idle_timeout.timeout_seconds") != "300", "check mode changed it"

    r = run(moto_server, "elb_load_balancer_attributes", load_balancer_arn=arn,
            attributes=want)
    assert r["changed"] is True
    assert r["attributes"]["idle_timeout.timeout_seconds"] == "300"
    assert run(moto_server, "elb_load_balancer_attributes", name=name, attributes=want)[
        "changed"] is False


def test_origin_rule_creates_migrates_and_rotates_without_touching_weights(
        moto_server: Service) -> None:
    ec2 = client(moto_server, "ec2")
    elbv2 = client(moto_server, "elbv2")
    vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.8.{i}.0/24",
                                 AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
               for i, az in enumerate("ac")]
    name = f"lb-{uuid.uuid4().hex[:8]}"
    lb = elbv2.create_load_balancer(Name=name, Subnets=subnets)["LoadBalancers"][0][
        "LoadBalancerArn"]
    blue, green = (elbv2.create_target_group(
        Name=f"{name}-{c}", Protocol="HTTP", Port=8000, VpcId=vpc, TargetType="ip")[
        "TargetGroups"][0]["TargetGroupArn"] for c in ("b", "g"))
    spec: dict[str, Any] = dict(
        load_balancer_name=name, header_name="X-Origin-Verify", header_values=["s3cret"],
        target_groups=[{"target_group_arn": blue, "weight": 90},
                       {"target_group_arn": green, "weight": 10}])

    def listener() -> dict[str, Any]:
        return dict(elbv2.describe_listeners(LoadBalancerArn=lb)["Listeners"][0])

    def rule() -> dict[str, Any]:
        rules = elbv2.describe_rules(ListenerArn=listener()["ListenerArn"])["Rules"]
        return dict(next(r for r in rules if not r["IsDefault"]))

    r = run(moto_server, "elb_origin_rule", check=True, **spec)
    assert r["changed"] is True and not r.get("failed")
    assert elbv2.describe_listeners(LoadBalancerArn=lb)["Listeners"] == [], "check mode"

    r = run(moto_server, "elb_origin_rule", **spec)
    assert r["changed"] is True
    assert listener()["DefaultActions"][0]["FixedResponseConfig"]["StatusCode"] == "403"
    assert rule()["Conditions"][0]["HttpHeaderConfig"] == {
        "HttpHeaderName": "X-Origin-Verify", "Values": ["s3cret"]}
    assert "s3cret" not in json.dumps(r)  # no_log: the value never comes back
    assert run(moto_server, "elb_origin_rule", **spec)["changed"] is False

    # a canary moved the weights; a rotation changes the condition only
    elbv2.modify_rule(RuleArn=rule()["RuleArn"], Actions=[{"Type": "forward", "ForwardConfig": {
        "TargetGroups": [{"TargetGroupArn": blue, "Weight": 50},
                         {"TargetGroupArn": green, "Weight": 50}]}}])
    r = run(moto_server, "elb_origin_rule", **dict(spec, header_values=["n3w", "s3cret"]))
    assert r["changed"] is True and r["actions"] == ["modify the rule's header condition"]
    assert sorted(rule()["Conditions"][0]["HttpHeaderConfig"]["Values"]) == ["n3w", "s3cret"]
    assert [g["Weight"] for g in rule()["Actions"][0]["ForwardConfig"]["TargetGroups"]] == [
        50, 50]

    # an old listener forwarding by default: the rule takes its weights, the default is
    # closed only when asked
    elbv2.delete_rule(RuleArn=rule()["RuleArn"])
    elbv2.modify_listener(ListenerArn=listener()["ListenerArn"], DefaultActions=[
        {"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": blue, "Weight": 30}, {"TargetGroupArn": green, "Weight": 70}]}}])
    r = run(moto_server, "elb_origin_rule", **dict(spec, deny_default=False))
    assert r["actions"] == ["create rule (weights of the listener's default action)"]
    assert listener()["DefaultActions"][0]["Type"] == "forward"
    assert r["weights"] == {blue: 30, green: 70}
    r = run(moto_server, "elb_origin_rule", **spec)
    assert r["actions"] == ["deny by default"]
    assert listener()["DefaultActions"][0]["Type"] == "fixed-response"
    assert [g["Weight"] for g in rule()["Actions"][0]["ForwardConfig"]["TargetGroups"]] == [
        30, 70]
