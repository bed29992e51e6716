"""``python -m chat loadgen`` / ``python -m loadgen``: options, signals, report output."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal

from .accounting import exit_code
from .report import format_report
from .scheduler import LoadGen, LoadGenConfig, run_loadgen

DESCRIPTION = ("Load generator: N simulated chat users in one asyncio process, checking every"
               " delivery.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chat loadgen", description=DESCRIPTION)
    p.add_argument("--url", action="append", default=None,
                   help="WebSocket URL of /ws (default ws://127.0.0.1:8080/ws); repeat it to "
                        "spread users over several instances without a load balancer")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--rate", type=float, default=20.0, help="messages/s, all users together")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of sending; 0 = until SIGINT/SIGTERM")
    p.add_argument("--rooms", type=int, default=1)
    p.add_argument("--room-prefix", default=None, help="room names <prefix>-1..N")
    p.add_argument("--origin", default=None, help="Origin header to send")
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which users join")
    p.add_argument("--drain", type=float, default=15.0,
                   help="at most this many seconds to wait for in-flight deliveries after "
                        "sending stops (ends as soon as everything arrived)")
    p.add_argument("--churn", type=float, default=0.0,
                   help="mean seconds between planned make-before-break reconnects per user")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--progress", type=float, default=10.0,
                   help="status line on stderr every N seconds (0: none)")
    p.add_argument("--json", dest="json_path", default=None, help="write the report here")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    urls = args.url or ["ws://127.0.0.1:8080/ws"]
    cfg = LoadGenConfig(url=urls[0], extra_urls=urls[1:], users=args.users, rate=args.rate,
                        duration=args.duration,
                        rooms=args.rooms, room_prefix=args.room_prefix, origin=args.origin,
                        ramp=args.ramp, drain=args.drain, churn=args.churn, seed=args.seed,
                        progress=args.progress)

    def hook(lg: LoadGen) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, lg.stop)

    report = asyncio.run(run_loadgen(cfg, on_start=hook))
    if not args.quiet:
        print(format_report(report))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, ensure_ascii=False)
    return exit_code(report)

