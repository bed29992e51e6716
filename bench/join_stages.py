"""Where a join's time goes: N joins, C in flight, against a private stack; time per stage.

    .venv/bin/python bench/join_stages.py [--joins 300] [--concurrency 50] [--room-messages 0]
        [--env CHAT_GC_FULL_EVERY=10]

Starts redis-server, the DynamoDB emulator and one chat process on free ports (the same
processes the tests and the benchmark use), then opens `--joins` WebSockets to one room,
`--concurrency` at a time, and keeps them open until all have joined, as the benchmark's load
generator does (bench/peer/loadgen.js connectChat). The client measures handshake -> `history`
frame; the chat process runs with timing wrappers around the join's stages (user id, latest
seq, room initialisation, history, connection record, every DynamoDB call by operation, and
the cyclic GC's pauses by generation) and reports their durations when it stops. A
diagnostic, not a benchmark: nothing here is asserted, and the numbers include this client's
own CPU on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from bench import free_port, wait_http  # noqa: E402  (bench/bench.py, as store_bench does)

# (module, class, method, stage name): wrapped when present, so the script measures the
# join path before and after it changes. A stage's time is the wall time of its await,
# waiting for the emulator and for the event loop included.
STAGES = [
    ("chat.store", "MessageStore", "next_user_id", "user_id"),
    ("chat.store", "MessageStore", "latest_seq", "latest_seq"),
    ("chat.rooms", "Room", "ensure_initialised", "room_init"),
    ("chat.rooms", "Room", "history", "history"),
    ("chat.rooms", "Room", "join_history", "join_history"),
    ("chat.store", "MessageStore", "add_connection", "record"),
]


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    s = sorted(xs)

    def p(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"n": len(s), "mean": statistics.fmean(s), "p50": p(0.5), "p90": p(0.9),
            "p99": p(0.99), "max": s[-1]}


# --------------------------------------------------------------------------- server side



def stage_timers(samples: dict[str, list[float]]
                 ) -> tuple[Callable[[str, float], None], Callable[[str, Any], Any]]:
    """`record(name, seconds)` appends a sample in ms to `samples[name]`; `timed(name, fn)`
    wraps a coroutine function so that each call's duration is recorded under `name`."""
    def record(name: str, seconds: float) -> None:
        samples.setdefault(name, []).append(seconds * 1000)

    def timed(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                record(name, time.perf_counter() - t0)
        return wrapper

    return record, timed

def serve(argv: list[str]) -> int:
    """`python -m chat serve` with timing wrappers; the samples go to $JOIN_STAGES_OUT."""
    import importlib

    samples: dict[str, list[float]] = {}
    started: contextvars.ContextVar[float | None] = contextvars.ContextVar(
        "join_started", default=None)
    accepted_of: contextvars.ContextVar[float | None] = contextvars.ContextVar(
        "join_accepted", default=None)  # when the join's TCP connection came

    record, timed = stage_timers(samples)

    # The cyclic GC's pauses of the event loop by generation, from the first join on (not
    # the startup's own collection): a full collection walks every connection's objects.
    import gc

    gc_started = [0.0]
    joins_began = [False]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif joins_began[0]:
            record(f"gc.gen{info['generation']}", time.perf_counter() - gc_started[0])

    gc.callbacks.append(on_gc)

    for module, cls, method, name in STAGES:
        klass = getattr(importlib.import_module(module), cls)
        if hasattr(klass, method):
            setattr(klass, method, timed(name, getattr(klass, method)))

    from chat import connection, protocol, store

    real_call = store.MessageStore._call

    async def call(self: Any, op: str, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await real_call(self, op, **kwargs)
        finally:
            record(f"ddb.{op}", time.perf_counter() - t0)

    store.MessageStore._call = call  # type: ignore[method-assign]

    real_serve = connection.Connections.serve
    from chat.ws import LeanWebSocketProtocol

    real_init = LeanWebSocketProtocol.__init__
    accepted_at: dict[int, float] = {}  # id(protocol) -> when its TCP connection came

    def init_timed(self: Any, *args: Any, **kwargs: Any) -> None:
        accepted_at[id(self)] = time.perf_counter()
        real_init(self, *args, **kwargs)

    LeanWebSocketProtocol.__init__ = init_timed  # type: ignore[method-assign]

    async def serve_timed(self: Any, request: Any, ws: Any, *args: Any) -> None:
        now = time.perf_counter()
        joins_began[0] = True
        accepted = accepted_at.pop(id(request.transport.get_protocol()), None)
        if accepted is not None:
            record("accept_to_handler", now - accepted)
            accepted_of.set(accepted)
        started.set(now)
        await real_serve(self, request, ws, *args)

    connection.Connections.serve = serve_timed  # type: ignore[method-assign]

    real_welcome = protocol.welcome_frame

    def welcome(*args: Any, **kwargs: Any) -> str:
        t0 = started.get()
        if t0 is not None:
            record("to_welcome", time.perf_counter() - t0)
        return real_welcome(*args, **kwargs)

    protocol.welcome_frame = welcome

    from chat.rooms import Room

    real_go_live = Room.go_live

    def go_live(self: Any, client: Any, last: int) -> None:
        # called right after the history frame was handed to the connection
        t0 = started.get()
        if t0 is not None:
            record("to_history", time.perf_counter() - t0)
        accepted = accepted_of.get()
        if accepted is not None:
            record("accept_to_history", time.perf_counter() - accepted)
        real_go_live(self, client, last)

    Room.go_live = go_live  # type: ignore[method-assign]

    from chat import cli

    try:
        return cli.main(["serve", *argv])
    finally:
        Path(os.environ["JOIN_STAGES_OUT"]).write_text(json.dumps(samples))


# --------------------------------------------------------------------------- client side


async def joins(url: str, room: str, n: int, concurrency: int) -> tuple[list[float], int]:
    import websockets

    took: list[float] = []
    held: list[Any] = []
    failed = 0
    nxt = 0

    async def one(i: int) -> None:
        nonlocal failed
        t0 = time.perf_counter()
        try:
            ws = await websockets.connect(f"{url}?room={room}&name=u{i}", open_timeout=30,
                                          compression=None)
            while json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] != "history":
                pass
        except Exception:
            failed += 1
            return
        took.append((time.perf_counter() - t0) * 1000)
        held.append(ws)

    async def worker() -> None:
        nonlocal nxt
        while nxt < n:
            i = nxt
            nxt += 1
            await one(i)

    await asyncio.gather(*(worker() for _ in range(min(n, concurrency))))
    await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
    return took, failed


async def seed(url: str, room: str, n: int) -> None:
    """n messages in the room before the measured joins (its history then has content)."""
    import websockets

    async with websockets.connect(f"{url}?room={room}&name=seed", compression=None) as ws:
        for i in range(n):
            await ws.send(json.dumps({"type": "send", "text": f"s{i}",
                                      "client_id": uuid.uuid4().hex}))
            while json.loads(await ws.recv())["type"] != "ack":
                pass
            await asyncio.sleep(0.2)  # under the per-connection rate limit



@contextlib.contextmanager
def stage_stack(script: str, prefix: str, out_var: str,
                extra_env: list[str]) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A private stack on free ports for a per-stage script: redis-server, the DynamoDB
    emulator with the tables, and one chat process run by `script`'s own `serve` (which
    writes its stage samples to the file named by the env var `out_var`). Yields the
    WebSocket URL, the chat process and that file; stops everything on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    ports = {k: free_port() for k in ("redis", "moto", "chat")}
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_REGION": "ap-northeast-2", "AWS_DEFAULT_REGION": "ap-northeast-2",
           "AWS_ENDPOINT_URL_DYNAMODB": f"http://127.0.0.1:{ports['moto']}",
           "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0", "CHAT_LOG_LEVEL": "WARNING",
           out_var: str(tmp / "stages.json")}
    env.pop("AWS_PROFILE", None)
    for kv in extra_env:
        k, _, v = kv.partition("=")
        env[k] = v
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (tmp / f"{name}.log").open("wb") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                 stdin=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        start("redis", [shutil.which("redis-server") or "redis-server", "--port",
                        str(ports["redis"]), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(tmp)])
        start("moto", [sys.executable, str(REPO / "roles/data/files/dynamodb_emulator.py"),
                       "-H", "127.0.0.1", "-p", str(ports["moto"])])
        wait_http(f"http://127.0.0.1:{ports['moto']}/moto-api/")
        subprocess.run([sys.executable, "-m", "chat", "init-tables"], cwd=REPO, env=env,
                       check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        chat = start("chat", [sys.executable, script, "serve",
                              "--port", str(ports["chat"]), "--color", "blue"])
        wait_http(f"http://127.0.0.1:{ports['chat']}/readyz")
        yield f"ws://127.0.0.1:{ports['chat']}/ws", chat, tmp / "stages.json"
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()


def print_stages(rows: dict[str, list[float]], width: int) -> None:
    """One line per stage with samples: n, mean, p50, p90, p99, max (ms)."""
    print(f"{'stage (ms)':{width}} {'n':>6} {'mean':>7} {'p50':>7} {'p90':>7} {'p99':>7} "
          f"{'max':>7}")
    for name, xs in rows.items():
        s = percentiles(xs)
        if s["n"]:
            print(f"{name:{width}} {s['n']:>6} {s['mean']:>7.1f} {s['p50']:>7.1f} "
                  f"{s['p90']:>7.1f} {s['p99']:>7.1f} {s['max']:>7.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--joins", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--room-messages", type=int, default=0,
                    help="messages sent to the room before the joins")
    ap.add_argument("--env", action="append", default=[],
                    help="KEY=VALUE for the chat process (repeatable)")
    args = ap.parse_args()

    with stage_stack(str(Path(__file__).resolve()), "join-stages-", "JOIN_STAGES_OUT",
                     args.env) as (url, chat, out):
        room = "stages-" + uuid.uuid4().hex[:6]
        if args.room_messages:
            asyncio.run(seed(url, room, args.room_messages))
        t0 = time.perf_counter()
        took, failed = asyncio.run(joins(url, room, args.joins, args.concurrency))
        wall = time.perf_counter() - t0
        time.sleep(1.0)  # the last records and presence updates
        chat.send_signal(signal.SIGTERM)
        chat.wait(30)
        samples = json.loads(out.read_text())
    print(f"{args.joins} joins, {args.concurrency} in flight, {failed} failed, "
          f"{wall:.1f} s wall; load {os.getloadavg()[0]:.2f}")
    print_stages({"client: handshake -> history": took, **samples}, 34)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        sys.path.insert(0, str(REPO))
        sys.exit(serve(sys.argv[2:]))
    sys.exit(main())
