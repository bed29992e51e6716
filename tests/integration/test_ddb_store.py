"""MessageStore on a real moto server through each DynamoDB client (CHAT_DYNAMODB_CLIENT):
the same answers, the same exception behaviour."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from chat.config import Config
from chat.ddb import DynamoDB
from chat.store import MessageStore, StoreUnavailable
from tests.conftest import Service, free_port
from tests.storestack import claim_alone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(params=["ddb", "botocore"])
async def store(request: pytest.FixtureRequest, moto_server: Service
                ) -> AsyncIterator[MessageStore]:
    suffix = uuid.uuid4().hex[:6]
    cfg = Config(dynamodb_endpoint=moto_server.url, table_messages=f"m-{suffix}",
                 table_connections=f"c-{suffix}", table_user_counter=f"u-{suffix}",
                 dynamodb_client=request.param)
    s = MessageStore(cfg)
    await s.start()
    await s.init_tables()
    yield s
    await s.close()


async def test_the_switch_picks_the_client(store: MessageStore) -> None:
    assert isinstance(store.client, DynamoDB) == (store.config.dynamodb_client == "ddb")


def test_the_switch_is_read_from_the_environment() -> None:
    assert Config.from_env({}).dynamodb_client == "ddb"
    assert Config.from_env({"CHAT_DYNAMODB_CLIENT": "botocore"}).dynamodb_client == "botocore"
    with pytest.raises(ValueError):
        Config.from_env({"CHAT_DYNAMODB_CLIENT": "boto"})


async def test_send_join_and_history_calls(store: MessageStore) -> None:
    assert await store.latest_seq("r") == 0
    first = await store.next_user_id()
    assert await store.next_user_id() == first + 1
    a = await store.append(room="r", user_id=1, name="n", text="héllo ✓", client_id="c1",
                           color="blue")
    b = await store.append(room="r", user_id=2, name="m", text="two", client_id="c2",
                           color="green")
    assert (a.seq, b.seq) == (1, 2) and not a.duplicate and a.frame is not None
    again = await store.append(room="r", user_id=1, name="n", text="héllo ✓", client_id="c1",
                               color="blue")
    assert again.duplicate and again.seq == 1  # ConditionalCheckFailed recognised
    assert await store.latest_seq("r") == 3  # the resend took 3, found its claim, voided 3
    items = await store.query("r", since=0, limit=10)
    assert [(int(i["seq"]["N"]), i.get("text", {}).get("S"), "void" in i) for i in items] == [
        (1, "héllo ✓", False), (2, "two", False), (3, None, True)]
    found = await store.range("r", 1, 4)
    assert set(found) == {1, 2, 3} and found[3] is None
    assert found[1] is not None and found[1]["text"] == "héllo ✓"
    # the fence of a stored number returns it (its conditional put fails, then a get)
    fenced = await store.fence("r", 2)
    assert fenced is not None and fenced["text"] == "two"
    assert await store.fence("r", 9) is None
    cid = await store.add_connection(user_id=1, room="r", instance="i", color="blue",
                                     version="v1")
    await store.remove_connection(cid)
    await store.ping()
    assert store.answered_recently(5.0)


async def test_history_latest_and_since_with_a_limit(store: MessageStore) -> None:
    for i in range(6):
        await store.append(room="p", user_id=1, name="n", text=f"m{i}", client_id=f"k{i}",
                           color="blue")
    latest = await store.query("p", since=None, limit=3)
    assert [int(i["seq"]["N"]) for i in latest] == [4, 5, 6]
    after = await store.query("p", since=2, limit=2)
    assert [int(i["seq"]["N"]) for i in after] == [3, 4]


@pytest.mark.parametrize("client", ["ddb", "botocore"])
async def test_nothing_listening_is_store_unavailable(client: str) -> None:
    s = MessageStore(Config(dynamodb_endpoint=f"http://127.0.0.1:{free_port()}",
                            dynamodb_client=client))
    await s.start()
    try:
        with pytest.raises(StoreUnavailable):
            await s.ping()
        with pytest.raises(StoreUnavailable):
            await s.append(room="r", user_id=1, name="n", text="t", client_id="c",
                           color="blue")
        assert not s.answered_recently(5.0)
    finally:
        await s.close()


async def test_a_resend_is_never_acked_with_another_senders_message(
        store: MessageStore) -> None:
    # two senders holding one number (moto's non-atomic ADD on a new counter): the first
    # stored its message under 1; the other's claim points at 1 as well
    owner = await store.append(room="x", user_id=1, name="a", text="mine", client_id="A",
                               color="blue")
    assert owner.seq == 1
    assert await claim_alone(store, "x", "B", 1)
    resent = await store.append(room="x", user_id=2, name="b", text="theirs", client_id="B",
                                color="green")
    assert not resent.duplicate and resent.seq > 1 and resent.frame is not None
    items = await store.query("x", since=0, limit=10)
    by_seq = {int(i["seq"]["N"]): i.get("client_id", {}).get("S") for i in items
              if "void" not in i}
    assert by_seq == {1: "A", resent.seq: "B"}
    # and B's record now names its own message: a further resend is its duplicate
    again = await store.append(room="x", user_id=2, name="b", text="theirs", client_id="B",
                               color="green")
    assert again.duplicate and again.seq == resent.seq


async def _room_with_voids(store: MessageStore, room: str, pattern: str) -> list[int]:
    """Fill `room` by `pattern`: 'm' stores a message, 'v' voids the next number (a resend
    of the room's first message: its claim names a stored seq, so the number it took is
    voided). Returns the seqs of the stored messages."""
    stored: list[int] = []
    for i, kind in enumerate(pattern):
        cid = "first" if kind == "v" or not stored else f"k{i}"
        r = await store.append(room=room, user_id=1, name="n", text=f"t{i}", client_id=cid,
                               color="blue")
        if kind == "m":
            assert not r.duplicate
            stored.append(r.seq)
        else:
            assert r.duplicate and r.seq == stored[0]
    return stored


async def test_messages_count_messages_never_void_numbers(store: MessageStore) -> None:
    # seq: 1 m, 2 m, 3 void, 4 m, 5 void, 6 void, 7 m, 8 m, 9 m, 10 void
    stored = await _room_with_voids(store, "h", "mmvmvvmmmv")
    assert stored == [1, 2, 4, 7, 8, 9]
    raw = await store.query("h", since=0, limit=5)
    assert [int(i["seq"]["N"]) for i in raw] == [1, 2, 3, 4, 5]  # raw items count voids
    got = await store.messages_page("h", since=0, limit=5)
    assert [m["seq"] for m in got] == [1, 2, 4, 7, 8]
    assert [m["text"] for m in got] == ["t0", "t1", "t3", "t6", "t7"]
    assert [m["seq"] for m in await store.messages_page("h", since=2, limit=2)] == [4, 7]
    assert [m["seq"] for m in await store.messages_page("h", since=4, limit=1)] == [7]
    # the end of the room comes first: fewer than limit
    assert [m["seq"] for m in await store.messages_page("h", since=7, limit=5)] == [8, 9]
    assert await store.messages_page("h", since=9, limit=5) == []
    # the latest `limit`, oldest first, skipping the void 10 at the end and 5, 6 inside
    assert [m["seq"] for m in await store.messages_page("h", since=None, limit=3)] == [7, 8, 9]
    assert [m["seq"] for m in await store.messages_page("h", since=None, limit=4)] == [4, 7, 8, 9]
    assert [m["seq"] for m in await store.messages_page("h", since=None, limit=50)] == stored


async def test_messages_read_past_a_run_of_voids_longer_than_the_limit(
        store: MessageStore) -> None:
    stored = await _room_with_voids(store, "run", "m" + "v" * 12 + "mm")
    assert stored == [1, 14, 15]
    assert [m["seq"] for m in await store.messages_page("run", since=1, limit=2)] == [14, 15]
    assert [m["seq"] for m in await store.messages_page("run", since=None, limit=2)] == [14, 15]
    assert [m["seq"] for m in await store.messages_page("run", since=None, limit=3)] == stored


async def test_messages_stop_after_the_page_bound(store: MessageStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # one page of 1 item (a void) is all the bound allows: the answer is short, not endless
    import chat.store
    await _room_with_voids(store, "b", "mvvm")
    monkeypatch.setattr(chat.store, "MESSAGES_MAX_PAGES", 1)
    assert await store.messages_page("b", since=1, limit=1) == []
    monkeypatch.setattr(chat.store, "MESSAGES_MAX_PAGES", 2)
    assert [m["seq"] for m in await store.messages_page("b", since=1, limit=1)] == [4]
