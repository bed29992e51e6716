"""The weights the load balancer really has, read from it, for the deploy board.

`/api/stats`'s `weights` would otherwise come only from the last canary event (Redis),
and show nothing right after `site.yml`, after a restart, or after a weight changed by
hand. One `WeightsPoller` per process reads the load balancer every CHAT_WEIGHTS_POLL_SECONDS
in a task of its own (network calls only, never blocking the event loop) and keeps the last
value read, with the time it was read; a failed read is logged (once per distinct error) and
the last value stays, its `age_s` growing.

Sources (read-only, what an unprivileged process may use):
  - `HaproxyStatsSource`: HAProxy's stats page in CSV (`stats uri` on the loopback admin
    listener, no admin level; `CHAT_WEIGHTS_HAPROXY_URL`). A server's weight is its
    `uweight` column (the weight `set server ... weight` sets, what `get weight` answers as
    current), else `weight` on versions without it.
  - `ListenerSource`: an ALB listener (`CHAT_WEIGHTS_LISTENER_ARN` and the two colors'
    target group ARNs) through elbv2 DescribeRules / DescribeListeners: the weights of the
    forward action of the listener rule that lists both target groups, else of the default
    action; a plain forward to one group is 100 for that color, 0 for the other (the same
    reading as traffic_shift's elbv2 driver, plugins/module_utils/traffic_shift/elbv2.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import time
from typing import Any, Protocol

from .aio import cancel_task

log = logging.getLogger("chat.lbweights")

HTTP_TIMEOUT = 2.0  # seconds for one stats page request (a loopback listener)
FIRST_READ_SECONDS = 3.0  # the startup read's limit


class WeightsSource(Protocol):
    name: str

    async def start(self) -> None: ...

    async def read(self) -> dict[str, int]: ...

    async def close(self) -> None: ...


def parse_haproxy_csv(text: str, backend: str, colors: tuple[str, ...]) -> dict[str, int]:
    """color -> weight of the servers named `colors` in `backend`, from the stats CSV."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError("not HAProxy's stats CSV (no '# pxname,...' header)")
    header = lines[0][2:].split(",")
    weights: dict[str, int] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines[1:])), fieldnames=header):
        if row.get("pxname") == backend and row.get("svname") in colors:
            raw = row.get("uweight") or row.get("weight") or ""
            weights[str(row["svname"])] = int(raw)
    missing = [c for c in colors if c not in weights]
    if missing:
        raise ValueError(f"no server {', '.join(missing)} in backend {backend} of the stats CSV")
    return weights


class HaproxyStatsSource:
    name = "haproxy"

    def __init__(self, url: str, backend: str = "chat",
                 colors: tuple[str, ...] = ("blue", "green")) -> None:
        self.url, self.backend, self.colors = url, backend, colors
        self._session: Any = None

    async def start(self) -> None:
        import aiohttp
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT))

    async def read(self) -> dict[str, int]:
        async with self._session.get(self.url) as r:
            r.raise_for_status()
            text = await r.text()
        return parse_haproxy_csv(text, self.backend, self.colors)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _priority(rule: dict[str, Any]) -> int:
    p = str(rule.get("Priority", ""))
    return int(p) if p.isdigit() else 1 << 30


def _forward(actions: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((a for a in actions if a.get("Type") == "forward"), None)


def weighted_rule(rules: list[dict[str, Any]], arns: dict[str, str]) -> dict[str, Any] | None:
    """The non-default rule (lowest priority first) whose forward lists every ARN of `arns`."""
    wanted = set(arns.values())
    for rule in sorted(rules, key=_priority):
        if rule.get("IsDefault"):
            continue
        action = _forward(rule.get("Actions") or [])
        groups = ((action or {}).get("ForwardConfig") or {}).get("TargetGroups") or []
        if action is not None and wanted <= {g.get("TargetGroupArn") for g in groups}:
            return rule
    return None


def forward_weights(actions: list[dict[str, Any]], arns: dict[str, str]) -> dict[str, int]:
    """color -> weight in the forward action of `actions` (0 where it does not forward)."""
    weights = dict.fromkeys(arns, 0)
    action = _forward(actions)
    if action is None:
        return weights
    groups = (action.get("ForwardConfig") or {}).get("TargetGroups")
    if groups:
        for g in groups:
            for color, arn in arns.items():
                if g.get("TargetGroupArn") == arn:
                    weights[color] = int(g.get("Weight", 1))
        return weights
    for color, arn in arns.items():
        if action.get("TargetGroupArn") == arn:
            weights[color] = 100
    return weights


class ListenerSource:
    name = "elbv2"

    def __init__(self, listener_arn: str, target_groups: dict[str, str], region: str,
                 timeout: float = 5.0) -> None:
        self.listener_arn, self.arns, self.region = listener_arn, target_groups, region
        self.timeout = timeout
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session
        # Endpoint: botocore's own resolution (AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2,
        # AWS_ENDPOINT_URL, else the regional endpoint), as chat/targetwatch.py.
        config = AioConfig(connect_timeout=2, read_timeout=self.timeout,
                           retries={"max_attempts": 2, "mode": "standard"})
        self._client = await self._stack.enter_async_context(get_session().create_client(
            "elbv2", region_name=self.region, config=config))

    async def read(self) -> dict[str, int]:
        rules: list[dict[str, Any]] = []
        marker: str | None = None
        while True:
            kwargs: dict[str, Any] = {"ListenerArn": self.listener_arn}
            if marker:
                kwargs["Marker"] = marker
            answer = await self._client.describe_rules(**kwargs)
            rules += answer.get("Rules") or []
            marker = answer.get("NextMarker")
            if not marker:
                break
        rule = weighted_rule(rules, self.arns)
        if rule is not None:
            return forward_weights(rule.get("Actions") or [], self.arns)
        listeners = (await self._client.describe_listeners(
            ListenerArns=[self.listener_arn])).get("Listeners") or []
        if not listeners:
            raise ValueError(f"listener {self.listener_arn} not found")
        return forward_weights(listeners[0].get("DefaultActions") or [], self.arns)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


class WeightsPoller:
    """Reads `source` every `interval` seconds; `.value` is what `/api/stats` shows."""

    def __init__(self, source: WeightsSource | None, interval: float = 2.0) -> None:
        self.source, self.interval = source, interval
        self.weights: dict[str, int] | None = None
        self.read_at = 0.0  # wall clock of the last successful read
        self.error = ""  # the last read's failure; "" after a success
        self.task: asyncio.Task[None] | None = None
        self._logged = ""

    @property
    def enabled(self) -> bool:
        return self.source is not None

    @property
    def value(self) -> dict[str, Any] | None:
        """{color: weight, ..., "source", "ts" (ms of the read), "age_s"[, "error"]}, or None
        before the first successful read."""
        if self.weights is None or self.source is None:
            return None
        out: dict[str, Any] = {**self.weights, "source": self.source.name,
                               "ts": int(self.read_at * 1000),
                               "age_s": round(max(0.0, time.time() - self.read_at), 1)}
        if self.error:
            out["error"] = self.error
        return out

    async def start(self) -> None:
        """Start the source and make the first read before the server takes requests (at
        most FIRST_READ_SECONDS: a load balancer that does not answer delays nothing more),
        so `/api/stats` is right from the first request after a (re)start."""
        if self.source is None:
            return
        await self.source.start()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.poll_once(), FIRST_READ_SECONDS)
        self.task = asyncio.create_task(self._run(), name="lbweights")

    async def stop(self) -> None:
        await cancel_task(self.task)
        self.task = None
        if self.source is not None:
            await self.source.close()

    async def poll_once(self) -> None:
        assert self.source is not None
        try:
            weights = await self.source.read()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # unreachable, refused, unparsable: keep the last value
            self.error = f"{type(e).__name__}: {e}"[:300]
            if self.error != self._logged:  # one line per distinct failure
                self._logged = self.error
                log.warning("lbweights_failed", extra={
                    "event": "lbweights_failed", "source": self.source.name,
                    "error": self.error})
            return
        self.weights, self.read_at, self.error = weights, time.time(), ""
        if self._logged:
            self._logged = ""
            log.info("lbweights_recovered", extra={"event": "lbweights_recovered",
                                                    "source": self.source.name})

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.poll_once()
