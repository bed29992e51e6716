"""Where a send's time goes at demo load: per-stage timing against a private stack.

    .venv/bin/python bench/send_stages.py [--users 100] [--rate 20] [--seconds 20]

Starts redis-server, the DynamoDB emulator and one chat process on free ports (the processes
the tests and the benchmark use), opens `--users` WebSockets to one room and sends `--rate`
messages a second in all, each from a random user, for `--seconds`. The chat process runs
with timing wrappers and reports, when it stops, each DynamoDB call of the send path by what
it writes (the room counter ADD, the idempotency record, the message, both in one
transaction, voids), the number's wait (`_number`: the ADD with its coalescing) and the whole
`append`. The client measures send -> ack at the sender, send -> delivery at every other
member and ack -> delivery (each member's receipt minus the sender's ack; negative when the
message arrives before the ack). A diagnostic, not a benchmark: nothing is asserted, and the
numbers include this client's own CPU on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from join_stages import print_stages, stage_stack, stage_timers  # noqa: E402


def serve(argv: list[str]) -> int:
    """`python -m chat serve` with timing wrappers; the samples go to $SEND_STAGES_OUT."""
    samples: dict[str, list[float]] = {}

    record, timed = stage_timers(samples)

    from chat import ddb, store

    store.MessageStore._number = timed("number (ADD, coalesced)",  # type: ignore[method-assign]
                                       store.MessageStore._number)
    store.MessageStore.append = timed("append (whole)",  # type: ignore[method-assign]
                                      store.MessageStore.append)
    real_call = ddb.DynamoDB.call
    tables = {os.environ.get("CHAT_TABLE_MESSAGES", "messages"): "message",
              os.environ.get("CHAT_TABLE_CONNECTIONS", "connections"): "record"}

    async def call(self: Any, op: str, params: dict[str, Any]) -> Any:
        name = f"ddb {op}"
        if op == "PutItem":
            what = tables.get(params.get("TableName", ""), "other")
            if what == "message" and "void" in params.get("Item", {}):
                what = "void"
            name = f"ddb PutItem {what}"
        elif op == "UpdateItem":
            name = "ddb UpdateItem ADD"
        elif op == "TransactWriteItems":
            name = "ddb TransactWriteItems record+message"
        t0 = time.perf_counter()
        try:
            return await real_call(self, op, params)
        finally:
            record(name, time.perf_counter() - t0)

    ddb.DynamoDB.call = call  # type: ignore[method-assign]

    from chat import cli

    try:
        return cli.main(["serve", *argv])
    finally:
        Path(os.environ["SEND_STAGES_OUT"]).write_text(json.dumps(samples))


async def load(url: str, room: str, users: int, rate: float, seconds: float
               ) -> dict[str, list[float]]:
    import websockets

    socks: list[Any] = []
    for i in range(users):
        ws = await websockets.connect(f"{url}?room={room}&name=u{i}", open_timeout=30,
                                      compression=None, max_queue=None)
        while json.loads(await ws.recv())["type"] != "history":
            pass
        socks.append(ws)
    sent_at: dict[str, float] = {}
    sender: dict[str, int] = {}
    acked_at: dict[str, float] = {}
    got: dict[str, list[tuple[int, float]]] = {}
    out: dict[str, list[float]] = {"client: send -> ack": [],
                                   "client: send -> delivery (others)": [],
                                   "client: ack -> delivery (others)": []}
    errors = 0

    async def reader(me: int, ws: Any) -> None:
        nonlocal errors
        async for raw in ws:
            now = time.perf_counter()
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "ack":
                cid = frame["client_id"]
                acked_at[cid] = now
                out["client: send -> ack"].append((now - sent_at[cid]) * 1000)
            elif kind == "message":
                got.setdefault(frame.get("text", ""), []).append((me, now))
            elif kind == "error":
                errors += 1

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(socks)]
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        who = random.randrange(len(socks))
        ws = socks[who]
        cid = uuid.uuid4().hex
        sender[cid] = who
        sent_at[cid] = time.perf_counter()
        # the text names the client_id: receivers match the message to its send
        await ws.send(json.dumps({"type": "send", "text": cid, "client_id": cid}))
        n += 1
        await asyncio.sleep(max(0.0, sent_at[cid] + 1 / rate - time.perf_counter()))
    await asyncio.sleep(2.0)
    for cid, t0 in sent_at.items():
        for who, t in got.get(cid, []):
            if who == sender[cid]:
                continue
            out["client: send -> delivery (others)"].append((t - t0) * 1000)
            if cid in acked_at:
                out["client: ack -> delivery (others)"].append((t - acked_at[cid]) * 1000)
    for task in readers:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
    print(f"{n} sends, {len(acked_at)} acked, {errors} errors")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--rate", type=float, default=20.0, help="sends a second, in all")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--env", action="append", default=[],
                    help="KEY=VALUE for the chat process (repeatable)")
    args = ap.parse_args()

    with stage_stack(str(Path(__file__).resolve()), "send-stages-", "SEND_STAGES_OUT",
                     args.env) as (url, chat, out):
        room = "sends-" + uuid.uuid4().hex[:6]
        client = asyncio.run(load(url, room, args.users, args.rate, args.seconds))
        chat.send_signal(signal.SIGTERM)
        chat.wait(30)
        samples = json.loads(out.read_text())
    print(f"{args.users} users, {args.rate:g} msg/s, {args.seconds:g} s; "
          f"load {os.getloadavg()[0]:.2f}")
    print_stages({**client, **samples}, 40)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        sys.path.insert(0, str(REPO))
        sys.exit(serve(sys.argv[2:]))
    sys.exit(main())
