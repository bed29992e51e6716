"""Store latency and CPU per send, per DynamoDB client (CHAT_DYNAMODB_CLIENT).

Starts a moto server on a free 127.0.0.1 port and times `MessageStore.append` (a send's
three DynamoDB calls) through each client of CHAT_DYNAMODB_CLIENT: N sequential appends,
then N with C in flight. Prints p50/p99 latency per append and this process's CPU per append
(user+system; the emulator runs in its own process, its CPU is reported apart). Rounds
alternate the clients, so a change in the machine's load hits both alike.

    .venv/bin/python bench/store_bench.py                  # 3 rounds, N=300, C=20
    .venv/bin/python bench/store_bench.py -n 500 -c 50 --rounds 5 --json out.json
    .venv/bin/python bench/store_bench.py --clients ddb --seq-batch 0,50 --burst 20

`--seq-batch` compares values of CHAT_SEQ_BATCH (0: one counter ADD per send, the path
before the batching; 50: the default), alternated like the clients; every row also gives
the counter ADDs per append (update_item calls, counted by wrapping the client). `--burst K`
adds a mode where K appends of one room start together, n/K times in a row.

The emulator is the local stack's (roles/data/files/dynamodb_emulator.py: moto with an
indexed Query, atomic writes and keep-alive DynamoDB connections, as real DynamoDB keeps
them open). `--plain-moto` runs `moto_server` instead, whose werkzeug server closes every
connection: both clients then open a TCP connection per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench import free_port, wait_http  # noqa: E402
from chat.config import Config  # noqa: E402
from chat.store import MessageStore  # noqa: E402

VENV_BIN = Path(sys.executable).parent
EMULATOR = Path(__file__).resolve().parent.parent / "roles/data/files/dynamodb_emulator.py"


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def worker(one: Any, count: int, into: list[float]) -> None:
    for _ in range(count):
        into.append(await one("conc"))


async def run_one(endpoint: str, client: str, seq_batch: int, n: int, concurrency: int,
                  burst: int, emulator_pid: int) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:6]
    cfg = Config(dynamodb_endpoint=endpoint, table_messages=f"m-{suffix}",
                 table_connections=f"c-{suffix}", table_user_counter=f"u-{suffix}",
                 dynamodb_client=client, seq_batch=seq_batch)
    store = MessageStore(cfg)
    await store.start()
    await store.init_tables()
    counter = 0
    adds = 0
    update_item = store.client.update_item

    async def counted_update_item(**params: Any) -> Any:  # only the counter ADDs use it
        nonlocal adds
        adds += 1
        return await update_item(**params)

    store.client.update_item = counted_update_item

    async def one(room: str) -> float:
        nonlocal counter
        counter += 1
        t = time.perf_counter()
        await store.append(room=room, user_id=1, name="bench", text="hello " * 8,
                           client_id=f"b{counter}", color="blue")
        return time.perf_counter() - t

    for _ in range(20):  # warm-up: imports, models, the first connections
        await one("warm")
    result: dict[str, Any] = {"client": client, "seq_batch": seq_batch,
                              "label": f"{client}/batch={seq_batch}"}
    for mode in modes(burst):
        lat: list[float] = []
        adds = 0
        cpu0 = time.process_time()
        emu0 = proc_cpu(emulator_pid)
        wall0 = time.perf_counter()
        if mode == "sequential":
            for _ in range(n):
                lat.append(await one("seq"))
        elif mode == "concurrent":
            per = n // concurrency

            await asyncio.gather(*(worker(one, per, lat) for _ in range(concurrency)))
        else:
            for _ in range(max(1, n // burst)):
                lat.extend(await asyncio.gather(*(one("burst") for _ in range(burst))))
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        emu = proc_cpu(emulator_pid) - emu0
        count = len(lat)
        result[mode] = {
            "appends": count, "p50_ms": pct(lat, 0.50) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "mean_ms": statistics.fmean(lat) * 1e3, "appends_per_s": count / wall,
            "cpu_us_per_append": cpu / count * 1e6,
            "emulator_cpu_us_per_append": emu / count * 1e6,
            "adds_per_append": adds / count,
        }
    await store.close()
    return result


def modes(burst: int) -> tuple[str, ...]:
    return ("sequential", "concurrent", "burst") if burst else ("sequential", "concurrent")


async def rounds(args: argparse.Namespace, endpoint: str, emulator_pid: int
                 ) -> list[dict[str, Any]]:
    results = []
    variants = [(c, b) for c in args.clients for b in args.seq_batch]
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for client, seq_batch in order:
            res = await run_one(endpoint, client, seq_batch, args.n, args.concurrency,
                                args.burst, emulator_pid)
            res["round"] = r + 1
            results.append(res)
            print_row(res, args.burst)
    return results


def print_row(res: dict[str, Any], burst: int) -> None:
    for mode in modes(burst):
        m = res[mode]
        print(f"round {res['round']} {res['label']:17s} {mode:10s} n={m['appends']:4d} "
              f"p50 {m['p50_ms']:7.2f} ms  p99 {m['p99_ms']:7.2f} ms  "
              f"{m['appends_per_s']:7.1f}/s  ADDs {m['adds_per_append']:5.3f}/append  "
              f"cpu {m['cpu_us_per_append']:7.0f} us/append  "
              f"(emulator {m['emulator_cpu_us_per_append']:6.0f} us)", flush=True)


def summary(results: list[dict[str, Any]], burst: int) -> None:
    print("\nmedian over rounds:")
    labels = list(dict.fromkeys(r["label"] for r in results))
    for mode in modes(burst):
        for label in labels:
            rows = [r[mode] for r in results if r["label"] == label]
            med = {k: statistics.median(row[k] for row in rows)
                   for k in ("p50_ms", "p99_ms", "appends_per_s", "cpu_us_per_append",
                             "emulator_cpu_us_per_append", "adds_per_append")}
            print(f"  {label:17s} {mode:10s} p50 {med['p50_ms']:7.2f} ms  "
                  f"p99 {med['p99_ms']:7.2f} ms  {med['appends_per_s']:7.1f}/s  "
                  f"ADDs {med['adds_per_append']:5.3f}/append  "
                  f"cpu {med['cpu_us_per_append']:7.0f} us/append  "
                  f"(emulator {med['emulator_cpu_us_per_append']:6.0f} us)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=300, help="appends per mode (default 300)")
    ap.add_argument("-c", "--concurrency", type=int, default=20,
                    help="appends in flight in the concurrent mode (default 20)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="ddb,botocore",
                    help="comma list of CHAT_DYNAMODB_CLIENT values (default ddb,botocore)")
    ap.add_argument("--seq-batch", default="50",
                    help="comma list of CHAT_SEQ_BATCH values to compare (default 50; "
                         "0: one ADD per send)")
    ap.add_argument("--burst", type=int, default=0,
                    help="also time bursts of this many appends started together in one "
                         "room (default 0: no burst mode)")
    ap.add_argument("--plain-moto", action="store_true",
                    help="moto_server instead of the local stack's emulator (a TCP "
                         "connection per call)")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()
    args.clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    args.seq_batch = [int(b) for b in args.seq_batch.split(",") if b.strip()]
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "ap-northeast-2")
    print(f"store_bench: n={args.n} concurrency={args.concurrency} burst={args.burst} "
          f"seq_batch={args.seq_batch} rounds={args.rounds} "
          f"plain_moto={args.plain_moto} loadavg={os.getloadavg()[0]:.1f} "
          f"cpus={os.cpu_count()}", flush=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = ([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
            if args.plain_moto else
            [sys.executable, str(EMULATOR), "-H", "127.0.0.1", "-p", str(port)])
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"{endpoint}/moto-api/")
        results = asyncio.run(rounds(args, endpoint, proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)
    summary(results, args.burst)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
