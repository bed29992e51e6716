"""Each write request applied atomically, as DynamoDB applies a write to an item.

moto's server runs each request in its own thread, and its writes are read-modify-write
without a lock: two concurrent `UpdateItem ADD 1` on one counter could both answer the same
value, and two conditional puts of one key (`attribute_not_exists`) could both succeed. The
chat's exactly-once rests on DynamoDB's atomicity. `install()` runs every write request
(PutItem, UpdateItem, DeleteItem, BatchWriteItem, TransactWriteItems) under WRITE_LOCK, from
parsing to the serialised answer.

Test: tests/integration/test_dynamodb_emulator_atomic.py.
"""

from __future__ import annotations

from typing import Any

from moto.dynamodb.responses import DynamoHandler

from .lock import WRITE_LOCK

_WRITES = ("put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items")


def _atomic(handler: Any) -> Any:
    def locked(self: Any) -> Any:
        with WRITE_LOCK:
            return handler(self)

    locked.__name__ = handler.__name__
    return locked


_installed = False


def install() -> None:
    """Wrap moto's DynamoHandler write methods (idempotent)."""
    global _installed
    if _installed:
        return
    for name in _WRITES:
        setattr(DynamoHandler, name, _atomic(getattr(DynamoHandler, name)))
    _installed = True
