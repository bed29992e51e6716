"""TransactWriteItems in O(items of the transaction), as DynamoDB applies it.

moto 5.2's `DynamoDBBackend.transact_write_items` deep-copies every table the transaction
names before it starts (to roll back by swapping the copies in): each transaction costs
O(items in those tables), so the chat's send (one transaction on the messages and
connections tables) slowed down as the tables grew, and a failed transaction swapped in a
table object that readers in other threads did not hold. `install()` replaces it with two
phases under the write lock (atomic_writes holds WRITE_LOCK for the whole request, so no
write interleaves between them):

1. check: each action's key is distinct (else ValidationException, as moto), its table
   exists and its ConditionExpression holds on the current item; the answer on a failure is
   moto's own TransactionCanceledException with one CancellationReason per action, in order
   (`ConditionalCheckFailed`, with the item when ReturnValuesOnConditionCheckFailure is
   ALL_OLD, or `None`), nothing written;
2. apply: each action through moto's put_item / update_item / delete_item (which keeps
   indexed_query's range index); should one raise anyway, the items already written are put
   back from copies of the items themselves (not of the tables) and the error goes out.

What DynamoDB does and this does not (docs/aws.md): no TransactionConflict (transactions are
serialised by the lock), the ClientRequestToken is accepted and ignored (no idempotency
window), no 4 MB / item-count limits beyond moto's 100 actions.

Test: tests/integration/test_dynamodb_emulator_transact.py.
"""

from __future__ import annotations

import copy
from typing import Any

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType

from .lock import WRITE_LOCK

_ACTIONS = ("ConditionCheck", "Put", "Delete", "Update")
_installed = False


def _key_of(backend: DynamoDBBackend, op_type: str, op: dict[str, Any]) -> dict[str, Any]:
    if op_type != "Put":
        return dict(op["Key"])
    table = backend.get_table(op["TableName"])
    attrs = op["Item"]
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    with WRITE_LOCK:
        seen: set[tuple[str, str]] = set()
        actions: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        errors: list[Any] = []
        for item in transact_items:
            if len(item) > 1:
                raise TransactWriteSingleOpException
            op_type, op = next(iter(item.items()))
            original: dict[str, Any] | None = None
            try:
                if op_type not in _ACTIONS:
                    raise ValueError("Unsupported transaction operation")
                key = _key_of(self, op_type, op)
                marker = (str(op["TableName"]), str(dict(sorted(key.items()))))
                if marker in seen:
                    raise MultipleTransactionsException()
                seen.add(marker)
                actions.append((op_type, op, key))
                current = self.get_item(op["TableName"], key)
                cond = op.get("ConditionExpression")
                if cond is not None:
                    expr = get_filter_expression(cond, op.get("ExpressionAttributeNames"),
                                             op.get("ExpressionAttributeValues"))
                    if not expr.expr(current):
                        if (op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD"
                                and current):
                            original = current.to_json()["Attributes"]
                        raise ConditionalCheckFailed(item=original)
                errors.append((None, None, None))
            except (MultipleTransactionsException, MockValidationException):
                raise  # the whole request is invalid: a ValidationException, as moto
            except ConditionalCheckFailed as e:
                errors.append(("ConditionalCheckFailed", str(e.message), original))
            except Exception as e:  # as moto: any other failure is that action's reason
                errors.append((type(e).__name__, str(e), original))
        if any(code is not None for code, _, _ in errors):
            raise TransactionCanceledException(errors)
        # every condition holds and nothing else writes meanwhile: apply, undoing on a failure
        before: list[tuple[str, dict[str, Any], Any]] = []
        try:
            for op_type, op, key in actions:
                if op_type == "ConditionCheck":
                    continue
                table_name = op["TableName"]
                before.append((table_name, key, copy.deepcopy(self.get_item(table_name, key))))
                names = op.get("ExpressionAttributeNames")
                values = op.get("ExpressionAttributeValues")
                if op_type == "Put":
                    self.put_item(table_name, op["Item"], expression_attribute_names=names,
                                  expression_attribute_values=values)
                elif op_type == "Delete":
                    self.delete_item(table_name, key, expression_attribute_names=names,
                                     expression_attribute_values=values)
                else:
                    self.update_item(table_name, key, update_expression=op["UpdateExpression"],
                                     expression_attribute_names=names,
                                     expression_attribute_values=values)
        except BaseException:
            for table_name, key, old in reversed(before):
                if old is None:
                    self.get_table(table_name).delete_item(
                        *_hash_range(self, table_name, key))
                else:
                    self.get_table(table_name).put_item(old.to_json()["Attributes"])
            raise


def _hash_range(backend: DynamoDBBackend, table_name: str, key: dict[str, Any]
                ) -> tuple[Any, Any]:
    table = backend.get_table(table_name)
    hash_value = DynamoType(key[table.hash_key_attr])
    range_value = (DynamoType(key[table.range_key_attr])
                   if table.range_key_attr is not None else None)
    return hash_value, range_value


def install() -> None:
    """Replace moto's DynamoDBBackend.transact_write_items (idempotent)."""
    global _installed
    if _installed:
        return
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    _installed = True
