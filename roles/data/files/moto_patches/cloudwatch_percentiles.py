"""GetMetricData's percentile statistics (`pNN`).

moto 5.2's CloudWatch GetMetricData answers 500 to a percentile statistic (`p95`): its
`Statistics` knows Sum/Average/Minimum/Maximum/SampleCount only, returns None for anything
else, and the response cannot serialise None. The deploy gate reads p95 of the chat's
`CanaryChat` `AckLatency` (put as Values/Counts, which moto stores as one datum per sample).
`install()` computes `pNN` (e.g. p95, p99.9) from the stored samples of the period,
nearest-rank (the smallest sample with at least NN% of the samples at or below it); a
statistic set counts only when CloudWatch itself could take a percentile of it (SampleCount 1
or Minimum == Maximum, API_GetMetricStatistics). A period whose statistic cannot be computed
returns no datapoint (CloudWatch's behaviour for a period without data) instead of None.
CloudWatch's own percentiles are approximations over its internal distribution; the
emulator's are exact over the samples.

Test: tests/unit/test_emulator_cloudwatch.py.
"""

from __future__ import annotations

import math
import re
from typing import Any

from moto.cloudwatch.models import (
    CloudWatchBackend,
    MetricAggregatedDatum,
    MetricDatum,
    Statistics,
)

_PERCENTILE_RE = re.compile(r"^p(\d{1,2}(?:\.\d+)?|100)$")
_installed = False


def percentile_of(stat: str) -> float | None:
    """NN of a `pNN` statistic (0 < NN <= 100), None for any other statistic."""
    m = _PERCENTILE_RE.match(stat)
    if not m:
        return None
    q = float(m.group(1))
    return q if 0 < q <= 100 else None


def nearest_rank(samples: list[float], q: float) -> float | None:
    """The q-th percentile (0 < q <= 100) of `samples`, nearest-rank: the smallest sample
    with at least q% of the samples at or below it. None when there are no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _percentile_samples(stats: Any) -> list[float]:
    samples: list[float] = []
    for datum in stats.metric_data or []:
        if isinstance(datum, MetricDatum):
            samples.append(float(datum.value))
        elif isinstance(datum, MetricAggregatedDatum) and (
                datum.sample_count == 1 or datum.min == datum.max):
            samples.extend([float(datum.min)] * int(datum.sample_count))
    return samples


def install() -> None:
    """Teach moto's CloudWatch `pNN` statistics in GetMetricData (idempotent)."""
    global _installed
    if _installed:
        return
    get_statistic = Statistics.get_statistics_for_type
    get_metric_data = CloudWatchBackend.get_metric_data

    def get_statistics_for_type(self: Any, stat: str) -> Any:
        q = percentile_of(stat)
        if q is None:
            return get_statistic(self, stat)
        return nearest_rank(_percentile_samples(self), q)

    def get_metric_data_without_none(self: Any, *args: Any, **kwargs: Any) -> Any:
        results = get_metric_data(self, *args, **kwargs)
        for result in results:
            pairs = [(t, v) for t, v in zip(result["timestamps"], result["values"],
                                                   strict=True)
                     if v is not None]
            result["timestamps"] = [t for t, _ in pairs]
            result["values"] = [v for _, v in pairs]
        return results

    Statistics.get_statistics_for_type = get_statistics_for_type  # type: ignore[method-assign]
    CloudWatchBackend.get_metric_data = get_metric_data_without_none  # type: ignore[method-assign]
    _installed = True
