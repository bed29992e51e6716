"""Units of chat/cloudwatch.py (aggregation into PutMetricData within the API's limits, what
counts as an unexpected close) and chat/targetwatch.py (when a target's health means drain)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from chat import cloudwatch as cw
from chat.config import Config
from chat.targetwatch import TargetWatcher, ip_from_task_metadata, should_drain

AT = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


def by_name(data: list[dict], name: str) -> list[dict]:
    return [d for d in data if d["MetricName"] == name]


# --- latency buckets ---------------------------------------------------------------


@pytest.mark.parametrize(("ms", "bucket"), [
    (1.234, 1.2), (9.96, 10.0), (12.6, 13.0), (123.0, 120.0), (987.0, 990.0),
    (2512.0, 2500.0), (0.0, 0.01), (-3.0, 0.01), (0.004, 0.01), (1e9, 3_600_000.0),
    (float("nan"), 0.01), (float("inf"), 3_600_000.0)])
def test_latency_bucket_keeps_two_significant_digits_within_clamps(ms: float, bucket: float):
    assert cw.bucket_ms(ms) == bucket


def test_latency_bucket_error_is_at_most_five_percent():
    for i in range(1, 20000):
        ms = i * 0.37
        assert abs(cw.bucket_ms(ms) - ms) <= 0.05 * ms + 1e-9


# --- MetricData -----------------------------------------------------------------------


def test_every_datum_has_the_contract_fields():
    t = cw.Tally()
    t.ack(0.0042)
    t.ack(0.0042)
    t.ack(0.120)
    t.error()
    t.unexpected_closes = 2
    data = cw.metric_data(t, color="green", connections=7, at=AT)
    assert [d["MetricName"] for d in data] == [
        "Sends", "SendErrors", "Connections", "UnexpectedCloses", "AckLatency"]
    for d in data:
        assert d["Dimensions"] == [{"Name": "Color", "Value": "green"}]
        assert d["StorageResolution"] == 1
        assert d["Timestamp"] == AT
    units = {d["MetricName"]: d["Unit"] for d in data}
    assert units == {"Sends": "Count", "SendErrors": "Count", "Connections": "Count",
                     "UnexpectedCloses": "Count", "AckLatency": "Milliseconds"}
    values = {d["MetricName"]: d.get("Value") for d in data}
    # Sends counts every send answered, ack or error: SendErrors / Sends is the error rate
    assert values["Sends"] == 4.0 and values["SendErrors"] == 1.0
    assert values["Connections"] == 7.0 and values["UnexpectedCloses"] == 2.0
    (latency,) = by_name(data, "AckLatency")
    assert "Value" not in latency
    assert latency["Values"] == [4.2, 120.0] and latency["Counts"] == [2.0, 1.0]


def test_no_acks_no_latency_datum_but_zero_counts_are_sent():
    data = cw.metric_data(cw.Tally(), color="blue", connections=0, at=AT)
    assert not by_name(data, "AckLatency")
    assert {d["MetricName"]: d["Value"] for d in data} == {
        "Sends": 0.0, "SendErrors": 0.0, "Connections": 0.0, "UnexpectedCloses": 0.0}


def test_many_distinct_latencies_split_into_datums_of_at_most_150_values():
    t = cw.Tally()
    n = 0
    ms = 0.001
    while ms < 5e6:  # every bucket from below the floor to above the ceiling
        for _ in range(3):
            t.ack(ms / 1000)
            n += 1
        ms *= 1.003
    data = cw.metric_data(t, color="green", connections=0, at=AT)
    chunks = by_name(data, "AckLatency")
    assert len(chunks) > 1
    values = [v for c in chunks for v in c["Values"]]
    for c in chunks:
        assert 1 <= len(c["Values"]) <= cw.MAX_VALUES_PER_DATUM
        assert len(c["Counts"]) == len(c["Values"])
        assert all(math.isfinite(v) and abs(v) < 2.0 ** 360 for v in c["Values"])
    assert len(values) == len(set(values))  # each bucket once
    assert values == sorted(values)
    assert sum(x for c in chunks for x in c["Counts"]) == n  # no sample lost
    # the clamps bound the buckets whatever the spread: ~90 a decade, 8.6 decades
    assert len(values) <= 800


def test_batches_respect_datum_count_and_payload_budget():
    big = {"MetricName": "AckLatency", "Values": [1.0] * 150, "Counts": [1.0] * 150}
    small = {"MetricName": "Sends", "Value": 1.0}
    data = [small] * 1500 + [big] * 40
    out = cw.batches(data)
    assert sum(len(b) for b in out) == len(data)
    assert [d for b in out for d in b] == data  # order kept
    for b in out:
        assert len(b) <= cw.MAX_DATUMS_PER_REQUEST
        assert sum(cw.datum_bytes(d) for d in b) <= cw.REQUEST_BUDGET_BYTES
    assert cw.REQUEST_BUDGET_BYTES < cw.MAX_REQUEST_BYTES
    # one interval of one color is a single request, even with every latency bucket
    t = cw.Tally()
    for i in range(1, 800):
        t.ack(i * 0.0005)
    assert len(cw.batches(cw.metric_data(t, color="blue", connections=1, at=AT))) == 1


def test_the_estimate_covers_the_query_encoding_of_a_full_datum():
    # botocore's query serializer: MetricData.member.N.Values.member.M=<value>&...
    full = {"MetricName": "AckLatency", "Values": [1234.5] * 150, "Counts": [99999.0] * 150}
    encoded = "&".join(
        [f"MetricData.member.1000.Values.member.{i}={v}" for i, v in
         enumerate(full["Values"], 1)]
        + [f"MetricData.member.1000.Counts.member.{i}={c}" for i, c in
           enumerate(full["Counts"], 1)])
    assert len(encoded) + 300 <= cw.datum_bytes(full)


# --- unexpected closes ----------------------------------------------------------------


@pytest.mark.parametrize(("sent", "received", "received_first", "migrated", "unexpected"), [
    (None, None, None, False, True),    # TCP gone without a close frame: 1006
    (1011, None, None, False, True),    # keepalive timeout / internal error
    (1011, 1011, False, False, True),   # ... and the client echoed it
    (1013, 1013, False, False, True),   # too slow, or storage down at join
    (1012, 1012, False, False, False),  # drain
    (None, None, None, True, False),    # a migrated client that just vanished
    (1011, None, None, True, False),
    (1000, 1000, True, False, False),   # client closed normally
    (1001, 1001, True, False, False),   # client going away
    (None, 1000, None, False, False),   # client closed, our answer not sent
    (1009, 1009, False, False, False),  # the client's frame was too big
    (1007, None, None, False, False),   # the client's invalid UTF-8
    (1008, None, None, False, False),
])
def test_unexpected_close(sent, received, received_first, migrated, unexpected):
    assert cw.unexpected_close(sent=sent, received=received, received_first=received_first,
                               migrated=migrated) is unexpected


# --- configuration --------------------------------------------------------------------


def test_publishing_is_off_unless_configured():
    assert Config.from_env({}).cloudwatch is False
    assert Config.from_env({"CHAT_CLOUDWATCH": "0"}).cloudwatch is False
    on = Config.from_env({"CHAT_CLOUDWATCH": "1"})
    assert on.cloudwatch and on.cloudwatch_namespace == "CanaryChat"
    assert on.cloudwatch_interval == 10.0
    named = Config.from_env({"CHAT_CLOUDWATCH_NAMESPACE": "Other"})
    assert named.cloudwatch and named.cloudwatch_namespace == "Other"
    assert not Config.from_env({"CHAT_CLOUDWATCH_NAMESPACE": "Other",
                                "CHAT_CLOUDWATCH": "0"}).cloudwatch  # an explicit 0 wins
    with pytest.raises(ValueError, match="INTERVAL"):
        Config.from_env({"CHAT_CLOUDWATCH_INTERVAL": "0.5"})
    with pytest.raises(ValueError, match="AWS/"):
        Config.from_env({"CHAT_CLOUDWATCH_NAMESPACE": "AWS/ApplicationELB"})


def test_target_watch_configuration():
    c = Config.from_env({})
    assert c.target_group_arns == () and c.target_id is None and c.target_poll == 5.0
    c = Config.from_env({"CHAT_TARGET_GROUP_ARNS": " arn:a , arn:b,", "CHAT_TARGET_ID": "10.0.1.5",
                         "CHAT_TARGET_PORT": "8000", "CHAT_TARGET_POLL_SECONDS": "2"})
    assert c.target_group_arns == ("arn:a", "arn:b")
    assert (c.target_id, c.target_port, c.target_poll) == ("10.0.1.5", 8000, 2.0)


# --- target watcher -------------------------------------------------------------------


@pytest.mark.parametrize(("state", "reason", "seen", "drain"), [
    ("draining", "Target.DeregistrationInProgress", True, True),
    ("draining", "Target.DeregistrationInProgress", False, True),
    ("unused", "Target.NotRegistered", True, True),     # deregistered between two polls
    ("unused", "Target.NotRegistered", False, False),   # not yet registered (task starting)
    ("unavailable", "Target.NotRegistered", False, False),  # moto, before registration
    ("unused", "Target.NotInUse", True, False),         # registered, group serves no listener
    ("unhealthy.draining", "Target.FailedHealthChecks", True, False),
    ("healthy", "", True, False), ("initial", "Elb.RegistrationInProgress", False, False),
    ("unhealthy", "Target.FailedHealthChecks", True, False),
])
def test_should_drain(state, reason, seen, drain):
    assert should_drain(state, reason, seen) is drain


def _health(state: str, reason: str = "") -> list[dict]:
    h = {"State": state, **({"Reason": reason} if reason else {})}
    return [{"Target": {"Id": "10.0.0.7", "Port": 8000}, "TargetHealth": h}]


def test_watcher_drains_once_after_seeing_the_target_registered():
    calls: list[int] = []
    w = TargetWatcher(arns=("arn:a", "arn:b"), target_id="10.0.0.7", port=8000, interval=5,
                      region="ap-northeast-2", on_deregistered=lambda: calls.append(1))
    assert not w.observe("arn:a", _health("unavailable", "Target.NotRegistered"))
    assert not w.observe("arn:a", _health("initial", "Elb.RegistrationInProgress"))
    assert not w.observe("arn:b", _health("unused", "Target.NotRegistered"))  # never seen in b
    assert not w.observe("arn:a", _health("healthy"))
    assert calls == []
    assert w.observe("arn:a", _health("draining", "Target.DeregistrationInProgress"))
    assert calls == [1] and w.fired


def test_watcher_drains_on_unused_after_registered():
    calls: list[int] = []
    w = TargetWatcher(arns=("arn:a",), target_id="10.0.0.7", port=8000, interval=5,
                      region="ap-northeast-2", on_deregistered=lambda: calls.append(1))
    assert not w.observe("arn:a", _health("healthy"))
    assert w.observe("arn:a", _health("unused", "Target.NotRegistered"))
    assert calls == [1]


def test_task_ip_from_the_metadata_v4_task_document():
    # the shape of GET ${ECS_CONTAINER_METADATA_URI_V4}/task on Fargate (awsvpc)
    doc = json.loads("""{"Cluster": "c", "TaskARN": "arn:aws:ecs:ap-northeast-2:1:task/c/x",
      "Containers": [{"Name": "chat", "Networks": [{"NetworkMode": "awsvpc",
        "IPv4Addresses": ["10.0.12.34"], "AttachmentIndex": 0,
        "IPv4SubnetCIDRBlock": "10.0.12.0/24"}]}]}""")
    assert ip_from_task_metadata(doc) == "10.0.12.34"
    assert ip_from_task_metadata({"Containers": [{"Name": "x"}]}) is None
    assert ip_from_task_metadata({}) is None


# --- the beat --------------------------------------------------------------------------


def test_batches_beat_on_multiples_of_the_interval_since_the_epoch():
    # 10 s interval: from 12.5 s past a multiple the next batch is 7.5 s away, from a
    # multiple itself a whole interval (never zero: no empty batch right after a full one)
    assert cw.next_boundary(1_800_000_012.5, 10) == pytest.approx(7.5)
    assert cw.next_boundary(1_800_000_010.0, 10) == pytest.approx(10.0)
    assert cw.next_boundary(1_800_000_019.99, 10) == pytest.approx(0.01)
    # an interval dividing a minute keeps the batches on the gate's 10 s periods
    assert (1_800_000_012.5 + cw.next_boundary(1_800_000_012.5, 5)) % 10 in (0.0, 5.0)
