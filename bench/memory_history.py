"""Memory per idle connection of our chat in a room that has history.

`bench/run.sh` measures idle connections in an empty room. A real room has messages: each
join reads up to 50 of them, and a handler that kept that list alive for the connection's
lifetime cost ~30 KiB per connection (fixed in chat/app.py). This measures it:

    .venv/bin/python bench/memory_history.py [--users 1000] [--messages 50]

It starts the same sitting as bench.py (redis-server, moto, chat blue + green), sends
`--messages` messages of 200 characters into one room, then opens `--users` idle
connections to that room and prints bench.memory()'s JSON (kib_per_conn = RSS delta of both
processes / connections). Only 127.0.0.1; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench


async def fill(url: str, room: str, messages: int) -> None:
    async with websockets.connect(f"{url}?room={room}&name=filler") as ws:
        await ws.recv()  # welcome
        await ws.recv()  # history
        for i in range(messages):
            await ws.send(json.dumps({"type": "send", "text": f"{'x' * 190}{i:010d}",
                                      "client_id": uuid.uuid4().hex}))
            while json.loads(await ws.recv())["type"] != "ack":
                pass
            await asyncio.sleep(0.21)  # under the per-connection rate limit (5/s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=50)
    args = ap.parse_args()
    room = f"hist-{uuid.uuid4().hex[:6]}"
    with bench.sitting_up() as s:
        procs = s.start_system(bench.OURS)
        try:
            asyncio.run(fill(s.urls(bench.OURS, via_lb=False)[0], room, args.messages))
            result = bench.memory(s, bench.OURS, [p.pid for p in procs], args.users, room=room)
        finally:
            s.p.stop(procs)
    print(json.dumps({"users": args.users, "messages": args.messages, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
