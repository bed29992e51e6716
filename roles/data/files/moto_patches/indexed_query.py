"""Query in O(log n + page), as DynamoDB answers it.

moto's `Table.query` walks every item of the table (all partitions), sorts the candidates
and compares each with the range condition: one Query costs O(items in the table), and the
30-minute soak (~36,000 messages in one room) collapsed on it. `install()` keeps, per
partition, a sorted list of the range-key values (maintained by put_item/delete_item, rebuilt
if it ever disagrees with the partition) and hands moto's ORIGINAL query only the items it
would look at: the queried partition, cut with `bisect` to the range condition's interval,
from ExclusiveStartKey on, up to the item where moto's loop stops (Limit reached, or the 1 MB
result size). moto's own code still sorts, compares, counts, applies Limit, the size limit,
LastEvaluatedKey, the FilterExpression (which moto applies after the page is cut, as DynamoDB
does), projections and deepcopy. Anything outside the plain case (an index, legacy
QueryFilter kwargs, no range key, an ExclusiveStartKey of another partition, B range keys, an
unexpected operator or error) goes to the original query unchanged.

Test: tests/unit/test_dynamodb_emulator.py (the patched query equals moto's, page by page).
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from typing import Any

from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import RESULT_SIZE_LIMIT, Table

from .lock import WRITE_LOCK

# moto refuses to build an Item larger than this (LimitedSizeDict, dynamo_type.py): no single
# item can push a page over RESULT_SIZE_LIMIT unless the page already holds more than
# RESULT_SIZE_LIMIT - MAX_ITEM_SIZE bytes.
MAX_ITEM_SIZE = 405000

_INDEX_ATTR = "_emulator_range_index"

_SUPPORTED = {"EQ", "=", "LT", "<", "LE", "<=", "GT", ">", "GE", ">=", "BETWEEN", "BEGINS_WITH"}

_put_item = Table.put_item
_delete_item = Table.delete_item
_query = Table.query
_installed = False


class _RangeIndex:
    """One partition's range keys in sort order: `natives` (cast values, for bisect) and the
    DynamoType keys of the partition dict at the same positions."""

    __slots__ = ("keys", "natives", "partition")

    def __init__(self, partition: dict[DynamoType, Item]) -> None:
        self.partition = partition
        self.keys: list[DynamoType] = sorted(partition, key=lambda k: k.cast_value)
        self.natives: list[Any] = [k.cast_value for k in self.keys]

    def add(self, key: DynamoType) -> None:
        value = key.cast_value
        i = bisect_left(self.natives, value)
        if i < len(self.natives) and self.natives[i] == value:
            self.keys[i] = key  # overwrite under the same key: the item is read from the dict
        else:
            self.natives.insert(i, value)
            self.keys.insert(i, key)

    def remove(self, key: DynamoType) -> None:
        value = key.cast_value
        i = bisect_left(self.natives, value)
        if i < len(self.natives) and self.natives[i] == value:
            del self.natives[i]
            del self.keys[i]


def _indexes(table: Table) -> dict[DynamoType, _RangeIndex]:
    indexes: dict[DynamoType, _RangeIndex] | None = table.__dict__.get(_INDEX_ATTR)
    if indexes is None:
        indexes = {}
        table.__dict__[_INDEX_ATTR] = indexes
    return indexes


def _valid_index(table: Table, hash_key: DynamoType) -> _RangeIndex | None:
    """The partition's range index, rebuilt if missing or out of step (call under WRITE_LOCK)."""
    partition = table.items.get(hash_key)  # .get: items is a defaultdict
    indexes = _indexes(table)
    if partition is None:
        indexes.pop(hash_key, None)
        return None
    index = indexes.get(hash_key)
    if index is None or index.partition is not partition or len(index.keys) != len(partition):
        index = indexes[hash_key] = _RangeIndex(partition)
    return index


def _maintain(table: Table, hash_key: DynamoType, range_key: DynamoType, added: bool) -> None:
    index = table.__dict__.get(_INDEX_ATTR, {}).get(hash_key)
    if index is None:
        return
    partition = table.items.get(hash_key)
    if added:
        index.add(range_key)
    else:
        index.remove(range_key)
    if partition is None or index.partition is not partition or len(index.keys) != len(partition):
        del table.__dict__[_INDEX_ATTR][hash_key]  # out of step: rebuilt by the next query


def _put_item_indexed(self: Table, *args: Any, **kwargs: Any) -> Item:
    with WRITE_LOCK:
        item = _put_item(self, *args, **kwargs)
        if self.range_key_attr is not None and item.range_key is not None:
            _maintain(self, item.hash_key, item.range_key, added=True)
        return item


def _delete_item_indexed(self: Table, hash_key: DynamoType,
                         range_key: DynamoType | None) -> Item | None:
    with WRITE_LOCK:
        item = _delete_item(self, hash_key, range_key)
        if item is not None and self.range_key_attr is not None and range_key is not None:
            _maintain(self, hash_key, range_key, added=False)
        return item


def _interval(natives: list[Any], comparison: str | None,
              values: list[Any]) -> tuple[int, int] | None:
    """[lo, end): the positions whose range key can satisfy the condition."""
    n = len(natives)
    if not comparison:
        return 0, n
    if comparison not in _SUPPORTED:
        return None
    a = values[0]
    if comparison in ("EQ", "="):
        return bisect_left(natives, a), bisect_right(natives, a)
    if comparison in ("LT", "<"):
        return 0, bisect_left(natives, a)
    if comparison in ("LE", "<="):
        return 0, bisect_right(natives, a)
    if comparison in ("GT", ">"):
        return bisect_right(natives, a), n
    if comparison in ("GE", ">="):
        return bisect_left(natives, a), n
    if comparison == "BETWEEN":
        lo, end = bisect_left(natives, a), bisect_right(natives, values[1])
        return lo, max(lo, end)
    # BEGINS_WITH, strings only: every string with prefix a lies in [a, a with its last
    # character incremented)
    if not isinstance(a, str) or not a:
        return None
    lo = bisect_left(natives, a)
    if ord(a[-1]) >= sys.maxunicode:
        return lo, n
    return lo, max(lo, bisect_left(natives, a[:-1] + chr(ord(a[-1]) + 1)))


def _candidates(table: Table, hash_key: DynamoType, comparison: str | None,
                range_objs: list[DynamoType], limit: int | None,
                exclusive_start_key: dict[str, Any] | None,
                forward: bool) -> list[Item] | None:
    """The items moto's query loop would look at, in key order; None: use the original."""
    with WRITE_LOCK:
        index = _valid_index(table, hash_key)
        if index is None:
            return []
        natives, keys, partition = index.natives, index.keys, index.partition
        bounds = _interval(natives, comparison, [o.cast_value for o in range_objs])
        if bounds is None:
            return None
        lo, end = bounds
        n = len(natives)
        start = lo if forward else end - 1
        if exclusive_start_key is not None:
            # moto skips the items that come before or at the start key in scan order
            if DynamoType(exclusive_start_key[table.hash_key_attr]) != hash_key:
                return None
            esk = DynamoType(exclusive_start_key[table.range_key_attr]).cast_value  # type: ignore[index]
            if forward:
                start = max(start, bisect_right(natives, esk))
            else:
                start = min(start, bisect_left(natives, esk) - 1)
        # Replay moto's loop (counting and sizing only) to find where it stops.
        step = 1 if forward else -1
        chosen: list[Item] = []
        count = size = 0
        i = start
        while 0 <= i < n:
            item = partition[keys[i]]
            item_size = item.size()
            if count == limit or size + item_size > RESULT_SIZE_LIMIT:
                chosen.append(item)  # moto breaks here and reports LastEvaluatedKey
                break
            chosen.append(item)
            inside = lo <= i < end
            if not comparison or item.range_key.compare(comparison, range_objs):  # type: ignore[union-attr]
                if not inside:
                    return None  # the interval was wrong: never guess, use the original
                count += 1
                size += item_size
            elif not inside and size + MAX_ITEM_SIZE <= RESULT_SIZE_LIMIT:
                break  # past the interval: nothing further can match or stop the loop
            i += step
    if not forward:
        chosen.reverse()
    return chosen


class _Candidates:
    """A stand-in for the table whose all_items() is the pre-selected candidates; every other
    attribute is the table's own."""

    def __init__(self, table: Table, items: list[Item]) -> None:
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_items", items)

    def all_items(self) -> list[Item]:
        return list(self._items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def _query_indexed(self: Table, hash_key: DynamoType | None, range_comparison: str | None,
                   range_objs: list[DynamoType], limit: int, exclusive_start_key: dict[str, Any],
                   scan_index_forward: bool, projection_expressions: list[list[str]] | None,
                   index_name: str | None = None, consistent_read: bool = False,
                   filter_expression: Any = None,
                   hash_key_conditions: list[tuple[str, DynamoType]] | None = None,
                   range_key_conditions: list[tuple[str, str, list[DynamoType]]] | None = None,
                   **filter_kwargs: Any) -> tuple[list[Item], int, dict[str, Any] | None]:
    args = (hash_key, range_comparison, range_objs, limit, exclusive_start_key,
            scan_index_forward, projection_expressions, index_name, consistent_read,
            filter_expression)
    kwargs = dict(hash_key_conditions=hash_key_conditions,
                  range_key_conditions=range_key_conditions, **filter_kwargs)
    plain = (hash_key is not None and not index_name and not filter_kwargs
             and self.range_key_attr is not None and self.range_key_type in ("S", "N")
             and (limit is None or limit >= 1)
             and (not range_key_conditions
                  or (len(range_key_conditions) == 1
                      and range_key_conditions[0][0] == self.range_key_attr)))
    candidates = None
    if plain:
        try:
            candidates = _candidates(self, hash_key, range_comparison,  # type: ignore[arg-type]
                                     range_objs, limit, exclusive_start_key,
                                     scan_index_forward is not False)
        except Exception:  # any surprise: the original query decides
            candidates = None
    if candidates is None:
        return _query(self, *args, **kwargs)
    return _query(_Candidates(self, candidates), *args, **kwargs)  # type: ignore[arg-type]


def install() -> None:
    """Patch moto's Table.put_item, delete_item and query (idempotent)."""
    global _installed
    if _installed:
        return
    Table.put_item = _put_item_indexed  # type: ignore[method-assign]
    Table.delete_item = _delete_item_indexed  # type: ignore[method-assign]
    Table.query = _query_indexed  # type: ignore[method-assign]
    _installed = True


def original_query() -> Any:
    """moto's unpatched Table.query (for tests comparing the two)."""
    return _query
