"""The local target's DynamoDB API: moto server, with one gap filled.

moto 5.2 leaves `TableId` out of DescribeTable, and community.aws.dynamodb_table reads it
(KeyError 'table_id'), so the role could not create the tables with the same task the AWS
target uses. This launcher adds a stable TableId (a UUID derived from the table's ARN) and
then runs moto's own server entry point with the same arguments as `moto_server`.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

from moto.dynamodb.models.table import Table
from moto.server import main

_describe = Table.describe


def _describe_with_id(self: Table, base_key: str = "TableDescription") -> dict[str, Any]:
    result = _describe(self, base_key)
    result[base_key].setdefault("TableId", str(uuid.uuid5(uuid.NAMESPACE_URL, self.table_arn)))
    return result


Table.describe = _describe_with_id  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
