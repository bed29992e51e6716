"""The emulator's GC patch (roles/data/files/moto_patches/gc_pauses.py): after each full
collection what survived it is frozen (gc.freeze), so the next full collection does not walk
the stored items again; younger collections freeze nothing."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tests.emulator_patches import patch_module

gc_pauses = patch_module("gc_pauses")


@pytest.fixture
def installed() -> Iterator[None]:
    gc.unfreeze()
    gc_pauses.install()
    gc_pauses.install()  # idempotent: one callback
    try:
        yield
    finally:
        while gc_pauses._freeze_after_full_collection in gc.callbacks:
            gc.callbacks.remove(gc_pauses._freeze_after_full_collection)
        gc.unfreeze()


class Stored:
    """A long-lived object the collector tracks, as moto's items are."""

    def __init__(self, seq: int) -> None:
        self.seq = seq


def _collected(obj: object) -> bool:
    """Whether a collection would walk `obj` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


def test_a_full_collection_freezes_its_survivors(installed: None) -> None:
    assert gc.callbacks.count(gc_pauses._freeze_after_full_collection) == 1
    stored = [Stored(i) for i in range(1000)]
    gc.collect(0)
    assert gc.get_freeze_count() == 0  # a young collection freezes nothing
    assert _collected(stored[0]) and _collected(stored[-1])
    gc.collect(2)
    assert gc.get_freeze_count() >= len(stored)
    assert not _collected(stored[0]) and not _collected(stored[-1])
    later = Stored(-1)  # what comes after is walked until the next full collection
    assert _collected(later)
