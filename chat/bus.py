"""RoomBus: Redis pub/sub between instances, presence counts, drain commands, board stats.

Redis only carries things quickly; nothing here is the source of truth for messages
(MessageStore is). When Redis restarts the listener re-subscribes and asks the rooms to
catch up from the store, so a restart delays messages but never loses them.

Keys and channels:
  chat:room:<room>            channel: one message frame (the exact text clients receive)
  chat:presence               channel: the name of a room whose presence changed
  chat:control                channel: {"cmd": "drain"|"undrain", "color": ...}
  chat:presence:<room>        hash: instance id -> {"color", "n", "exp"}
  chat:stats:<instance>       string (JSON, 5 s TTL): this instance's board figures
  chat:stats:instances        set of instance ids that wrote stats
  chat:deploy:weights         string (JSON): the last configured weights
  chat:deploy:events          list (JSON, newest first, 50 kept): deploy events
  chat:admin:nonce:<nonce>    string, expires: a signed admin call's nonce, already used
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ReadOnlyError, RedisError

from .aio import SharedCalls
from .config import Config

log = logging.getLogger("chat.bus")

ROOM_PREFIX = "chat:room:"
PRESENCE_CHANNEL = "chat:presence"
CONTROL_CHANNEL = "chat:control"
PRESENCE_TTL = 15.0
HEARTBEAT = 5.0
STATS_TTL = 5
EVENTS_KEPT = 50
# A room's presence writes (HSET + PUBLISH) and reads (HGETALL) start at most this often
# each: a burst of joins shares them instead of keeping a round trip in flight per join
# (each costs the event loop a system call and a parse while the joins wait for it).
PRESENCE_CALL_SPACING = 0.05

BusErrors = (RedisError, OSError, asyncio.TimeoutError)


# Connections per process (redis-py's default size); two colors on one Redis stay far below
# redis-server's and ElastiCache's maxclients. A command waits this long for a free one.
REDIS_MAX_CONNECTIONS = 100
REDIS_POOL_WAIT_SECONDS = 5.0

class RoomBus:
    def __init__(self, config: Config, *,
                 on_message: Callable[[str, str], None],
                 on_presence: Callable[[str], None],
                 on_control: Callable[[dict[str, Any]], None],
                 on_reconnect: Callable[[], Awaitable[None]]) -> None:
        self.config = config
        self.on_message = on_message
        self.on_presence = on_presence
        self.on_control = on_control
        self.on_reconnect = on_reconnect
        # After an ElastiCache failover the old primary answers READONLY until we
        # reconnect: retrying on ReadOnlyError drops the connection and resolves the
        # primary endpoint's DNS again.
        # A blocking pool: when every connection is busy (a flood of sends), a command waits
        # for one instead of failing with "Too many connections", which would turn a busy
        # instance into send errors and a failing /readyz.
        pool = aioredis.BlockingConnectionPool.from_url(
            config.redis_url, max_connections=REDIS_MAX_CONNECTIONS,
            timeout=REDIS_POOL_WAIT_SECONDS, decode_responses=True, socket_timeout=3,
            socket_connect_timeout=2, health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            retry_on_error=[ReadOnlyError])
        self.redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self.connected = asyncio.Event()
        self.local_presence: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # presence writes and reads shared by a room's concurrent joins and leaves
        self._presence_writes = SharedCalls[None](self._publish_presence, lambda room: None,
                                                  PRESENCE_CALL_SPACING)
        self._presence_reads = SharedCalls[dict[str, int]](
            self._read_presence, self._local_presence, PRESENCE_CALL_SPACING)
        self._catch_up: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="bus-listen"),
                       asyncio.create_task(self._heartbeat(), name="bus-heartbeat")]

    async def close(self) -> None:
        await self._presence_writes.close()
        await self._presence_reads.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(*BusErrors):
            await self._clear_presence()
        await self.redis.aclose()

    # --- subscription ---

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(ROOM_PREFIX + "*")
                await pubsub.subscribe(PRESENCE_CHANNEL, CONTROL_CHANNEL)
                # Wait until Redis confirmed the subscriptions before catching up.
                for _ in range(3):
                    await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                self.connected.set()
                backoff = 0.1
                log.info("bus_subscribed", extra={"event": "bus_subscribed"})
                # Whatever was published while we were not subscribed: from the store.
                self._catch_up = asyncio.create_task(self._after_reconnect())
                async for msg in pubsub.listen():
                    self._dispatch(msg)
            except asyncio.CancelledError:
                raise
            except BusErrors as e:
                if self.connected.is_set():
                    log.warning("bus_lost", extra={"event": "bus_lost", "error": str(e)})
                self.connected.clear()
            except Exception:
                log.exception("bus_listener_error", extra={"event": "bus_listener_error"})
                self.connected.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _after_reconnect(self) -> None:
        try:
            await self.on_reconnect()
            await self._write_presence_all()
        except Exception:
            log.exception("bus_reconnect_error", extra={"event": "bus_reconnect_error"})

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind, channel, data = msg.get("type"), msg.get("channel", ""), msg.get("data")
        if not isinstance(data, str):
            return
        try:
            if kind == "pmessage" and channel.startswith(ROOM_PREFIX):
                self.on_message(channel[len(ROOM_PREFIX):], data)
            elif channel == PRESENCE_CHANNEL:
                self.on_presence(data)
            elif channel == CONTROL_CHANNEL:
                self.on_control(json.loads(data))
        except Exception:
            log.exception("bus_dispatch_error", extra={"event": "bus_dispatch_error"})

    async def ping(self) -> None:
        await asyncio.wait_for(self.redis.ping(), 2.0)

    # --- messages and control ---

    async def publish_message(self, room: str, frame: str) -> None:
        await self.redis.publish(ROOM_PREFIX + room, frame)

    async def publish_control(self, command: dict[str, Any]) -> int:
        return int(await self.redis.publish(CONTROL_CHANNEL, json.dumps(command)))

    async def claim_admin_nonce(self, nonce: str, ttl: int) -> bool:
        """True the first time any instance claims `nonce` within `ttl` seconds (SET NX EX).

        A retried SET whose first attempt reached Redis answers False: a refused call, never
        an accepted replay.
        """
        return bool(await self.redis.set(f"chat:admin:nonce:{nonce}", "1", nx=True, ex=ttl))

    # --- presence ---

    async def presence_changed(self, room: str, delta: int) -> None:
        """Count a connection in (+1) or out (-1); returns once a write of the room's
        count that started after the change (shared with concurrent changes) is done."""
        n = self.local_presence.get(room, 0) + delta
        if n > 0:
            self.local_presence[room] = n
        else:
            self.local_presence.pop(room, None)
        await self._presence_writes(room)

    async def _publish_presence(self, room: str) -> None:
        try:
            await self._write_presence(room)
            await self.redis.publish(PRESENCE_CHANNEL, room)
        except BusErrors:
            self.on_presence(room)  # at least the local clients see the change

    async def _write_presence(self, room: str) -> None:
        """Write this instance's count for the room as it is now (not as it was)."""
        key = f"chat:presence:{room}"
        n = self.local_presence.get(room, 0)
        if n > 0:
            value = json.dumps({"color": self.config.color, "n": n,
                                "exp": time.time() + PRESENCE_TTL})
            await self.redis.hset(key, self.config.instance_id, value)
        else:
            await self.redis.hdel(key, self.config.instance_id)

    async def _write_presence_all(self) -> None:
        for room in list(self.local_presence):
            await self._write_presence(room)
            await self.redis.publish(PRESENCE_CHANNEL, room)

    async def _clear_presence(self) -> None:
        for room in list(self.local_presence):
            await self.redis.hdel(f"chat:presence:{room}", self.config.instance_id)
            await self.redis.publish(PRESENCE_CHANNEL, room)

    async def presence(self, room: str) -> dict[str, int]:
        """Open connections in the room by color, across live instances (a read that
        started after this call, shared with the room's concurrent callers)."""
        return dict(await self._presence_reads(room))

    def _local_presence(self, room: str) -> dict[str, int]:
        n = self.local_presence.get(room, 0)
        return {self.config.color: n} if n else {}

    async def _read_presence(self, room: str) -> dict[str, int]:
        by_color: dict[str, int] = {}
        try:
            entries = await self.redis.hgetall(f"chat:presence:{room}")
        except BusErrors:
            return self._local_presence(room)
        now = time.time()
        stale = []
        for instance, raw in entries.items():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if entry.get("exp", 0) < now:
                stale.append(instance)
                continue
            by_color[entry["color"]] = by_color.get(entry["color"], 0) + int(entry["n"])
        if stale:
            with contextlib.suppress(*BusErrors):
                await self.redis.hdel(f"chat:presence:{room}", *stale)
        return by_color

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            with contextlib.suppress(*BusErrors):
                for room in list(self.local_presence):
                    await self._write_presence(room)

    # --- board stats and deploy events ---

    async def write_stats(self, snapshot: dict[str, Any]) -> None:
        iid = self.config.instance_id
        async with self.redis.pipeline(transaction=False) as p:
            p.set(f"chat:stats:{iid}", json.dumps(snapshot), ex=STATS_TTL)
            p.sadd("chat:stats:instances", iid)
            await p.execute()

    async def read_stats(self) -> list[dict[str, Any]]:
        ids = sorted(str(i) for i in await self.redis.smembers("chat:stats:instances"))
        if not ids:
            return []
        raws = await self.redis.mget([f"chat:stats:{i}" for i in ids])
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            await self.redis.srem("chat:stats:instances", *gone)
        return [json.loads(raw) for raw in raws if raw is not None]

    async def record_deploy_event(self, event: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as p:
            p.lpush("chat:deploy:events", json.dumps(event))
            p.ltrim("chat:deploy:events", 0, EVENTS_KEPT - 1)
            if isinstance(event.get("weights"), dict):
                weights = dict(event["weights"])
                weights.update(source=event.get("source", "traffic_shift"), ts=event["ts"])
                p.set("chat:deploy:weights", json.dumps(weights))
            await p.execute()

    async def deploy_state(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        raw = await self.redis.get("chat:deploy:weights")
        events = await self.redis.lrange("chat:deploy:events", 0, EVENTS_KEPT - 1)
        return (json.loads(raw) if raw else None), [json.loads(e) for e in events]
