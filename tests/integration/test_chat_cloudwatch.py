"""Per-color CloudWatch metrics (chat/cloudwatch.py) published by real chat processes to the
emulator's CloudWatch (moto): counts, latency samples and the exact dimension set.

The emulator computes Sum, SampleCount, Average and Maximum; it does not compute percentiles
and ignores StorageResolution (the unit tests check the request's fields).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

# on the path through tests/conftest.py, which pytest loads before this module
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift import (
    core,
    elbv2,
)

from chat.cloudwatch import Publisher, next_boundary
from tests.chatstack import ChatClient, ChatInstance, ChatStack
from tests.conftest import Service, free_port, start_moto

LISTENER = ("arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:"
            "listener/app/canary-chat/50dc6c495c0c9188/f2f7dc8efc522ab2")
TARGETS = "arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:targetgroup/chat-green/bb"
THRESHOLDS = core.Thresholds(min_healthy=1, max_error_rate=0.05, max_p95_ms=500, min_sends=1,
                             max_alb_5xx=0)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

INTERVAL = 1.0  # CHAT_CLOUDWATCH_INTERVAL for these tests (default 10)


@pytest.fixture(scope="module")
def cloudwatch() -> Iterator[Service]:
    """An emulator of its own: these tests read every series of the namespace."""
    svc = start_moto()
    yield svc
    svc.stop()


def cw_client(svc: Service) -> Any:
    return boto3.client("cloudwatch", endpoint_url=svc.url, region_name="ap-northeast-2")


def stat(svc: Service, name: str, color: str, statistic: str, since: datetime,
         namespace: str = "CanaryChat") -> float:
    """One statistic of a color's series over [since, now + 1 min], in one period."""
    end = datetime.now(UTC) + timedelta(minutes=1)
    answer = cw_client(svc).get_metric_data(
        MetricDataQueries=[{"Id": "m", "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": name,
                       "Dimensions": [{"Name": "Color", "Value": color}]},
            "Period": 3600, "Stat": statistic}}],
        StartTime=since - timedelta(minutes=1), EndTime=end)
    values = answer["MetricDataResults"][0]["Values"]
    return float(sum(values)) if statistic in ("Sum", "SampleCount") else float(
        max(values) if values else 0.0)


def publishing_env(svc: Service, **extra: str) -> dict[str, str]:
    return {"CHAT_CLOUDWATCH": "1", "CHAT_CLOUDWATCH_INTERVAL": str(INTERVAL),
            "AWS_ENDPOINT_URL_CLOUDWATCH": svc.url, **extra}


async def burst(inst: ChatInstance, room: str, clients: int, sends: int) -> list[ChatClient]:
    """`clients` connections each sending `sends` (within the rate limit's burst of 10);
    returns after every send was answered (ack or error)."""
    conns = [await ChatClient.connect(inst.ws_url(room, f"u{i}")) for i in range(clients)]
    for c in conns:
        for i in range(sends):
            await c.send(f"m{i}")
    for c in conns:
        await c.wait_for(lambda c=c: len(c.acks) + len(c.errors) >= sends, within=20,
                         what="every send answered")
    return conns


async def test_faulty_green_publishes_sends_errors_and_latency_per_color(
        chat_stack: ChatStack, cloudwatch: Service):
    since = datetime.now(UTC)
    green = chat_stack.start("green", env=publishing_env(cloudwatch, CHAT_FAULT_RATE="0.3"))
    blue = chat_stack.start("blue", env={"AWS_ENDPOINT_URL_CLOUDWATCH": cloudwatch.url})
    try:
        room = "cw-" + uuid.uuid4().hex[:6]
        conns = await burst(green, room, clients=6, sends=10)
        await burst(blue, room, clients=2, sends=5)  # blue: CHAT_CLOUDWATCH unset
        acks = sum(len(c.acks) for c in conns)
        errors = sum(1 for c in conns for e in c.errors if e["code"] == "unavailable")
        assert acks + errors == 60 and errors > 0 and acks > 0
        await asyncio.sleep(3 * INTERVAL)  # at least two batches after the last send

        cw = cw_client(cloudwatch)
        series = cw.list_metrics(Namespace="CanaryChat")["Metrics"]
        names = {m["MetricName"] for m in series}
        assert names == {"Sends", "SendErrors", "AckLatency", "Connections",
                         "UnexpectedCloses"}
        for m in series:  # one series per metric: exactly the Color dimension, green only
            assert m["Dimensions"] == [{"Name": "Color", "Value": "green"}], m

        assert stat(cloudwatch, "Sends", "green", "Sum", since) == 60
        assert stat(cloudwatch, "SendErrors", "green", "Sum", since) == errors
        assert stat(cloudwatch, "AckLatency", "green", "SampleCount", since) == acks
        average = stat(cloudwatch, "AckLatency", "green", "Average", since)
        assert 0 < average < 5000  # milliseconds
        assert stat(cloudwatch, "Connections", "green", "Maximum", since) == 6
        assert stat(cloudwatch, "UnexpectedCloses", "green", "Sum", since) == 0
        for c in conns:
            await c.close()
    finally:
        green.stop()
        blue.stop()


async def test_dropped_connection_counts_as_unexpected_close_clean_close_does_not(
        chat_stack: ChatStack, cloudwatch: Service):
    since = datetime.now(UTC)
    # a color of its own: the series of the other test's green stay out of the sums
    green = chat_stack.start("green-uc", env=publishing_env(cloudwatch))
    try:
        room = "uc-" + uuid.uuid4().hex[:6]
        clean = await ChatClient.connect(green.ws_url(room, "clean"))
        dropped = [await ChatClient.connect(green.ws_url(room, f"gone{i}")) for i in range(2)]
        await clean.close()  # close frame 1000: not unexpected
        for c in dropped:  # TCP gone without a close frame: 1006 on both sides
            c.ws.transport.abort()
        await asyncio.sleep(3 * INTERVAL)
        assert stat(cloudwatch, "UnexpectedCloses", "green-uc", "Sum", since) == 2
        # a drain's 1012 (admin drain: migrate, then 1012 for whoever stays) is not either
        stay = await ChatClient.connect(green.ws_url(room, "stay"))
        status, _ = chat_stack.admin(green, "/api/admin/drain", {"color": "green-uc"})
        assert status == 202
        assert await stay.closed(within=15) == 1012 and stay.migrates == 1
        await asyncio.sleep(3 * INTERVAL)
        assert stat(cloudwatch, "UnexpectedCloses", "green-uc", "Sum", since) == 2
    finally:
        green.stop()


async def test_put_to_an_unreachable_endpoint_is_dropped_then_the_next_one_lands(
        cloudwatch: Service, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", f"http://127.0.0.1:{free_port()}")
    namespace = "CanaryChatTest" + uuid.uuid4().hex[:6]
    down = Publisher(color="blue", namespace=namespace, interval=60, region="ap-northeast-2",
                     enabled=True, connections=lambda: 1.0)
    await down.start()
    try:
        down.ack(0.004)
        down.send_error()
        await down.flush()  # nothing listens: logged and dropped, never raised
        assert down.puts_failed == 1 and down.puts_ok == 0
        assert down.tally.sends == 0 and not down.tally.latency  # nothing kept for later
    finally:
        await down.stop(final_timeout=5)

    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", cloudwatch.url)
    up = Publisher(color="blue", namespace=namespace, interval=60, region="ap-northeast-2",
                   enabled=True, connections=lambda: 1.0)
    await up.start()
    since = datetime.now(UTC)
    try:
        for ms in (1.0, 1.0, 2.0, 40.0):
            up.ack(ms / 1000)
        await up.flush()
        assert up.puts_ok == 1
        assert stat(cloudwatch, "Sends", "blue", "Sum", since, namespace) == 4
        assert stat(cloudwatch, "AckLatency", "blue", "SampleCount", since, namespace) == 4
        assert stat(cloudwatch, "AckLatency", "blue", "Average", since, namespace) == 11.0
    finally:
        await up.stop()


async def test_a_batch_begun_before_the_weights_moved_never_counts_in_the_step(
        cloudwatch: Service, monkeypatch: pytest.MonkeyPatch):
    """The gate (the elbv2 driver, 10 s periods) counts the periods that start at or after
    the apply time. Sends of the previous step, sent in a batch that goes out just after the
    weights moved, are not the new step's: they must not count, and sends after the move
    must."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", cloudwatch.url)
    namespace = "CanaryChat"
    color = "green-" + uuid.uuid4().hex[:6]
    pub = Publisher(color=color, namespace=namespace, interval=3600, region="ap-northeast-2",
                    enabled=True, connections=lambda: 1.0)
    await pub.start()
    try:
        for _ in range(10):  # the previous step's traffic: 10 sends, 2 of them failed
            pub.ack(0.004)
        pub.send_error()
        pub.send_error()
        # the weights move at the start of the next 10 s period; the batch holding those
        # sends goes out just after
        await asyncio.sleep(next_boundary(time.time(), 10) + 0.2)
        now = time.time()
        applied = now - now % 10
        await pub.flush()
        driver = elbv2.ELBv2Driver(None, cw_client(cloudwatch), LISTENER, {color: TARGETS},
                                   chat_period=10, retry=False)
        driver.mark_applied(applied)
        gates = {r["gate"]: r for r in driver.bake_readings(color, THRESHOLDS)}
        assert gates["error_rate"]["value"] is None, gates["error_rate"]  # no data, no breach
        assert "in 0 datapoints" in gates["error_rate"]["detail"], gates["error_rate"]
        # what the color does after the move is the step's
        for _ in range(3):
            pub.ack(0.004)
        await pub.flush()
        gates = {r["gate"]: r for r in driver.bake_readings(color, THRESHOLDS)}
        assert gates["error_rate"]["value"] == 0.0, gates["error_rate"]
        assert "of 3 Sends in 1 datapoints" in gates["error_rate"]["detail"], gates["error_rate"]
    finally:
        await pub.stop()
