"""`python -m chat serve | init-tables | loadgen` (each serve option also from CHAT_*)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from .config import Config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chat", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the chat service (single process)")
    s.add_argument("--host", help="listen address [CHAT_HOST, 127.0.0.1]")
    s.add_argument("--port", type=int, help="listen port [CHAT_PORT, 8000]")
    s.add_argument("--color", help="blue|green... [CHAT_COLOR, blue]")
    s.add_argument("--version", dest="version", help="release label [CHAT_VERSION, v1]")
    s.add_argument("--drain-seconds", type=float,
                   help="migrate window on drain/SIGTERM [CHAT_DRAIN_SECONDS, 10]")
    s.add_argument("--static", dest="static_dir",
                   help="serve this directory at / and /board [CHAT_STATIC_DIR]")
    s.add_argument("--allowed-origins",
                   help="comma list of allowed WebSocket Origins, or * "
                        "[CHAT_ALLOWED_ORIGINS, same origin only]")
    sub.add_parser("init-tables", help="create the three DynamoDB tables (idempotent)")
    sub.add_parser("loadgen", help="load generator (python -m chat loadgen --help)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loadgen"]:
        return _loadgen(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "init-tables":
        return asyncio.run(_init_tables(Config.from_env()))
    config = Config.from_env(
        host=args.host, port=args.port, color=args.color, version=args.version,
        drain_seconds=args.drain_seconds, static_dir=args.static_dir,
        allowed_origins=args.allowed_origins,
        instance_id=os.environ.get("CHAT_INSTANCE_ID") or None)
    return serve(config)


def _loadgen(argv: list[str]) -> int:
    """The load generator is the top-level ``loadgen`` package beside ``chat/``: it runs from a
    checkout (a workstation), and the service image holds ``chat/`` only."""
    try:
        from loadgen import main as loadgen_main
    except ModuleNotFoundError as e:
        if e.name != "loadgen":
            raise
        print("python -m chat loadgen: the loadgen package is not installed here (the service "
              "image holds only chat/). Run it from a checkout of the repository, in its root "
              "directory: .venv/bin/python -m chat loadgen --help", file=sys.stderr)
        return 2
    return int(loadgen_main(argv))


def serve(config: Config) -> int:
    from .app import create_app
    from .logs import setup_logging

    setup_logging(color=config.color, version=config.version, instance=config.instance_id,
                  level=config.log_level)
    from .ws import LeanWebSocketProtocol

    app = create_app(config)
    app.run(host=config.host, port=config.port, single_process=True, access_log=False,
            motd=False, protocol=LeanWebSocketProtocol)
    return 0


async def _init_tables(config: Config) -> int:
    from .store import MessageStore

    store = MessageStore(config)
    await store.start()
    try:
        created = await store.init_tables()
    finally:
        await store.close()
    print(json.dumps({"created": created, "endpoint": config.dynamodb_endpoint}))
    return 0
