"""The emulator's indexed Query patch (roles/data/files/moto_patches/indexed_query.py) answers
exactly what moto's original Table.query answers (items, count, LastEvaluatedKey), page by
page, on random tables and random queries; it looks only at the page it returns; and it is
what the API serves."""

from __future__ import annotations

import string
import threading
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

from tests.emulator_patches import entry_point, patch_module

entry_point().patch()  # the table patches, as the emulator installs them
emu = patch_module("indexed_query")
fast_path = patch_module("fast_path")
ORIGINAL = emu.original_query()
PARTITIONS = ["r1", "r2", "r3"]
N_KEYS = [str(i) for i in range(-3, 25)] + ["1.5", "2.0", "7.25"]
S_KEYS = ["a", "ab", "abc", "b", "ba", "bz", "c", "ca", "\u00e9", "\u00e9a", "z"]
OPS = ["=", "EQ", "<", "LT", "<=", "LE", ">", "GT", ">=", "GE", "BETWEEN", "BEGINS_WITH", None]


def new_table(range_type: str) -> Table:
    return Table("t", account_id="123456789012", region="ap-northeast-2",  # type: ignore[abstract]
                 schema=[{"AttributeName": "room", "KeyType": "HASH"},
                         {"AttributeName": "seq", "KeyType": "RANGE"}],
                 attr=[{"AttributeName": "room", "AttributeType": "S"},
                       {"AttributeName": "seq", "AttributeType": range_type}])


def key(t: str, value: str) -> dict[str, str]:
    return {t: value}


def run(fn: Any, table: Table, q: dict[str, Any], esk: dict[str, Any] | None) -> Any:
    rng = q["range"]
    conditions = None
    if rng is not None and q["new_interface"]:
        conditions = [("seq", rng[0], rng[1])]
    filter_op = None
    if q["filter"]:
        filter_op = get_filter_expression(q["filter"], None, {":f": {"N": "3"}})
    items, count, lek = fn(table, DynamoType({"S": q["hash"]}),
                           rng[0] if rng else None, rng[1] if rng else [], q["limit"], esk,
                           q["forward"], None, None, False, filter_op,
                           hash_key_conditions=[("room", DynamoType({"S": q["hash"]}))],
                           range_key_conditions=conditions)
    return [i.to_json() for i in items], count, lek


@st.composite
def scenario(draw: st.DrawFn) -> tuple[str, list[tuple[Any, ...]], list[dict[str, Any]]]:
    t = draw(st.sampled_from(["N", "S"]))
    keys = N_KEYS if t == "N" else S_KEYS
    ops = draw(st.lists(st.tuples(st.sampled_from(["put", "put", "put", "delete"]),
                                  st.sampled_from(["r1", "r1", "r1", "r2", "r3"]),
                                  st.sampled_from(keys), st.integers(0, 6)),
                        min_size=draw(st.integers(0, 60)), max_size=120))
    queries = []
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from([o for o in OPS if t == "S" or o != "BEGINS_WITH"]))
        if op is None:
            rng = None
        elif op == "BETWEEN":
            a, b = sorted(draw(st.lists(st.sampled_from(keys), min_size=2, max_size=2)),
                          key=lambda v: DynamoType({t: v}).cast_value)
            rng = (op, [DynamoType({t: a}), DynamoType({t: b})])
        elif op == "BEGINS_WITH":
            rng = (op, [DynamoType({"S": draw(st.sampled_from(["a", "b", "ab", "\u00e9", "q"]))})])
        else:
            rng = (op, [DynamoType({t: draw(st.sampled_from(keys))})])
        queries.append({
            "hash": draw(st.sampled_from(["r1", "r1", "r2", "r3", "nobody"])), "range": rng,
            "limit": draw(st.one_of(st.none(), st.integers(1, 6))),
            "forward": draw(st.booleans()), "new_interface": draw(st.booleans()),
            "filter": draw(st.sampled_from([None, "v > :f"])),
            "esk": draw(st.one_of(st.none(), st.tuples(st.sampled_from(PARTITIONS),
                                                       st.sampled_from(keys)))),
            "interleave": draw(st.booleans()),
        })
    return t, ops, queries


def apply(table: Table, t: str, op: tuple[Any, ...]) -> None:
    kind, room, rk, v = op
    if kind == "put":
        table.put_item({"room": {"S": room}, "seq": {t: rk}, "v": {"N": str(v)},
                        "pad": {"S": "x" * v}})
    else:
        table.delete_item(DynamoType({"S": room}), DynamoType({t: rk}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_patched_query_equals_moto_query(case: tuple[str, list[tuple[Any, ...]],
                                                     list[dict[str, Any]]]) -> None:
    t, ops, queries = case
    table = new_table(t)
    half = len(ops) // 2
    for op in ops[:half]:
        apply(table, t, op)
    for n, q in enumerate(queries):
        if q["interleave"] and n == 1:
            for op in ops[half:]:  # changes after the index was built: it must follow them
                apply(table, t, op)
        # an arbitrary start key first (may name a missing item or another partition)
        if q["esk"] is not None:
            start = {"room": {"S": q["esk"][0]}, "seq": {t: q["esk"][1]}}
            assert run(Table.query, table, q, start) == run(ORIGINAL, table, q, start)
        # then paginate from the start until exhausted, comparing every page
        esk: dict[str, Any] | None = None
        for _ in range(100):
            got = run(Table.query, table, q, esk)
            assert got == run(ORIGINAL, table, q, esk)
            esk = got[2]
            if esk is None:
                break
        else:
            pytest.fail("pagination did not end")


def test_overwrite_and_delete_are_seen() -> None:
    table = new_table("N")
    q = {"hash": "r1", "range": None, "limit": None, "forward": True, "new_interface": False,
         "filter": None}
    for i in range(10):
        apply(table, "N", ("put", "r1", str(i), 0))
    assert len(run(Table.query, table, q, None)[0]) == 10  # index built
    apply(table, "N", ("put", "r1", "3", 5))  # overwrite under the same key
    apply(table, "N", ("put", "r1", "3.0", 6))  # the same key spelled differently
    apply(table, "N", ("delete", "r1", "7", 0))
    apply(table, "N", ("put", "r1", "100", 1))
    items = run(Table.query, table, q, None)[0]
    assert items == run(ORIGINAL, table, q, None)[0]
    seqs = [i["Attributes"]["seq"]["N"] for i in items]
    three = [i["Attributes"]["v"]["N"] for i in items if float(i["Attributes"]["seq"]["N"]) == 3]
    assert three == ["6"]
    assert seqs[-2:] == ["9", "100"]
    assert "7" not in seqs


def test_query_looks_only_at_the_page() -> None:
    """The candidates handed to moto are the page and the item where it stops, not the
    partition (that is what makes a query O(log n + page))."""
    table = new_table("N")
    for room in ("big", "other"):
        for i in range(2000):
            apply(table, "N", ("put", room, str(i), 1))
    h = DynamoType({"S": "big"})
    latest = emu._candidates(table, h, None, [], 50, None, False)
    assert [int(i.range_key.value) for i in latest] == list(range(1949, 2000))
    since = emu._candidates(table, h, ">", [DynamoType({"N": "1500"})], 50, None, True)
    assert [int(i.range_key.value) for i in since] == list(range(1501, 1552))
    gap = emu._candidates(table, h, "BETWEEN", [DynamoType({"N": "10"}), DynamoType({"N": "20"})],
                          None, None, True)
    assert [int(i.range_key.value) for i in gap] == list(range(10, 22))
    page2 = emu._candidates(table, h, ">", [DynamoType({"N": "0"})], 50,
                            {"room": {"S": "big"}, "seq": {"N": "1000"}}, True)
    assert [int(i.range_key.value) for i in page2] == list(range(1001, 1052))


def test_result_size_limit_matches_moto() -> None:
    """Big items: moto cuts the page at 1 MB, also at an item past the key condition."""
    table = new_table("N")
    for i, kb in enumerate([300, 300, 300, 10, 390, 300, 50]):
        table.put_item({"room": {"S": "r"}, "seq": {"N": str(i)}, "v": {"N": "1"},
                        "pad": {"S": "x" * (kb * 1000)}})
    for rng in [None, ("BETWEEN", [DynamoType({"N": "1"}), DynamoType({"N": "3"})]),
                ("<=", [DynamoType({"N": "3"})]), (">=", [DynamoType({"N": "4"})])]:
        for forward in (True, False):
            q = {"hash": "r", "range": rng, "limit": None, "forward": forward,
                 "new_interface": True, "filter": None}
            esk = None
            while True:
                got = run(Table.query, table, q, esk)
                assert got == run(ORIGINAL, table, q, esk)
                if got[2] is None:
                    break
                esk = got[2]


def test_concurrent_puts_and_queries() -> None:
    """moto's server is threaded: queries while other threads write see every acked item."""
    table = new_table("N")
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for i in range(300):
                apply(table, "N", ("put", "r", str(base + i), 0))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(b,)) for b in (0, 1000, 2000)]
    for th in threads:
        th.start()
    q = {"hash": "r", "range": (">", [DynamoType({"N": "-1"})]), "limit": 20,
         "forward": False, "new_interface": True, "filter": None}
    while any(th.is_alive() for th in threads):
        items, count, _ = run(Table.query, table, q, None)
        seqs = [int(i["Attributes"]["seq"]["N"]) for i in items]
        assert seqs == sorted(seqs, reverse=True) and count == len(seqs)
    for th in threads:
        th.join()
    assert not errors
    q["limit"] = None
    assert len(run(Table.query, table, q, None)[0]) == 900
    assert run(Table.query, table, q, None) == run(ORIGINAL, table, q, None)


def test_api_serves_the_patched_query() -> None:
    """Through boto3 (moto's own request parsing): history, latest page and gap reads."""
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="ap-northeast-2")
        ddb.create_table(TableName="messages", BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": "room", "KeyType": "HASH"},
                                    {"AttributeName": "seq", "KeyType": "RANGE"}],
                         AttributeDefinitions=[{"AttributeName": "room", "AttributeType": "S"},
                                               {"AttributeName": "seq", "AttributeType": "N"}])
        for room in ("lobby", "other"):
            for i in range(1, 121):
                ddb.put_item(TableName="messages",
                             Item={"room": {"S": room}, "seq": {"N": str(i)},
                                   "body": {"S": string.ascii_lowercase[i % 26]}})
        ddb.delete_item(TableName="messages", Key={"room": {"S": "lobby"}, "seq": {"N": "60"}})

        def query(**kw: Any) -> list[int]:
            out: list[int] = []
            while True:
                r = ddb.query(TableName="messages", **kw)
                out += [int(i["seq"]["N"]) for i in r["Items"]]
                if "LastEvaluatedKey" not in r:
                    return out
                kw["ExclusiveStartKey"] = r["LastEvaluatedKey"]

        values = {":r": {"S": "lobby"}, ":s": {"N": "50"}}
        assert query(KeyConditionExpression="room = :r AND seq > :s",
                     ExpressionAttributeValues=values, Limit=7) == \
            [i for i in range(51, 121) if i != 60]
        latest = ddb.query(TableName="messages", KeyConditionExpression="room = :r",
                           ExpressionAttributeValues={":r": {"S": "lobby"}},
                           ScanIndexForward=False, Limit=5)
        assert [int(i["seq"]["N"]) for i in latest["Items"]] == [120, 119, 118, 117, 116]
        assert latest["LastEvaluatedKey"] == {"room": {"S": "lobby"}, "seq": {"N": "116"}}
        assert query(KeyConditionExpression="room = :r AND seq BETWEEN :a AND :b",
                     ExpressionAttributeValues={":r": {"S": "lobby"}, ":a": {"N": "58"},
                                                ":b": {"N": "62"}}) == [58, 59, 61, 62]
        assert ddb.describe_table(TableName="messages")["Table"]["TableId"]


def test_a_cancelled_transaction_restores_a_consistent_index() -> None:
    """moto rolls a cancelled TransactWriteItems back to a deepcopy of the table: the copy's
    index must describe the copy's items."""
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="ap-northeast-2")
        ddb.create_table(TableName="m", BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": "room", "KeyType": "HASH"},
                                    {"AttributeName": "seq", "KeyType": "RANGE"}],
                         AttributeDefinitions=[{"AttributeName": "room", "AttributeType": "S"},
                                               {"AttributeName": "seq", "AttributeType": "N"}])
        for i in range(1, 6):
            ddb.put_item(TableName="m", Item={"room": {"S": "r"}, "seq": {"N": str(i)}})
        kw: dict[str, Any] = dict(TableName="m", KeyConditionExpression="room = :r",
                                  ExpressionAttributeValues={":r": {"S": "r"}})
        assert [int(i["seq"]["N"]) for i in ddb.query(**kw)["Items"]] == [1, 2, 3, 4, 5]
        with pytest.raises(ddb.exceptions.TransactionCanceledException):
            ddb.transact_write_items(TransactItems=[
                {"Put": {"TableName": "m", "Item": {"room": {"S": "r"}, "seq": {"N": "9"}}}},
                {"Delete": {"TableName": "m", "Key": {"room": {"S": "r"}, "seq": {"N": "2"}}}},
                {"Put": {"TableName": "m", "Item": {"room": {"S": "r"}, "seq": {"N": "3"}},
                         "ConditionExpression": "attribute_not_exists(seq)"}}])
        assert [int(i["seq"]["N"]) for i in ddb.query(**kw)["Items"]] == [1, 2, 3, 4, 5]
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": "m", "Item": {"room": {"S": "r"}, "seq": {"N": "9"}}}},
            {"Delete": {"TableName": "m", "Key": {"room": {"S": "r"}, "seq": {"N": "2"}}}}])
        assert [int(i["seq"]["N"]) for i in ddb.query(**kw, ScanIndexForward=False,
                                                      Limit=3)["Items"]] == [9, 5, 4]


@pytest.mark.parametrize("raw", [
    b"Host: 127.0.0.1:8000\r\nX-Amz-Target: DynamoDB_20120810.PutItem\r\n"
    b"Content-Length: 12\r\nX-Empty:\r\nX-Spaced: \t a b  \r\n\r\n",
    b"Host: h\r\nX-Folded: one\r\n  two\r\n\r\n",  # obs-fold: the email parser's answer
    b"Host: h\r\nBad Name : v\r\nno colon\r\n\r\n",  # malformed: the email parser's too
    b"Host: h\nBare-LF: v\n\n",
    b"\r\n",
])
def test_the_fast_header_parser_gives_what_http_client_gives(raw: bytes) -> None:
    import http.client
    from io import BytesIO

    want = http.client.parse_headers(BytesIO(raw + b"BODY"))
    fp = BytesIO(raw + b"BODY")
    got = fast_path._fast_parse_headers(fp)
    assert type(got) is type(want)
    assert got.items() == want.items()
    assert fp.read() == b"BODY"  # the body is left unread, as before
