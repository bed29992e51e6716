"""One weight range: the filter the deploy role's input check reads (traffic_shift_range)
gives the range traffic_shift's own check (core.weights_for) enforces."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.canarychat.platform.plugins.filter import (
    traffic_shift as filters,
)
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift import (
    core,
)


def test_the_filter_answers_the_range_the_module_enforces() -> None:
    low, high = filters.FilterModule().filters()["traffic_shift_range"]("weight")
    assert [low, high] == [0, 100]
    assert core.weights_for(low) == {"blue": 100, "green": 0}
    assert core.weights_for(high) == {"blue": 0, "green": 100}
    for outside in (low - 1, high + 1):
        with pytest.raises(ValueError, match="weight must be between 0 and 100"):
            core.weights_for(outside)


def test_an_option_without_a_range_is_an_error() -> None:
    with pytest.raises(AnsibleFilterError, match="no range for 'bake_seconds'"):
        filters.traffic_shift_range("bake_seconds")
