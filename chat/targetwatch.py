"""Start the drain when this task's own ALB target starts deregistering (ECS).

ECS stops a task behind a target group by deregistering it first: the target turns
`draining`, the ALB keeps its open connections only until the deregistration delay ends and
then cuts them, and ECS sends SIGTERM only after that (docs/aws-metrics.md). A drain that
waited for SIGTERM would start after the ALB had already cut every WebSocket. So, with
CHAT_TARGET_GROUP_ARNS set, `TargetWatcher` polls DescribeTargetHealth for this task's
target (its IP from the ECS task metadata endpoint, or CHAT_TARGET_ID) every
CHAT_TARGET_POLL_SECONDS and calls `on_deregistered()` (the Drainer) once the target is
`draining` in any of the groups, or is no longer registered in a group where it was seen
registered before (a deregistration that ended between two polls; also what the emulator,
moto, reports at once: it has no `draining` state for IP targets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from .aio import cancel_task

log = logging.getLogger("chat.targetwatch")

NOT_REGISTERED = "Target.NotRegistered"


def should_drain(state: str, reason: str, seen_registered: bool) -> bool:
    """Whether a target's health (State, Reason) means its deregistration has begun.

    `draining`: deregistering, the delay running. `unused` with Target.NotRegistered after the
    target was seen registered: deregistered (the delay already over, or never shown). Not:
    `unhealthy.draining` (failed health checks, still registered), `unused` with another reason
    (e.g. Target.NotInUse: the group serves no listener), anything before the first
    registration (ECS registers a new task's target after the task starts).
    """
    if state == "draining":
        return True
    return state == "unused" and reason == NOT_REGISTERED and seen_registered


def ip_from_task_metadata(task: dict[str, Any]) -> str | None:
    """The task's IPv4 address from the ECS task metadata v4 `/task` document (awsvpc)."""
    for container in task.get("Containers") or []:
        for network in container.get("Networks") or []:
            for address in network.get("IPv4Addresses") or []:
                if address:
                    return str(address)
    return None


METADATA_TIMEOUT = 2.0  # seconds for one task metadata request (a local agent)


async def fetch_task_ip(base_url: str) -> str | None:
    import aiohttp
    timeout = aiohttp.ClientTimeout(total=METADATA_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as s, \
            s.get(base_url.rstrip("/") + "/task") as r:
        r.raise_for_status()
        return ip_from_task_metadata(await r.json(content_type=None))


class TargetWatcher:
    def __init__(self, *, arns: tuple[str, ...], target_id: str | None, port: int,
                 interval: float, region: str,
                 on_deregistered: Callable[[], None]) -> None:
        self.arns, self.target_id, self.port = arns, target_id, port
        self.interval, self.region = interval, region
        self.on_deregistered = on_deregistered
        self.seen: dict[str, bool] = dict.fromkeys(arns, False)  # arn -> seen registered
        self.task: asyncio.Task[None] | None = None
        self.fired = False
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._last_error = ""

    @property
    def enabled(self) -> bool:
        return bool(self.arns)

    async def start(self) -> None:
        if not self.enabled:
            return
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session
        # Endpoint: botocore's own resolution (AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2,
        # AWS_ENDPOINT_URL, else the regional endpoint).
        config = AioConfig(connect_timeout=2, read_timeout=min(5.0, self.interval),
                           retries={"max_attempts": 2, "mode": "standard"})
        self._client = await self._stack.enter_async_context(get_session().create_client(
            "elbv2", region_name=self.region, config=config))
        self.task = asyncio.create_task(self._run(), name="targetwatch")

    async def stop(self) -> None:
        await cancel_task(self.task)
        self.task = None
        await self._stack.aclose()
        self._client = None

    async def _resolve_id(self) -> str | None:
        if self.target_id:
            return self.target_id
        base = os.environ.get("ECS_CONTAINER_METADATA_URI_V4", "")
        if not base:
            log.error("targetwatch_no_id", extra={
                "event": "targetwatch_no_id",
                "error": "CHAT_TARGET_GROUP_ARNS is set but neither CHAT_TARGET_ID nor "
                         "ECS_CONTAINER_METADATA_URI_V4: the watcher is off"})
            return None
        while True:
            try:
                ip = await fetch_task_ip(base)
                if ip:
                    return ip
                self._warn("no IPv4 address in the task metadata")
            except Exception as e:  # the agent may not answer yet: retry
                self._warn(f"task metadata: {e}")
            await asyncio.sleep(self.interval)

    def _warn(self, error: str) -> None:
        if error != self._last_error:  # one line per distinct failure, not one per poll
            self._last_error = error
            log.warning("targetwatch_failed", extra={"event": "targetwatch_failed",
                                                     "error": error[:300]})

    async def _run(self) -> None:
        target = await self._resolve_id()
        if target is None:
            return
        self.target_id = target
        log.info("targetwatch_start", extra={
            "event": "targetwatch_start", "target": target, "port": self.port,
            "groups": len(self.arns), "interval_s": self.interval})
        while not self.fired:
            for arn in self.arns:
                try:
                    answer = await self._client.describe_target_health(
                        TargetGroupArn=arn, Targets=[{"Id": target, "Port": self.port}])
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._warn(f"describe_target_health: {e}")
                    continue
                if self.observe(arn, answer.get("TargetHealthDescriptions") or []):
                    return
            await asyncio.sleep(self.interval)

    def observe(self, arn: str, descriptions: list[dict[str, Any]]) -> bool:
        """Take one DescribeTargetHealth answer; True (and the drain called) on deregistration."""
        for d in descriptions:
            health = d.get("TargetHealth") or {}
            state, reason = health.get("State", ""), health.get("Reason", "")
            if should_drain(state, reason, self.seen.get(arn, False)):
                self.fired = True
                log.info("target_deregistered", extra={
                    "event": "target_deregistered", "target_group": arn, "state": state,
                    "reason": reason})
                self.on_deregistered()
                return True
            if state and reason != NOT_REGISTERED:
                self.seen[arn] = True
        return False
