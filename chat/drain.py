"""Draining: the instance turns not-ready and moves its clients away (migrate, then 1012).

Started by an admin command (`chat.app`'s control handler), by the target watcher (the
instance was deregistered) or by SIGTERM (`before_server_stop`); `chat.connection` tells
it about joins in flight (`joining`, `admit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from . import protocol
from .config import Config
from .metrics import Metrics
from .rooms import Client, Rooms

log = logging.getLogger("chat")


class Drainer:
    """Turns the instance not-ready and moves its clients away (migrate, then 1012).

    A join still in flight when the drain starts (handshake done, not yet live) must not
    get `migrate` before its `history`, nor be cut by the shutdown: `joining` counts such
    joins, the drain waits for them (bounded by JOIN_GRACE_SECONDS after the window), and
    `admit()` tells each one to migrate as soon as it is live, closing it with 1012 if the
    drain is already closing.
    """

    JOIN_GRACE_SECONDS = 5.0  # after the window, how long joins in flight may still land

    def __init__(self, config: Config, rooms: Rooms, metrics: Metrics) -> None:
        self.config, self.rooms, self.metrics = config, rooms, metrics
        self.draining = False
        self.closing = False  # the window is over: the rest are being closed with 1012
        self.joining = 0  # WebSocket joins between handshake and live
        self.reason = ""
        self.task: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()

    def admit(self, client: Client) -> None:
        """A client that went live while the instance drains: migrate it now."""
        if not self.draining or client.closed:
            return
        if not client.migrated:
            client.migrated = True
            client.offer(protocol.MIGRATE_FRAME)
        if self.closing:
            task = asyncio.create_task(client.close(protocol.CLOSE_GOING_AWAY,
                                                    "service restart"))
            self._late.add(task)
            task.add_done_callback(self._late.discard)

    def start(self, reason: str) -> None:
        if self.draining:
            if reason == "shutdown":
                self.reason = reason  # an admin drain in progress now ends in an exit
            return
        self.reason = reason
        self.draining = True
        self.closing = False
        self.metrics.draining.set(1)
        log.info("drain_start", extra={"event": "drain_start", "reason": reason,
                                       "clients": len(self.rooms.clients()),
                                       "joining": self.joining,
                                       "window_s": self.config.drain_seconds})
        self.task = asyncio.create_task(self._run(), name="drain")

    def stop(self) -> None:
        if not self.draining or self.reason == "shutdown":
            return  # nothing to undo, or the process is exiting anyway
        self.draining = False
        self.metrics.draining.set(0)
        if self.task:
            self.task.cancel()
        for client in self.rooms.clients():
            client.migrated = False  # a later drain asks them again
        log.info("drain_cancelled", extra={"event": "undrain"})

    async def wait(self) -> None:
        if self.task:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        window = max(0.0, self.config.drain_seconds)
        start = time.monotonic()
        clients = self.rooms.clients()
        # Migrate spread with jitter over the first 80% of the window; the rest is for
        # the clients' new connections to settle before the 1012s.
        plan = sorted((random.uniform(0, window * 0.8), i) for i in range(len(clients)))
        for at, i in plan:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            client = clients[i]
            # a client still joining (no history yet) is asked by admit() once live
            if not client.closed and not client.migrated and client.buffer is None:
                client.migrated = True
                client.offer(protocol.MIGRATE_FRAME)
        while (time.monotonic() - start < window  # noqa: ASYNC110
               and (self.rooms.clients() or self.joining)):
            await asyncio.sleep(0.05)  # clients leave on their own; poll cheaply
        self.closing = True
        rest = [c for c in self.rooms.clients() if c.buffer is None]  # joining: admit()
        for client in rest:
            if not client.migrated:
                client.migrated = True
                client.offer(protocol.MIGRATE_FRAME)
        await asyncio.gather(*(c.close(protocol.CLOSE_GOING_AWAY, "service restart")
                               for c in rest), return_exceptions=True)
        # Joins still in flight go live (admit: migrate, 1012) or fail; wait for them,
        # bounded, so a SIGTERM's shutdown does not close them with 1001 half-way.
        grace = time.monotonic() + self.JOIN_GRACE_SECONDS
        while self.joining and time.monotonic() < grace:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        late = len(self._late)
        if self._late:
            await asyncio.gather(*self._late, return_exceptions=True)
        log.info("drain_done", extra={"event": "drain_done", "closed_1012": len(rest),
                                      "joins_closed_1012": late, "joining": self.joining,
                                      "seconds": round(time.monotonic() - start, 2)})
