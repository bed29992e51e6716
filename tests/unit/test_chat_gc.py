"""The chat's cyclic-GC setting at startup (chat.app.settle_gc, CHAT_GC_FULL_EVERY): what
exists at startup is frozen, what comes after (connections' objects) is still collected,
and full collections wait for CHAT_GC_FULL_EVERY middle-generation ones."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from chat.app import settle_gc
from chat.config import Config


class Kept:
    """An object the collector tracks, as the process's startup objects are."""


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def _tracked_in_a_generation(obj: object) -> bool:
    """Whether a collection would walk `obj` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


def test_startup_objects_are_frozen_later_ones_collected(restored: None) -> None:
    young, middle, _ = gc.get_threshold()
    startup = Kept()
    settle_gc(250)
    assert gc.get_threshold() == (young, middle, 250)  # only the full collections' pace
    assert gc.get_freeze_count() > 0
    assert not _tracked_in_a_generation(startup)
    later = Kept()
    assert _tracked_in_a_generation(later)
    # a cycle made after startup is still garbage the collector finds
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_config_default_and_bounds() -> None:
    assert Config.from_env({}).gc_full_every == 100
    assert Config.from_env({"CHAT_GC_FULL_EVERY": "10"}).gc_full_every == 10
    for bad in ("0", "100001"):
        with pytest.raises(ValueError, match="CHAT_GC_FULL_EVERY"):
            Config.from_env({"CHAT_GC_FULL_EVERY": bad})
