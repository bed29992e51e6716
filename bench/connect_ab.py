"""Connect time alone, A/B: two checkouts of our chat and the peer, alternating on one sitting.

    .venv/bin/python bench/connect_ab.py A_DIR B_DIR [--cycles 3] [--reps 3]

One sitting of bench.py (redis-servers, the emulator, HAProxy: `Sitting`); each cycle starts
our chat from A_DIR, then from B_DIR (the order swaps every cycle), then the peer, on fresh
processes; each warms up with 200 connections (opened, then closed), then `--reps` times
opens 1,000 connections to a new room, 50 in flight, straight to the two processes (the
ladder's connect phase of `bench/run.sh`: bench/peer/loadgen.js `--hold`), and closes them.
Prints one JSON line per connect phase (the load generator's connect time p50/p99, the load
average at its start) and the median p99 of each system. Both checkouts run with this venv's
Python. A diagnostic for a change of the join path, lighter than `bench/run.sh`: a
sitting's one connect phase per round decides its p99 by its ten slowest joins, these
medians by many phases; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench


def connect_phase(s: bench.Sitting, system: str, users: int, room: str) -> dict[str, Any]:
    """Open `users` connections, 50 in flight; close them; the generator's connect_ms."""
    argv = ["node", str(bench.PEER / "loadgen.js"), "--proto",
            "chat" if system == bench.OURS else "sio", "--users", str(users), "--room", room,
            "--hold", "--concurrency", "50"]
    for u in s.urls(system, via_lb=False):
        argv += ["--url", u]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # {"phase": "connected", ...}
    out, _ = proc.communicate(timeout=120)  # stdin closes: the generator reports and ends
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen gave no report ({proc.returncode})")
    report: dict[str, Any] = json.loads(lines[-1])
    if report.get("failed"):
        raise RuntimeError(f"{report['failed']} connections failed")
    connect: dict[str, Any] = report["connect_ms"]
    return connect


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="connect phases per start")
    args = ap.parse_args()
    code = {"A": args.a.resolve(), "B": args.b.resolve()}
    p99s: dict[str, list[float]] = {"A": [], "B": [], "peer": []}
    bench.ensure_peer()
    with bench.sitting_up() as s:
        for cycle, v, system, _ in bench.ab_runs(s, code, args.cycles):
            connect_phase(s, system, 200, f"warm-{v}-{cycle}-{int(time.time())}")
            time.sleep(2)  # the warm-up's closes and cleanups settle
            for rep in range(args.reps):
                load = os.getloadavg()[0]
                c = connect_phase(s, system, 1000, f"join-{v}-{cycle}-{rep}-{int(time.time())}")
                p99s[v].append(c["p99"])
                print(json.dumps({"cycle": cycle, "run": v, "p50": c["p50"], "p99": c["p99"],
                                  "load": round(load, 2)}), flush=True)
                time.sleep(3)
    print(json.dumps({v: {"phases": len(x), "p99_median": statistics.median(x)}
                      for v, x in p99s.items() if x}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
