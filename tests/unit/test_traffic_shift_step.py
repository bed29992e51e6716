"""One canary step (pre-check, apply, verify, bake, restore) with an in-memory driver.

The real drivers are exercised against real HAProxy and a moto server in
tests/integration/test_traffic_shift_*.py; here the order of operations is pinned down.
"""

from __future__ import annotations

import pytest
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift import (
    core,
    step,
)

T = core.Thresholds(min_healthy=1, max_error_rate=0.05, max_p95_ms=500)


class FakeClock(step.Clock):
    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(wall=lambda: self.now, monotonic=lambda: self.now, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeDriver:
    def __init__(self, weights: dict[str, int], healthy: dict[str, int] | None = None,
                 error_rates: list[float | None] | None = None, lag_reads: int = 0) -> None:
        self.weights = dict(weights)
        self.healthy = healthy or {"blue": 1, "green": 1}
        self.error_rates = list(error_rates or [0.0])
        self.lag_reads = lag_reads  # reads that still return the old weights after a write
        self.sends: int | None = 100
        self.marked_at: int | None = None
        self.applied: list[dict[str, int]] = []
        self.log: list[str] = []
        self._stale: dict[str, int] | None = None
        self._stale_left = 0

    def read_weights(self) -> dict[str, int]:
        self.log.append("read")
        if self._stale_left > 0:
            self._stale_left -= 1
            assert self._stale is not None
            return dict(self._stale)
        return dict(self.weights)

    def apply_weights(self, weights: dict[str, int]) -> None:
        self.log.append("apply")
        self._stale, self._stale_left = dict(self.weights), self.lag_reads
        self.weights = dict(weights)
        self.applied.append(dict(weights))

    def health_readings(self, color: str, thresholds: core.Thresholds) -> list[dict]:
        self.log.append("health:" + color)
        return [core.make_reading(core.GATE_HEALTHY, "fake", color, self.healthy[color],
                                  thresholds, 0)]

    def start_bake(self, step_start: float) -> None:
        self.log.append("start_bake")

    def mark_applied(self, ts: float) -> None:
        self.marked_at = len(self.log)  # position in the log, kept out of the log itself

    def sends_reading(self, color: str, thresholds: core.Thresholds) -> dict:
        self.log.append("sends:" + color)
        return core.make_reading(core.GATE_SENDS, "fake", color, self.sends, thresholds, 0)

    def bake_readings(self, color: str, thresholds: core.Thresholds) -> list[dict]:
        self.log.append("bake:" + color)
        rate = self.error_rates.pop(0) if len(self.error_rates) > 1 else self.error_rates[0]
        return [core.make_reading(core.GATE_ERROR_RATE, "fake", color, rate, thresholds, 0)]


B90 = {"blue": 90, "green": 10}
B50 = {"blue": 50, "green": 50}
BLUE100 = {"blue": 100, "green": 0}


def test_a_passing_step_applies_verifies_and_bakes_for_bake_seconds() -> None:
    clock = FakeClock()
    d = FakeDriver(B90, lag_reads=2)
    res = step.run_step(d, B50, T, bake_seconds=10, poll_interval=3, clock=clock)
    assert res["changed"] is True
    assert res["weights_before"] == B90 and res["weights_after"] == B50
    assert d.weights == B50 and d.applied == [B50]
    assert d.log.index("health:green") < d.log.index("start_bake") < d.log.index("apply")
    # reads back until the load balancer answers the new weights (2 stale reads)
    assert d.log[d.log.index("apply") + 1:d.log.index("apply") + 4] == ["read"] * 3
    bakes = [e for e in d.log if e == "bake:green"]
    assert len(bakes) == 5  # t=0, 3, 6, 9, 10
    assert res["timings"]["bake_seconds"] == pytest.approx(10)
    assert [g["gate"] for g in res["gates"]].count("error_rate") == 5
    assert res["rolled_back"] is False


def test_bake_zero_still_reads_every_gate_once() -> None:
    d = FakeDriver(B90)
    res = step.run_step(d, B50, T, bake_seconds=0, clock=FakeClock())
    assert d.log.count("bake:green") == 1
    assert {g["gate"] for g in res["gates"]} == {"healthy", "error_rate"}


def test_breach_sends_everyone_to_blue_at_once_and_fails_naming_the_gate() -> None:
    d = FakeDriver(B90, error_rates=[0.0, 0.3])
    with pytest.raises(step.StepFailed) as e:
        step.run_step(d, B50, T, bake_seconds=60, poll_interval=5, clock=FakeClock())
    assert d.applied == [B50, BLUE100]
    assert d.weights == BLUE100
    assert "gate error_rate breached on green" in e.value.msg
    assert "measured 0.3 > threshold 0.05" in e.value.msg
    assert "everyone sent to blue (blue 100 / green 0)" in e.value.msg
    res = e.value.result
    assert res["rolled_back"] is True and res["weights_after"] == BLUE100
    assert res["changed"] is True  # blue 90 / green 10 before, blue 100 / green 0 now


def test_on_breach_previous_restores_the_previous_weights() -> None:
    d = FakeDriver(B90, error_rates=[0.0, 0.3])
    with pytest.raises(step.StepFailed) as e:
        step.run_step(d, B50, T, bake_seconds=60, poll_interval=5, clock=FakeClock(),
                      on_breach="previous")
    assert d.applied == [B50, B90]
    assert d.weights == B90
    assert "gate error_rate breached on green" in e.value.msg
    assert "measured 0.3 > threshold 0.05" in e.value.msg
    assert "previous weights restored (blue 90 / green 10)" in e.value.msg
    res = e.value.result
    assert res["rolled_back"] is True and res["weights_after"] == B90
    assert res["breach"]["value"] == 0.3
    assert res["changed"] is False


def test_breach_without_auto_rollback_leaves_the_new_weights() -> None:
    d = FakeDriver(B90, error_rates=[0.9])
    with pytest.raises(step.StepFailed) as e:
        step.run_step(d, B50, T, auto_rollback=False, clock=FakeClock())
    assert d.applied == [B50]
    assert e.value.result["weights_after"] == B50
    assert "auto_rollback is off" in e.value.msg


def test_no_data_is_neither_pass_nor_breach() -> None:
    d = FakeDriver(B90, error_rates=[None])
    res = step.run_step(d, B50, T, bake_seconds=2, poll_interval=1, clock=FakeClock())
    assert d.weights == B50
    assert all(g["ok"] is None for g in res["gates"] if g["gate"] == "error_rate")


def test_precheck_refuses_when_the_gaining_color_is_unhealthy() -> None:
    d = FakeDriver(B90, healthy={"blue": 1, "green": 0})
    with pytest.raises(step.StepFailed) as e:
        step.run_step(d, B50, T, clock=FakeClock())
    assert d.applied == []
    assert e.value.msg.startswith("pre-check refused the step: gate healthy breached on green")
    assert e.value.result["changed"] is False and e.value.result["weights_after"] == B90


def test_precheck_watches_blue_when_blue_gains() -> None:
    d = FakeDriver(B50, healthy={"blue": 0, "green": 1})
    with pytest.raises(step.StepFailed):
        step.run_step(d, {"blue": 90, "green": 10}, T, clock=FakeClock())
    assert d.log[1] == "health:blue" and d.applied == []


def test_check_mode_reports_the_change_and_writes_nothing() -> None:
    d = FakeDriver(B90)
    res = step.run_step(d, B50, T, bake_seconds=60, check_mode=True, clock=FakeClock())
    assert res["changed"] is True and res["weights_after"] == B50
    assert d.applied == [] and "start_bake" not in d.log


def test_rollback_ignores_every_gate() -> None:
    d = FakeDriver(B50, healthy={"blue": 0, "green": 0}, error_rates=[1.0])
    res = step.run_step(d, {"blue": 100, "green": 0}, T, bake_seconds=60, rollback=True,
                        clock=FakeClock())
    assert d.weights == {"blue": 100, "green": 0}
    assert res["gates"] == [] and res["timings"]["bake_seconds"] == 0
    assert not any(e.startswith(("health", "bake")) for e in d.log)


def test_unchanged_weights_do_nothing() -> None:
    d = FakeDriver(B50)
    res = step.run_step(d, B50, T, bake_seconds=60, clock=FakeClock())
    assert res["changed"] is False and d.applied == [] and d.log == ["read"]


def test_weights_that_never_read_back_are_restored_and_fail() -> None:
    d = FakeDriver(B90, lag_reads=10_000)
    with pytest.raises(step.StepFailed) as e:
        step.run_step(d, B50, T, verify_timeout=2, clock=FakeClock(), on_breach="previous")
    assert "did not read back within 2" in e.value.msg
    assert d.applied == [B50, B90]


def test_a_gate_that_cannot_be_read_backs_out() -> None:
    class Broken(FakeDriver):
        def bake_readings(self, color: str, thresholds: core.Thresholds) -> list[dict]:
            raise OSError("metrics endpoint exploded")

    d = Broken(B90)
    with pytest.raises(step.StepFailed) as e:
        step.run_step(d, B50, T, clock=FakeClock())
    assert "reading the gates failed: metrics endpoint exploded" in e.value.msg
    assert d.weights == BLUE100


TS = core.Thresholds(min_healthy=1, max_error_rate=0.05, max_p95_ms=500, min_sends=20)


def test_the_bake_ends_with_the_sends_gate_after_the_weights_were_applied() -> None:
    d = FakeDriver(B90)
    res = step.run_step(d, B50, TS, bake_seconds=10, poll_interval=5, clock=FakeClock())
    assert d.marked_at is not None
    assert d.log.index("apply") < d.marked_at <= d.log.index("bake:green")
    assert d.log[-1] == "sends:green" and d.log.count("sends:green") == 1
    assert res["gates"][-1]["gate"] == "sends" and res["gates"][-1]["ok"] is True


def test_too_few_sends_is_insufficient_data_and_sends_everyone_to_blue() -> None:
    for sends in (19, 0, None):
        d = FakeDriver(B90, error_rates=[None])  # no rate either: nothing to judge
        d.sends = sends
        with pytest.raises(step.StepFailed) as e:
            step.run_step(d, B50, TS, bake_seconds=10, poll_interval=5, clock=FakeClock())
        assert "gate sends breached on green" in e.value.msg
        assert "insufficient data" in e.value.msg and "threshold 20" in e.value.msg
        assert d.weights == BLUE100
        assert e.value.result["breach"]["gate"] == "sends"


def test_allow_idle_records_the_sends_without_judging_them() -> None:
    d = FakeDriver(B90, error_rates=[None])
    d.sends = 2
    res = step.run_step(d, B50, TS, bake_seconds=10, poll_interval=5, clock=FakeClock(),
                        allow_idle=True)
    assert d.weights == B50
    last = res["gates"][-1]
    assert last["gate"] == "sends" and last["value"] == 2 and last["ok"] is None
    assert "allow_idle" in last["detail"]


def test_min_sends_zero_reads_no_sends() -> None:
    d = FakeDriver(B90)
    step.run_step(d, B50, T, bake_seconds=5, poll_interval=5, clock=FakeClock())
    assert not any(e.startswith("sends") for e in d.log)


def test_rollback_reads_no_sends_and_marks_no_apply_time() -> None:
    d = FakeDriver(B50)
    d.sends = 0
    step.run_step(d, BLUE100, TS, rollback=True, clock=FakeClock())
    assert d.weights == BLUE100
    assert d.marked_at is None and not any(e.startswith("sends") for e in d.log)


def test_breach_without_auto_rollback_moves_nothing_whatever_on_breach() -> None:
    d = FakeDriver(B90, error_rates=[0.9])
    with pytest.raises(step.StepFailed):
        step.run_step(d, B50, T, auto_rollback=False, on_breach="blue", clock=FakeClock())
    assert d.applied == [B50]
