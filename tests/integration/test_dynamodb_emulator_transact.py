"""The emulator's TransactWriteItems (roles/data/files/moto_patches/transact_writes.py): all
or nothing, CancellationReasons in the order of the actions, a request naming one item twice
refused as a whole, and a cancelled transaction leaving the tables (and their Query index)
as they were."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def ddb(moto_server: Service) -> Any:
    return boto3.client("dynamodb", endpoint_url=moto_server.url, region_name="ap-northeast-2",
                        aws_access_key_id="t", aws_secret_access_key="t")


@pytest.fixture
def tables(ddb: Any) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    ddb.create_table(TableName=f"m-{suffix}", BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "room", "AttributeType": "S"},
                                           {"AttributeName": "seq", "AttributeType": "N"}],
                     KeySchema=[{"AttributeName": "room", "KeyType": "HASH"},
                                {"AttributeName": "seq", "KeyType": "RANGE"}])
    ddb.create_table(TableName=f"c-{suffix}", BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}])
    return f"m-{suffix}", f"c-{suffix}"


def put(table: str, item: dict[str, Any], cond: str, **extra: Any) -> dict[str, Any]:
    return {"Put": {"TableName": table, "Item": item, "ConditionExpression": cond, **extra}}


def msg(seq: int, text: str) -> dict[str, Any]:
    return {"room": {"S": "r"}, "seq": {"N": str(seq)}, "text": {"S": text}}


def seqs(ddb: Any, messages: str) -> list[tuple[int, str]]:
    r = ddb.query(TableName=messages, KeyConditionExpression="room = :r AND seq > :s",
                  ExpressionAttributeValues={":r": {"S": "r"}, ":s": {"N": "0"}})
    return [(int(i["seq"]["N"]), i["text"]["S"]) for i in r["Items"]]


def test_all_or_nothing_with_the_reasons_in_the_order_of_the_actions(
        ddb: Any, tables: tuple[str, str]) -> None:
    messages, records = tables
    ddb.transact_write_items(TransactItems=[
        put(records, {"k": {"S": "a"}, "seq": {"N": "1"}}, "attribute_not_exists(k)"),
        put(messages, msg(1, "one"), "attribute_not_exists(seq)")],
        ClientRequestToken=uuid.uuid4().hex)
    assert seqs(ddb, messages) == [(1, "one")]
    # the record's condition holds, the message's does not: neither is written
    with pytest.raises(ClientError) as e:
        ddb.transact_write_items(TransactItems=[
            put(records, {"k": {"S": "b"}, "seq": {"N": "1"}}, "attribute_not_exists(k)"),
            put(messages, msg(1, "again"), "attribute_not_exists(seq)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD")])
    err = e.value.response
    assert err["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in err["CancellationReasons"]] == ["None",
                                                               "ConditionalCheckFailed"]
    assert err["CancellationReasons"][1]["Item"]["text"] == {"S": "one"}
    assert "Item" not in ddb.get_item(TableName=records, Key={"k": {"S": "b"}})
    assert seqs(ddb, messages) == [(1, "one")]
    # and after the cancellation the tables take writes and answer queries as before
    ddb.transact_write_items(TransactItems=[
        put(records, {"k": {"S": "b"}, "seq": {"N": "2"}}, "attribute_not_exists(k)"),
        put(messages, msg(2, "two"), "attribute_not_exists(seq)")])
    assert seqs(ddb, messages) == [(1, "one"), (2, "two")]


def test_one_item_named_twice_is_a_validation_error_and_nothing_is_written(
        ddb: Any, tables: tuple[str, str]) -> None:
    messages, _ = tables
    with pytest.raises(ClientError) as e:
        ddb.transact_write_items(TransactItems=[
            put(messages, msg(5, "a"), "attribute_not_exists(seq)"),
            put(messages, msg(5, "b"), "attribute_not_exists(seq)")])
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert seqs(ddb, messages) == []


def test_a_failed_update_undoes_the_puts_before_it(ddb: Any, tables: tuple[str, str]) -> None:
    messages, records = tables
    ddb.put_item(TableName=records, Item={"k": {"S": "n"}, "n": {"S": "text"}})
    with pytest.raises(ClientError) as e:
        ddb.transact_write_items(TransactItems=[
            put(messages, msg(7, "x"), "attribute_not_exists(seq)"),
            # ADD to a string attribute: refused when it is applied, after the put
            {"Update": {"TableName": records, "Key": {"k": {"S": "n"}},
                        "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}}])
    # moto's own error of the update (its conditions all held: not a cancellation)
    assert e.value.response["Error"]["Code"] != "TransactionCanceledException"
    assert seqs(ddb, messages) == []
    assert ddb.get_item(TableName=records, Key={"k": {"S": "n"}})["Item"]["n"] == {"S": "text"}
