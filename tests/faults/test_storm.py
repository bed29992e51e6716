"""Fault scenario 4 of issue 5: a 1,000-client reconnect storm through HAProxy."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from loadgen import LoadGenConfig
from tests.faults.conftest import (
    FaultStack,
    assert_clean,
    outcome,
    recovered,
    snapshot_conns,
)
from tests.faults.loadhelp import STORM_USERS, start, stopped
from tests.faults.test_kill_and_restart import finish, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# The whole storm comes from one address (127.0.0.1): the public door's per-source limits,
# sized for a venue of ~500 behind one NAT address, would refuse most of it.
HAPROXY_KNOBS = {"loadbalancer_local_src_conn_limit": 4 * STORM_USERS,
                 "loadbalancer_local_src_conn_rate_limit": 20 * STORM_USERS}

# ------------------------------------------------------------------ 4. reconnect storm


@pytest.mark.timeout(420)
async def test_reconnect_storm_of_1000_clients_resumes_without_loss(
        fault_stack: FaultStack) -> None:
    stack = fault_stack
    await asyncio.to_thread(stack.ensure_green)
    stack.set_weights(50, 50)
    cfg = LoadGenConfig(url=stack.ws_url, users=STORM_USERS, rooms=max(1, STORM_USERS // 50),
                        rate=10.0, duration=0, ramp=STORM_USERS / 40, drain=40.0,
                        connect_timeout=30.0, ack_timeout=20.0)
    lg, task = await start(cfg, within=240)
    try:
        await wait_until(lambda: sum(lg._live().values()) == STORM_USERS, 120, "all joined")
        before = snapshot_conns(lg)
        t_drop = time.time()
        # every client dropped at once: HAProxy cuts every session of both servers
        stack.cli("shutdown sessions server chat/blue;shutdown sessions server chat/green")
        everyone = {u.index for u in lg.users}
        recover_s = await wait_until(lambda: recovered(lg, before, everyone) == STORM_USERS,
                                     180, "every client back")
        r = await finish(lg, task, settle=5.0)
    finally:
        await stopped(lg, task)
    after = [e for e in r["new_connections"] if e[0] >= t_drop * 1000]
    per_second = Counter(int((e[0] - t_drop * 1000) // 1000) for e in after)
    peak = max(per_second.values()) if per_second else 0
    s = outcome("reconnect storm", r, dropped=STORM_USERS, handshakes_after_drop=len(after),
                peak_handshakes_per_s=peak, time_to_recover_s=round(recover_s, 2),
                failed_handshakes=r["failed_handshakes"])
    assert stack.blue.proc.poll() is None and stack.green.proc.poll() is None
    await asyncio.to_thread(stack.wait_ready, stack.blue, 60)
    await asyncio.to_thread(stack.wait_ready, stack.green, 60)
    assert len(after) >= STORM_USERS
    assert_clean(s, r)


