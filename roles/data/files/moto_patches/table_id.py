"""DescribeTable's TableId.

moto 5.2 leaves `TableId` out of DescribeTable, and community.aws.dynamodb_table reads it
(KeyError 'table_id'), so the role could not create the tables with the same task the AWS
target uses. `install()` adds a stable TableId: a UUID derived from the table's ARN.

Test: tests/unit/test_emulator_table_id.py.
"""

from __future__ import annotations

import uuid
from typing import Any

from moto.dynamodb.models.table import Table

_describe = Table.describe
_installed = False


def _describe_with_id(self: Table, base_key: str = "TableDescription") -> dict[str, Any]:
    result = _describe(self, base_key)
    result[base_key].setdefault("TableId", str(uuid.uuid5(uuid.NAMESPACE_URL, self.table_arn)))
    return result


def install() -> None:
    """Patch moto's Table.describe (idempotent)."""
    global _installed
    if _installed:
        return
    Table.describe = _describe_with_id  # type: ignore[method-assign]
    _installed = True
