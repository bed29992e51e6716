"""The emulator's CloudWatch percentile patch (roles/data/files/moto_patches/
cloudwatch_percentiles.py): GetMetricData answers `pNN` statistics
(moto 5.2 fails them with a 500) from the samples put as Values/Counts, nearest-rank; a
period whose percentile cannot be computed has no datapoint."""

from __future__ import annotations

import datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.emulator_patches import patch_module

emu = patch_module("cloudwatch_percentiles")
DIMS = [{"Name": "Color", "Value": "green"}]


def test_nearest_rank_and_statistic_names() -> None:
    assert emu.nearest_rank([], 95) is None
    assert emu.nearest_rank([5.0], 95) == 5.0
    samples = [float(i) for i in range(1, 101)]  # 1..100
    assert emu.nearest_rank(samples, 95) == 95.0
    assert emu.nearest_rank(samples, 50) == 50.0
    assert emu.nearest_rank(samples, 99.9) == 100.0
    assert emu.nearest_rank(list(reversed(samples)), 100) == 100.0
    assert emu.percentile_of("p95") == 95.0
    assert emu.percentile_of("p99.9") == 99.9
    assert emu.percentile_of("Sum") is None
    assert emu.percentile_of("p0") is None
    assert emu.percentile_of("tm99") is None


def _query(cw: Any, stat: str, start: datetime.datetime) -> dict[str, Any]:
    res = cw.get_metric_data(
        MetricDataQueries=[{"Id": "q", "MetricStat": {"Metric": {
            "Namespace": "CanaryChat", "MetricName": "AckLatency", "Dimensions": DIMS},
            "Period": 10, "Stat": stat}}],
        StartTime=start, EndTime=start + datetime.timedelta(seconds=30),
        ScanBy="TimestampAscending")
    return res["MetricDataResults"][0]


@pytest.fixture
def cloudwatch() -> Any:
    emu.install()
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="ap-northeast-2")


def test_p95_of_values_and_counts_per_period(cloudwatch: Any) -> None:
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(
        seconds=60)
    # period 1: 90 acks of 4 ms, 10 of 800 ms -> p95 is 800; period 2: 100 of 3 ms
    cloudwatch.put_metric_data(Namespace="CanaryChat", MetricData=[
        {"MetricName": "AckLatency", "Dimensions": DIMS, "Unit": "Milliseconds",
         "StorageResolution": 1, "Timestamp": start + datetime.timedelta(seconds=2),
         "Values": [4.0, 800.0], "Counts": [90.0, 10.0]},
        {"MetricName": "AckLatency", "Dimensions": DIMS, "Unit": "Milliseconds",
         "StorageResolution": 1, "Timestamp": start + datetime.timedelta(seconds=12),
         "Values": [3.0], "Counts": [100.0]},
    ])
    res = _query(cloudwatch, "p95", start)
    assert res["Values"] == [800.0, 3.0]
    assert [t.replace(tzinfo=None) for t in res["Timestamps"]] == [
        (start + datetime.timedelta(seconds=s)).replace(tzinfo=None) for s in (0, 10)]
    assert _query(cloudwatch, "p50", start)["Values"] == [4.0, 3.0]
    # the other statistics are moto's own, unchanged
    assert _query(cloudwatch, "SampleCount", start)["Values"] == [100.0, 100.0]


def test_a_statistic_set_without_samples_gives_no_datapoint(cloudwatch: Any) -> None:
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(
        seconds=60)
    cloudwatch.put_metric_data(Namespace="CanaryChat", MetricData=[
        {"MetricName": "AckLatency", "Dimensions": DIMS, "Unit": "Milliseconds",
         "Timestamp": start + datetime.timedelta(seconds=2),
         "StatisticValues": {"SampleCount": 5, "Sum": 50, "Minimum": 1, "Maximum": 20}},
        {"MetricName": "AckLatency", "Dimensions": DIMS, "Unit": "Milliseconds",
         "Timestamp": start + datetime.timedelta(seconds=12),
         "StatisticValues": {"SampleCount": 4, "Sum": 28, "Minimum": 7, "Maximum": 7}},
    ])
    res = _query(cloudwatch, "p95", start)
    # period 1 cannot be ranked (CloudWatch refuses percentiles of such a set): no datapoint;
    # period 2 is four samples of 7.
    assert res["Values"] == [7.0]
    assert _query(cloudwatch, "Sum", start)["Values"] == [50.0, 28.0]
