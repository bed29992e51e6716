"""The chat service against real redis-server and moto server, two instances (blue, green)."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.chatstack import ChatClient, ChatInstance, ChatStack, http

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def new_room() -> str:
    return "t-" + uuid.uuid4().hex[:10]


async def test_message_reaches_clients_on_both_instances(chat_pair):
    blue, green = chat_pair
    room = new_room()
    alice = await ChatClient.connect(blue.ws_url(room, "alice"))
    bob = await ChatClient.connect(green.ws_url(room, "bob"))
    assert alice.welcome["color"] == "blue" and bob.welcome["color"] == "green"
    assert alice.welcome["user_id"] != bob.welcome["user_id"]
    cid = await alice.send("안녕 <b>hi</b>")
    await alice.wait_for(lambda: cid in alice.acks)
    seq = alice.acks[cid]
    for c in (alice, bob):
        await c.wait_for(lambda c=c: seq in c.messages)
        msg = c.messages[seq]
        assert msg == {"type": "message", "room": room, "seq": seq,
                       "user_id": alice.welcome["user_id"], "name": "alice",
                       "text": "안녕 <b>hi</b>", "ts": msg["ts"], "color": "blue"}
    await alice.close()
    await bob.close()


async def test_presence_counts_connections_by_color(chat_pair):
    blue, green = chat_pair
    room = new_room()
    a = await ChatClient.connect(blue.ws_url(room, "a"))
    b = await ChatClient.connect(green.ws_url(room, "b"))
    c = await ChatClient.connect(green.ws_url(room, "c"))
    want = {"type": "presence", "online": 3, "by_color": {"blue": 1, "green": 2}}
    await a.wait_for(lambda: a.presence and a.presence[-1] == want, what="presence 3")
    await c.close()
    want2 = {"type": "presence", "online": 2, "by_color": {"blue": 1, "green": 1}}
    await a.wait_for(lambda: a.presence[-1] == want2, what="presence 2")
    await b.wait_for(lambda: b.presence[-1] == want2, what="presence 2 on green")
    await a.close()
    await b.close()


async def test_concurrent_senders_on_both_instances_in_order_exactly_once(chat_pair):
    blue, green = chat_pair
    room = new_room()
    clients = [await ChatClient.connect((blue if i % 2 else green).ws_url(room, f"u{i}"))
               for i in range(6)]
    per_client = 10  # within the burst of the rate limit

    async def burst(c: ChatClient, i: int) -> list[str]:
        return [await c.send(f"m{i}-{k}") for k in range(per_client)]

    sent = await asyncio.gather(*(burst(c, i) for i, c in enumerate(clients)))
    total = per_client * len(clients)
    for c, cids in zip(clients, sent, strict=True):
        await c.wait_for(lambda c=c, cids=cids: all(x in c.acks for x in cids), what="acks")
    acked = sorted(s for c in clients for s in c.acks.values())
    assert len(set(acked)) == total
    for c in clients:
        await c.wait_for(lambda c=c: len(c.seqs) >= total, what="all messages")
        await asyncio.sleep(0)
        assert c.seqs == acked, "every client: each message once, in seq order"
    # seqs are contiguous: no number was lost between two instances
    assert acked == list(range(acked[0], acked[0] + total))
    for c in clients:
        await c.close()


async def test_resend_of_same_client_id_is_stored_and_delivered_once(chat_pair):
    blue, green = chat_pair
    room = new_room()
    a = await ChatClient.connect(blue.ws_url(room, "a"))
    watcher = await ChatClient.connect(green.ws_url(room, "w"))
    cid = await a.send("only once")
    await a.wait_for(lambda: cid in a.acks)
    first = a.acks[cid]
    # retry after a "reconnect", on the other instance
    a2 = await ChatClient.connect(green.ws_url(room, "a", since=first))
    await a2.send("only once", client_id=cid)
    await a2.wait_for(lambda: cid in a2.acks)
    assert a2.acks[cid] == first
    marker = await a2.send("after")
    await a2.wait_for(lambda: marker in a2.acks)
    await watcher.wait_for(lambda: a2.acks[marker] in watcher.messages)
    texts = [watcher.messages[s]["text"] for s in watcher.seqs]
    assert texts.count("only once") == 1
    _, body = blue.get(f"/api/rooms/{room}/messages")
    stored = [m["text"] for m in json.loads(body)["messages"]]
    assert stored == ["only once", "after"]
    for c in (a, a2, watcher):
        await c.close()


async def test_history_api_limit_counts_messages_not_voided_numbers(chat_pair):
    # docs/protocol.md: "the first `limit` messages with `seq > since`". Each resend of an
    # acked client_id takes a number and voids it; those numbers must not fill the page.
    blue, green = chat_pair
    room = new_room()
    a = await ChatClient.connect(blue.ws_url(room, "a"))
    texts = ["m1", "m2", "m3", "m4", "m5", "m6"]
    acks: list[int] = []
    for i, t in enumerate(texts):
        cid = await a.send(t)
        await a.wait_for(lambda cid=cid: cid in a.acks)
        acks.append(a.acks[cid])
        if i in (1, 3):  # resend, on the other instance, after m2 and after m4 (twice)
            again = await ChatClient.connect(green.ws_url(room, "a", since=acks[-1]))
            for _ in range(1 + (i == 3)):
                await again.send(t, client_id=cid)
                await again.wait_for(lambda c=again, k=cid: c.acks.get(k) == acks[-1])
                again.acks.pop(cid)
            await again.close()
    assert acks[:2] == [1, 2] and acks[2] > 3 and acks[4] > acks[3] + 1, acks  # voids between
    status, body = blue.get(f"/api/rooms/{room}/messages?since=0&limit=5")
    assert status == 200
    got = json.loads(body)["messages"]
    assert [m["text"] for m in got] == texts[:5]
    assert [m["seq"] for m in got] == acks[:5]
    _, body = green.get(f"/api/rooms/{room}/messages?since={acks[1]}&limit=2")
    assert [m["text"] for m in json.loads(body)["messages"]] == ["m3", "m4"]
    _, body = blue.get(f"/api/rooms/{room}/messages?limit=4")  # the latest 4
    assert [m["text"] for m in json.loads(body)["messages"]] == texts[2:]
    await a.close()


async def test_resume_with_since_after_a_dropped_connection(chat_pair):
    blue, green = chat_pair
    room = new_room()
    sender = await ChatClient.connect(green.ws_url(room, "s"))
    reader = await ChatClient.connect(blue.ws_url(room, "r"))
    cids = [await sender.send(f"before {i}") for i in range(3)]
    await reader.wait_for(lambda: len(reader.seqs) == 3)
    last = reader.seqs[-1]
    reader.ws.transport.abort()  # dropped, no close handshake
    await reader.closed()
    cids += [await sender.send(f"while away {i}") for i in range(4)]
    await sender.wait_for(lambda: all(c in sender.acks for c in cids))
    back = await ChatClient.connect(blue.ws_url(room, "r", since=last))
    assert [m["text"] for m in back.history["messages"]] == [f"while away {i}"
                                                               for i in range(4)]
    cid = await sender.send("live again")
    await back.wait_for(lambda: sender.acks.get(cid) in back.messages)
    assert back.seqs == list(range(last + 1, last + 6))
    for c in (sender, back):
        await c.close()


async def test_history_without_since_is_the_latest_50(chat_pair):
    blue, _ = chat_pair
    room = new_room()
    s = await ChatClient.connect(blue.ws_url(room, "s"))
    for i in range(55):
        if i and i % 10 == 0:
            await asyncio.sleep(2.1)  # stay under the rate limit
        await s.send(f"n{i}")
    await s.wait_for(lambda: len(s.acks) == 55, within=30)
    late = await ChatClient.connect(blue.ws_url(room, "late"))
    texts = [m["text"] for m in late.history["messages"]]
    assert texts == [f"n{i}" for i in range(5, 55)]
    assert late.welcome["seq"] == max(s.acks.values())
    status, body = blue.get(f"/api/rooms/{room}/messages?since=50&limit=3")
    assert status == 200
    assert [m["seq"] for m in json.loads(body)["messages"]] == [51, 52, 53]
    for c in (s, late):
        await c.close()


async def test_bad_frames_get_error_codes_and_the_connection_keeps_working(chat_pair):
    blue, _ = chat_pair
    room = new_room()
    c = await ChatClient.connect(blue.ws_url(room, "x"))
    cases = [
        ("{not json", "bad_json"),
        (json.dumps({"type": "shout", "text": "hi"}), "unknown_type"),
        (json.dumps([1, 2]), "invalid"),
        (json.dumps({"type": "send", "text": "   ", "client_id": "a"}), "invalid"),
        (json.dumps({"type": "send", "text": "hi"}), "invalid"),
        (json.dumps({"type": "send", "text": "x" * 2001, "client_id": "b"}), "too_long"),
    ]
    for raw, _ in cases:
        await c.ws.send(raw)
    await c.ws.send(b"\x00binary")
    codes = [code for _, code in cases] + ["invalid"]
    await c.wait_for(lambda: len(c.errors) == len(codes), what="error frames")
    assert [e["code"] for e in c.errors] == codes
    assert all(e["type"] == "error" and e["message"] for e in c.errors)
    cid = await c.send("x" * 2000)  # the limit itself is fine
    await c.wait_for(lambda: cid in c.acks)
    await c.close()


async def test_frame_over_16_kib_closes_with_1009(chat_pair):
    blue, _ = chat_pair
    c = await ChatClient.connect(blue.ws_url(new_room(), "big"))
    await c.ws.send(json.dumps({"type": "send", "text": "y" * 17000, "client_id": "z"}))
    assert await c.closed() == 1009


async def test_rate_limit_5_per_second_burst_10(chat_pair):
    blue, _ = chat_pair
    c = await ChatClient.connect(blue.ws_url(new_room(), "fast"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(25):
        await c.send_json({"type": "ping"})
    await c.wait_for(lambda: len(c.frames) >= 25, what="25 answers")
    elapsed = loop.time() - started
    pongs = sum(1 for f in c.frames if f["type"] == "pong")
    limited = [e for e in c.errors if e["code"] == "rate_limited"]
    # burst of 10, then 5 per second of however long the 25 frames took to arrive
    assert 10 <= pongs <= 10 + int(5 * elapsed) + 1
    assert len(limited) == 25 - pongs >= 10
    await asyncio.sleep(1.0)  # the bucket refills at 5/s
    cid = await c.send("still here")
    await c.wait_for(lambda: cid in c.acks)
    await c.close()


@pytest.mark.parametrize("query", [
    "room=&name=a", "room=a&name=", "room=a", "name=a", "room=a%3Cb&name=x",
    "room=" + "r" * 33 + "&name=x", "room=a&name=x&since=-1", "room=a&name=x&since=abc",
    "room=a&name=%20%20",
])
async def test_bad_join_query_is_http_400_before_upgrade(chat_pair, query):
    blue, _ = chat_pair
    with pytest.raises(InvalidStatus) as e:
        await websockets.connect(f"ws://127.0.0.1:{blue.port}/ws?{query}", open_timeout=5)
    assert e.value.response.status_code == 400


async def test_foreign_origin_is_refused_and_same_origin_allowed(chat_pair):
    blue, _ = chat_pair
    room = new_room()
    with pytest.raises(InvalidStatus) as e:
        await websockets.connect(blue.ws_url(room, "o"), origin="https://evil.example",
                                 open_timeout=5)
    assert e.value.response.status_code == 403
    ok = await ChatClient.connect(blue.ws_url(room, "o"),
                                  origin=f"http://127.0.0.1:{blue.port}")
    await ok.close()


async def test_http_endpoints_and_security_headers(chat_pair):
    blue, green = chat_pair
    status, body, headers = http("GET", blue.url + "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert blue.get_json("/readyz") == {"status": "ready"}
    v = green.get_json("/version")
    assert v["color"] == "green" and v["version"] == "v2" and v["server"]
    _, metrics = blue.get("/metrics")
    text = metrics.decode()
    for name in ("chat_connections", "chat_handshakes_total", "chat_sends_total",
                 "chat_messages_out_total", "chat_errors_total",
                 "chat_http_requests_total", "chat_ack_latency_seconds_bucket",
                 "chat_store_latency_seconds_bucket", "chat_delivery_latency_seconds_bucket",
                 "chat_draining"):
        assert f'\n{name}{{color="blue",version="v1"' in text, name
    assert 'chat_sends_total{color="blue",version="v1",outcome="error"}' in text
    status, _ = blue.get("/api/rooms/bad%3Croom/messages")
    assert status == 400
    status, _ = blue.get(f"/api/rooms/{new_room()}/messages?limit=0")
    assert status == 400


async def test_admin_api_needs_the_bearer_token(chat_stack: ChatStack, chat_pair):
    blue, green = chat_pair
    assert chat_stack.admin(blue, "/api/admin/drain", {"color": "nope"}, token="")[0] == 401
    assert chat_stack.admin(blue, "/api/admin/drain", {"color": "nope"},
                            token="wrong")[0] == 401
    assert chat_stack.admin(blue, "/api/admin/deploy-event", {"action": "step"},
                            token="")[0] == 401
    status, body = chat_stack.admin(blue, "/api/admin/deploy-event", {
        "action": "step", "weights": {"blue": 50, "green": 50}, "ok": True,
        "gates": {"error_rate": 0.0}, "message": "50/50"})
    assert status == 201, body
    stats = blue.get_json("/api/stats")
    assert stats["weights"]["blue"] == 50 and stats["weights"]["green"] == 50
    assert stats["events"][0]["action"] == "step"
    assert stats["events"][0]["message"] == "50/50"
    # instances write their figures every second; any instance aggregates all of them
    for _ in range(100):
        stats = green.get_json("/api/stats")
        if {"blue", "green"} <= set(stats["colors"]):
            break
        await asyncio.sleep(0.05)
    assert {"blue", "green"} <= set(stats["colors"])
    assert stats["colors"]["blue"]["instances"] >= 1
    assert stats["colors"]["green"]["version"] == "v2"


def test_admin_api_is_off_without_a_token(chat_stack: ChatStack):
    inst = chat_stack.start("blue", env={"CHAT_ADMIN_TOKEN": ""})
    try:
        status, _ = chat_stack.admin(inst, "/api/admin/drain", {"color": "blue"})
        assert status == 404
    finally:
        inst.stop()


async def test_slow_consumer_is_closed_1013_while_others_keep_receiving(chat_stack):
    inst = chat_stack.start("blue", env={"CHAT_SLOW_SECONDS": "2"})
    try:
        room = new_room()
        fast = await ChatClient.connect(inst.ws_url(room, "fast"))
        # A client that stops reading: tiny receive buffer, websockets' queue of 1 frame.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", inst.port))
        slow = await ChatClient.connect(inst.ws_url(room, "slow"), read=False, sock=sock,
                                        max_queue=1)
        senders = [await ChatClient.connect(inst.ws_url(room, f"s{i}")) for i in range(10)]
        text = "z" * 2000
        sent: list[str] = []

        def slow_closed() -> bool:  # the server logs each 1013 as a ws_fail event
            return any('"ws_fail"' in ln and '"code": 1013' in ln
                       for ln in inst.logs().splitlines())

        for _round in range(120):  # 4 messages/s per sender, until the slow one is out
            for s in senders:
                sent.append(await s.send(text))
            if slow_closed():
                break
            await asyncio.sleep(0.25)
        assert slow_closed()
        slow.start_reading()  # read what was buffered, then the close frame
        assert await slow.closed(within=20) == 1013
        assert len(slow.seqs) < len(sent)
        await fast.wait_for(lambda: len(fast.seqs) >= len(sent), within=30,
                            what="fast client got every message")
        assert fast.close_code is None and fast.seqs == sorted(fast.seqs)
        assert all(c.close_code is None and not c.errors for c in senders)
        _, metrics = inst.get("/metrics")
        assert 'chat_connections{color="blue",version="v1"} 11' in metrics.decode()
        for c in (fast, *senders):
            await c.close()
    finally:
        inst.stop()


async def test_storage_down_answers_unavailable_and_retry_succeeds(chat_stack, moto_server):
    inst = chat_stack.start("blue", env={"CHAT_FAULT_RATE": "1.0"})
    try:
        c = await ChatClient.connect(inst.ws_url(new_room(), "f"))
        await c.send("x", client_id="k1")
        await c.wait_for(lambda: c.errors, what="error")
        assert c.errors[0]["code"] == "unavailable"
        assert "k1" not in c.acks
        assert inst.get("/readyz")[0] == 200  # the fault switch leaves the instance ready
        assert inst.get("/api/stats")[0] == 500
        _, m = inst.get("/metrics")
        assert 'outcome="error"} 1' in m.decode()
        await c.close()
    finally:
        inst.stop()


def _ready(inst: ChatInstance) -> tuple[int, dict]:
    status, body = inst.get("/readyz")
    return status, json.loads(body)


def test_static_site_is_served_at_root_and_board(chat_stack: ChatStack, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>chat</title>")
    (site / "board.html").write_text("<!doctype html><title>board</title>")
    (site / "app.js").write_text("console.log(1);")
    inst = chat_stack.start("blue", static=site)
    try:
        status, body, headers = http("GET", inst.url + "/")
        assert status == 200 and b"<title>chat</title>" in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        status, body, _ = http("GET", inst.url + "/board")
        assert status == 200 and b"<title>board</title>" in body
        status, body, headers = http("GET", inst.url + "/app.js")
        assert status == 200 and "javascript" in headers["Content-Type"]
        assert http("GET", inst.url + "/healthz")[0] == 200  # routes win over files
        assert http("GET", inst.url + "/../../etc/passwd")[0] in (400, 404)
    finally:
        inst.stop()


def test_init_tables_is_idempotent(chat_stack: ChatStack):
    chat_stack.init_tables()  # the fixture already ran it once
    chat_stack.init_tables()


@pytest.mark.parametrize("path,body", [
    ("/api/admin/drain", {}),
    ("/api/admin/drain", {"color": "Not A Color!"}),
    ("/api/admin/undrain", {"colour": "green"}),
    ("/api/admin/deploy-event", {"weights": {"blue": 1}}),
    ("/api/admin/deploy-event", {"action": "step", "weights": {"blue": "lots"}}),
    ("/api/admin/deploy-event", ["step"]),
])
def test_admin_calls_with_bad_bodies_are_400(chat_stack: ChatStack, chat_pair, path, body):
    blue, _ = chat_pair
    status, answer = chat_stack.admin(blue, path, body)
    assert status == 400 and answer["error"]
    assert blue.get("/readyz")[0] == 200  # nothing was drained


async def test_each_connection_is_recorded_in_dynamodb_with_ttl_and_removed_on_close(
        chat_pair, moto_server):
    import boto3

    blue, _ = chat_pair
    room = new_room()
    ddb = boto3.client("dynamodb", endpoint_url=moto_server.url, region_name="ap-northeast-2")

    def records() -> list[dict]:
        items = ddb.scan(TableName="connections", FilterExpression="room = :r",
                         ExpressionAttributeValues={":r": {"S": room}})["Items"]
        return [i for i in items if not i["connection_id"]["S"].startswith("dedup#")]

    c = await ChatClient.connect(blue.ws_url(room, "rec"))
    await c.wait_for(lambda: len(records()) == 1, what="connection item")
    item = records()[0]
    assert item["user_id"]["N"] == str(c.welcome["user_id"])
    assert item["color"]["S"] == "blue" and item["version"]["S"] == "v1"
    assert item["instance"]["S"] == c.welcome["server"]
    assert int(item["ttl"]["N"]) > int(item["connected_at"]["N"]) // 1000
    await c.close()
    await c.wait_for(lambda: not records(), what="item removed")


async def test_hangul_room_and_name_work_over_ws_and_http(chat_pair):
    import urllib.parse

    blue, green = chat_pair
    room = "방 " + uuid.uuid4().hex[:6]
    a = await ChatClient.connect(blue.ws_url(room, "민수"))
    b = await ChatClient.connect(green.ws_url(room, "지연"))
    cid = await a.send("안녕하세요")
    await b.wait_for(lambda: cid in a.acks and a.acks[cid] in b.messages)
    assert b.messages[a.acks[cid]]["name"] == "민수"
    status, body = blue.get(f"/api/rooms/{urllib.parse.quote(room)}/messages")
    assert status == 200
    got = json.loads(body)
    assert got["room"] == room and [m["text"] for m in got["messages"]] == ["안녕하세요"]
    await a.close()
    await b.close()
