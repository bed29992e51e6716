"""Helpers shared by the fault scenarios that drive the load generator themselves."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from loadgen import LoadGen, LoadGenConfig, run_loadgen

STORM_USERS = int(os.environ.get("FAULTS_STORM_USERS", "1000"))
SLOW_USERS = int(os.environ.get("FAULTS_SLOW_USERS", "500"))


async def start(cfg: LoadGenConfig, first_acks: int = 40,
                within: float = 120) -> tuple[LoadGen, asyncio.Task[Any]]:
    holder: list[LoadGen] = []
    task = asyncio.create_task(run_loadgen(cfg, on_start=holder.append))
    await asyncio.sleep(0)
    lg = holder[0]
    await asyncio.wait_for(lg.wait_acked(first_acks), within)
    return lg, task


async def stopped(lg: LoadGen, task: asyncio.Task[Any]) -> None:
    lg.stop()
    if not task.done():
        await asyncio.wait_for(task, 180)


