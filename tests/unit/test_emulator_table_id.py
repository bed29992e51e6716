"""The emulator's TableId patch (roles/data/files/moto_patches/table_id.py): DescribeTable
carries a TableId, stable for a table (a UUID derived from its ARN) and distinct between
tables, which community.aws.dynamodb_table reads."""

from __future__ import annotations

import uuid

import boto3
from moto import mock_aws

from tests.emulator_patches import patch_module

table_id = patch_module("table_id")


def _create(ddb: object, name: str) -> None:
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",  # type: ignore[attr-defined]
                     KeySchema=[{"AttributeName": "room", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "room", "AttributeType": "S"}])


def test_describe_table_has_a_stable_table_id_from_the_arn() -> None:
    table_id.install()
    table_id.install()  # idempotent: installing twice wraps describe once
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="ap-northeast-2")
        _create(ddb, "messages")
        _create(ddb, "rooms")
        first = ddb.describe_table(TableName="messages")["Table"]
        again = ddb.describe_table(TableName="messages")["Table"]
        other = ddb.describe_table(TableName="rooms")["Table"]
    assert first["TableId"] == str(uuid.uuid5(uuid.NAMESPACE_URL, first["TableArn"]))
    assert again["TableId"] == first["TableId"]
    assert other["TableId"] != first["TableId"]
    assert uuid.UUID(other["TableId"]).version == 5
