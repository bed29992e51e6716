"""The chat's Redis client under more concurrent commands than its pool holds.

A flood of sends puts more Redis commands in flight than the pool has connections; each
must wait for a free connection and succeed, never fail with "Too many connections" (which
would count as send errors at the canary gate and fail /readyz while the instance is fine).
"""

from __future__ import annotations

import asyncio

import pytest

from chat.bus import REDIS_MAX_CONNECTIONS, RoomBus
from chat.config import Config
from tests.conftest import Service

pytestmark = pytest.mark.integration


async def _nothing() -> None:
    return None


async def test_commands_beyond_the_pool_size_wait_and_all_succeed(
        redis_server: Service) -> None:
    bus = RoomBus(Config(redis_url=redis_server.url), on_message=lambda room, frame: None,
                  on_presence=lambda room: None, on_control=lambda command: None,
                  on_reconnect=_nothing)
    try:
        n = 3 * REDIS_MAX_CONNECTIONS
        results = await asyncio.gather(
            *(bus.publish_message(f"pool-{i % 7}", f'{{"i": {i}}}') for i in range(n)),
            *(bus.ping() for _ in range(n)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == [], errors[:3]
        assert len(results) == 2 * n
    finally:
        await bus.close()
