"""The board's weights on AWS: read from the ALB listener (chat/lbweights.py ListenerSource)
against the emulator (moto server), through aiobotocore as the chat runs it.

The listener is shaped as roles/loadbalancer makes it: a default action answering 403 and a
rule (an http-header condition) whose forward lists both target groups with their weights.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from chat.lbweights import ListenerSource, WeightsPoller
from tests.chatstack import ChatStack
from tests.conftest import Service

REGION = "ap-northeast-2"


@dataclass
class Alb:
    elbv2: Any
    listener_arn: str
    rule_arn: str
    arns: dict[str, str]


def _forward(arns: dict[str, str], blue: int, green: int) -> list[dict[str, Any]]:
    return [{"Type": "forward", "ForwardConfig": {"TargetGroups": [
        {"TargetGroupArn": arns["blue"], "Weight": blue},
        {"TargetGroupArn": arns["green"], "Weight": green}]}}]


@pytest.fixture
def alb(moto_server: Service, monkeypatch: pytest.MonkeyPatch) -> Alb:
    monkeypatch.setenv("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", moto_server.url)
    kw = {"region_name": REGION, "endpoint_url": moto_server.url}
    ec2, elbv2 = boto3.client("ec2", **kw), boto3.client("elbv2", **kw)
    tag = uuid.uuid4().hex[:8]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24",
                                 AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
               for i, az in ((1, "a"), (2, "c"))]
    lb_arn = elbv2.create_load_balancer(Name=f"w-{tag}", Subnets=subnets,
                                        Type="application")["LoadBalancers"][0][
        "LoadBalancerArn"]
    arns = {color: elbv2.create_target_group(
        Name=f"{color}-{tag}", Protocol="HTTP", Port=8000, VpcId=vpc,
        TargetType="ip")["TargetGroups"][0]["TargetGroupArn"] for color in ("blue", "green")}
    listener_arn = elbv2.create_listener(
        LoadBalancerArn=lb_arn, Protocol="HTTP", Port=80,
        DefaultActions=[{"Type": "fixed-response", "FixedResponseConfig": {
            "StatusCode": "403", "ContentType": "text/plain", "MessageBody": "forbidden"}}],
    )["Listeners"][0]["ListenerArn"]
    rule_arn = elbv2.create_rule(
        ListenerArn=listener_arn, Priority=10,
        Conditions=[{"Field": "http-header", "HttpHeaderConfig": {
            "HttpHeaderName": "X-Origin-Secret", "Values": ["s3cret"]}}],
        Actions=_forward(arns, 90, 10))["Rules"][0]["RuleArn"]
    return Alb(elbv2, listener_arn, rule_arn, arns)


async def _read(alb: Alb) -> dict[str, int]:
    source = ListenerSource(alb.listener_arn, alb.arns, REGION)
    await source.start()
    try:
        return await source.read()
    finally:
        await source.close()


def test_the_weighted_rule_is_read_back(alb: Alb) -> None:
    assert asyncio.run(_read(alb)) == {"blue": 90, "green": 10}
    alb.elbv2.modify_rule(RuleArn=alb.rule_arn, Actions=_forward(alb.arns, 30, 70))
    assert asyncio.run(_read(alb)) == {"blue": 30, "green": 70}


def test_without_such_a_rule_the_default_action_is_read(alb: Alb) -> None:
    alb.elbv2.delete_rule(RuleArn=alb.rule_arn)
    alb.elbv2.modify_listener(ListenerArn=alb.listener_arn,
                              DefaultActions=_forward(alb.arns, 100, 0))
    assert asyncio.run(_read(alb)) == {"blue": 100, "green": 0}


def test_the_poller_keeps_the_last_value_when_the_listener_is_gone(alb: Alb) -> None:
    async def run() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        poller = WeightsPoller(ListenerSource(alb.listener_arn, alb.arns, REGION), 60)
        await poller.source.start()  # type: ignore[union-attr]
        try:
            await poller.poll_once()
            first = poller.value
            alb.elbv2.delete_listener(ListenerArn=alb.listener_arn)
            await poller.poll_once()
            return first, poller.value
        finally:
            await poller.stop()

    first, after = asyncio.run(run())
    assert first is not None and after is not None
    assert (first["blue"], first["green"], first["source"]) == (90, 10, "elbv2")
    assert "error" not in first
    assert (after["blue"], after["green"], after["ts"]) == (90, 10, first["ts"])
    assert after["error"]


@pytest.fixture
def chat_on_alb(alb: Alb, redis_server: Service, moto_server: Service,
                tmp_path: Path) -> Iterator[tuple[ChatStack, Any]]:
    chats = ChatStack(redis_server.url, moto_server.url, tmp_path)
    chats.init_tables()
    inst = chats.start("blue", env={
        "CHAT_WEIGHTS_LISTENER_ARN": alb.listener_arn,
        "CHAT_WEIGHTS_BLUE_TARGET_GROUP_ARN": alb.arns["blue"],
        "CHAT_WEIGHTS_GREEN_TARGET_GROUP_ARN": alb.arns["green"],
        "CHAT_WEIGHTS_POLL_SECONDS": "1",
        "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2": moto_server.url})
    try:
        yield chats, inst
    finally:
        chats.stop_all()


def test_the_chats_api_stats_shows_the_listeners_weights(
        alb: Alb, chat_on_alb: tuple[ChatStack, Any]) -> None:
    _, inst = chat_on_alb

    def weights_become(want: dict[str, int]) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            got = inst.get_json("/api/stats")["weights"] or {}
            if got.get("source") == "elbv2" and all(got.get(c) == w for c, w in want.items()):
                return dict(got)
            assert time.monotonic() < deadline, (got, inst.logs()[-2000:])
            time.sleep(0.2)

    weights_become({"blue": 90, "green": 10})
    alb.elbv2.modify_rule(RuleArn=alb.rule_arn, Actions=_forward(alb.arns, 50, 50))
    weights_become({"blue": 50, "green": 50})
