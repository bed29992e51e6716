"""The demo load alone, A/B: two checkouts of our chat and the peer, alternating on one sitting.

    .venv/bin/python bench/demo_ab.py A_DIR B_DIR [--rounds 2] [--seconds 15]

One sitting of bench.py (redis-servers, the emulator, HAProxy: `Sitting`); each round runs
the demo load (100 users, 20 msg/s through HAProxy, both colors) on our chat started from
A_DIR, then from B_DIR (the order swaps every round), then on the peer, and prints one JSON
line per run: the load generator's delivery latency p50/p99, the server CPU per delivery,
lost + duplicated + out-of-order, and the load average at the start. Both checkouts run with
this venv's Python; the tables are shared (same schema). A diagnostic for a change of the
send path, lighter than `bench/run.sh` (no ladder, storms or memory); nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--ready-timeout", type=float, default=120,
                    help="seconds a process may take to answer its health check")
    args = ap.parse_args()
    ready = bench.wait_http
    # bench's functions look wait_http up at call time: a busy machine gets longer
    patient = args.ready_timeout
    bench.wait_http = lambda url, timeout=patient: ready(url, timeout)  # type: ignore
    code = {"A": args.a.resolve(), "B": args.b.resolve()}
    results: dict[str, list[dict[str, Any]]] = {"A": [], "B": [], "peer": []}
    bench.ensure_peer()
    with bench.sitting_up() as s:
        for rnd, v, system, procs in bench.ab_runs(s, code, args.rounds):
            s.wait_lb(system)
            load = os.getloadavg()[0]
            r = bench.loadgen(system, s.urls(system, via_lb=True), 100, [20],
                              pids=[p.pid for p in procs], duration=args.seconds,
                              room=f"demo-{v}-{rnd}-{int(time.time())}")
            step = r["steps"][0]
            row = {"round": rnd, "run": v, "p50": step["latency_ms"]["p50"],
                   "p99": step["latency_ms"]["p99"],
                   "cpu_us": step.get("server_cpu_us_per_delivery"),
                   "lost": step["lost"] + step["duplicated"] + step["out_of_order"],
                   "load": round(load, 2)}
            results[v].append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
