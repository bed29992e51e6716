"""The kernel's floor under CPU per delivery: bare `send()`s of one WebSocket frame each.

    .venv/bin/python bench/send_floor.py [--sockets 500] [--rate 30] [--seconds 8]

A receiver process (uvloop, reading and discarding, like a client) accepts `--sockets`
loopback TCP connections; this process writes one 204-byte frame (a text frame of 200
bytes: a short chat message) to each of them in turn, `--rate` times a second, with
nothing else to do: no event loop, no framing, no storage. It prints the CPU time of this
process per `send()`, user and kernel (getrusage). That is what one write per message and
recipient costs before any server code runs: on loopback the kernel runs the receiver's
TCP path inside the sender's `send()`. Issue 15's goal 3b (ours ≤ 0.5× the peer's CPU per
delivery at 30 msg/s) is compared with it in docs/benchmarks.md. Traffic stays on
127.0.0.1 and the run ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import time

FRAME = b"\x81\x7e\x00\xc8" + b"x" * 200  # FIN + text, 16-bit length 200, unmasked


def receive(port_w: int, seconds: float) -> None:
    """The child: accept and drain every connection until killed (or the run's limit)."""
    import uvloop

    async def main() -> None:
        async def drain(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while await r.read(65536):
                pass

        server = await asyncio.start_server(drain, "127.0.0.1", 0, backlog=4096)
        os.write(port_w, str(server.sockets[0].getsockname()[1]).encode())
        os.close(port_w)
        await asyncio.sleep(seconds + 30)

    uvloop.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=500, help="connections (recipients)")
    ap.add_argument("--rate", type=float, default=30, help="frames per second to each")
    ap.add_argument("--seconds", type=float, default=8)
    args = ap.parse_args()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        try:
            receive(w, args.seconds)
        finally:
            os._exit(0)
    os.close(w)
    try:
        port = int(os.read(r, 16))
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.sockets)]
        for s in socks:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvloop sets it
            s.setblocking(False)
        time.sleep(1)  # the receiver has accepted them all
        before, t0, rounds = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), 0
        while time.monotonic() - t0 < args.seconds:
            for s in socks:
                s.send(FRAME)
            rounds += 1
            time.sleep(max(0.0, t0 + rounds / args.rate - time.monotonic()))
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    sends = rounds * args.sockets
    print(json.dumps({
        "sockets": args.sockets, "rate": args.rate, "sends": sends,
        "user_us_per_send": round((after.ru_utime - before.ru_utime) / sends * 1e6, 2),
        "sys_us_per_send": round((after.ru_stime - before.ru_stime) / sends * 1e6, 2),
        "load": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
