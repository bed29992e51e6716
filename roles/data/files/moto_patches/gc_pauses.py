"""Bounded pauses of Python's cyclic garbage collector.

Full collections walked every stored item while all request threads waited: pauses of
hundreds of milliseconds once tens of thousands of items were stored (the chat's store
latency p99 grew over a benchmark sitting). `install()` freezes what survives each full
collection.

Test: tests/unit/test_emulator_gc_pauses.py.
"""

from __future__ import annotations

import gc
from typing import Any


def _freeze_after_full_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def install() -> None:
    """Every stored item is a few dozen long-lived objects, and each full collection of
    Python's cyclic GC walks all of them while every request thread waits for the GIL:
    with tens of thousands of items the pauses grew to hundreds of milliseconds, and the
    chat's store latency tail with them. After each full collection, what survived it
    moves to the permanent generation (gc.freeze), so the next one walks only what came
    since. Items are freed by reference counting when replaced or deleted; what is
    frozen and later left in a reference cycle stays allocated: a fair price for a
    local emulator."""
    if _freeze_after_full_collection not in gc.callbacks:
        gc.callbacks.append(_freeze_after_full_collection)
