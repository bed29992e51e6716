"""The load generator against the real chat service: blue and green instances sharing a real
redis-server and a moto DynamoDB server (tests/chatstack.py), all on free ports."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadgen import LoadGen, LoadGenConfig, exit_code, run_loadgen
from tests.chatstack import ChatInstance, ChatStack
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]



def ws(inst: ChatInstance) -> str:
    return f"ws://127.0.0.1:{inst.port}/ws"


def config(pair: tuple[ChatInstance, ChatInstance], **kw: Any) -> LoadGenConfig:
    blue, green = pair
    base: dict[str, Any] = dict(url=ws(blue), extra_urls=[ws(green)], users=20, rate=20.0,
                                duration=5.0, ramp=1.0, drain=20.0, seed=11)
    base.update(kw)
    return LoadGenConfig(**base)


async def test_twenty_users_across_blue_and_green_lose_and_repeat_nothing(
        chat_pair: tuple[ChatInstance, ChatInstance]) -> None:
    r = await run_loadgen(config(chat_pair))
    assert r["connected"] == 20 and r["failed_handshakes"] == 0
    assert r["connections_by_color"] == {"blue": 10, "green": 10}
    assert r["sent"] >= 90 and r["acked"] == r["sent"]
    # every user got every acked message of its room: messages crossed instances via Redis
    assert r["expected_deliveries"] == 20 * r["acked"] == r["delivered"]
    assert r["lost"] == 0 and r["duplicated"] == 0 and r["out_of_order"] == 0, (
        r["order_anomalies"], r["lost_seqs"])
    assert r["unexpected_closes"] == 0
    assert r["latency_ms"]["p99"] is not None
    assert exit_code(r) == 0


async def test_several_rooms_are_accounted_separately(
        chat_pair: tuple[ChatInstance, ChatInstance]) -> None:
    r = await run_loadgen(config(chat_pair, users=12, rooms=3, duration=3.0))
    assert len(r["rooms"]) == 3
    # each user is held to its own room's messages only: 4 members per room
    assert r["connected"] == 12
    assert r["expected_deliveries"] == 4 * r["acked"] == r["delivered"]
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0


async def test_drain_of_green_moves_its_users_to_blue_without_loss(
        chat_stack: ChatStack, chat_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """Admin drain of green while 20 users chat: its users follow `migrate` onto blue.

    Its own green, with a drain window as on stage (8 s): the module's pair keeps the
    short test window, and nothing has to be undrained afterwards."""
    blue, _ = chat_pair
    green = await asyncio.to_thread(chat_stack.start, "green",
                                    env={"CHAT_DRAIN_SECONDS": "8"})
    holder: list[LoadGen] = []
    task = asyncio.create_task(run_loadgen(
        LoadGenConfig(url=ws(blue), extra_urls=[ws(green)], users=20, rate=20.0,
                      duration=12.0, ramp=1.0, drain=20.0, seed=11),
        on_start=holder.append))
    try:
        await asyncio.sleep(0)  # let the task start: on_start runs before its first await
        lg = holder[0]
        await asyncio.wait_for(lg.wait_acked(20), 60)
        on_green = lg.report()["connections_by_color"].get("green", 0)
        status, _ = await asyncio.to_thread(chat_stack.admin, green, "/api/admin/drain",
                                            {"color": "green"})
        assert status in (200, 202)
        r = await asyncio.wait_for(task, 90)
    finally:
        if not task.done():
            task.cancel()
        await asyncio.to_thread(green.stop)
    assert on_green >= 5 and r["migrations"] == on_green    # each of green's users, once
    assert r["connections_by_color"] == {"blue": 20}
    assert r["lost"] == 0, r["lost_seqs"]
    assert r["unexpected_closes"] == 0, r["close_codes"]
    assert r["duplicated"] == 0 and r["out_of_order"] == 0, r["order_anomalies"][:3]
    assert exit_code(r) == 0


def test_cli_writes_the_json_report_and_exits_zero(
        chat_pair: tuple[ChatInstance, ChatInstance], tmp_path: Path) -> None:
    blue, green = chat_pair
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chat", "loadgen", "--url", ws(blue), "--url", ws(green),
         "--users", "6", "--rate", "10", "--duration", "2", "--ramp", "0.5", "--drain", "20",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["connected"] == 6 and report["lost"] == 0 and report["sent"] > 0
    assert "LOST" in proc.stdout and "delivery latency" in proc.stdout


async def test_a_faulty_release_costs_retries_but_no_message(
        chat_stack: ChatStack, chat_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """Green with CHAT_FAULT_RATE=0.3 answers 30% of sends `unavailable`: the load generator
    retries them with the same client_id, so nothing is lost or stored twice."""
    blue, _ = chat_pair
    faulty = await asyncio.to_thread(chat_stack.start, "green", "v2-bad",
                                     env={"CHAT_FAULT_RATE": "0.3"})
    try:
        r = await run_loadgen(LoadGenConfig(url=ws(blue), extra_urls=[ws(faulty)], users=10,
                                            rate=10.0, duration=4.0, ramp=0.5, drain=20.0,
                                            seed=5, backoff_base=0.05, backoff_cap=0.5))
    finally:
        await asyncio.to_thread(faulty.stop)
    assert r["errors"].get("unavailable", 0) >= 3 and r["retries"] >= 3
    assert r["acked"] == r["sent"] >= 30
    assert r["expected_deliveries"] == 10 * r["acked"] == r["delivered"]
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0, (
        r["order_anomalies"], r["lost_seqs"])


async def test_frequent_rejoins_with_since_under_cross_instance_traffic(
        chat_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """Every user reconnects make-before-break every ~2 s while both colors carry traffic:
    each new connection must still be exactly-once and in order from its `since`."""
    r = await run_loadgen(config(chat_pair, users=20, rate=20.0, duration=8.0, churn=2.0))
    assert r["churns"] >= 40 and r["unexpected_closes"] == 0
    assert r["lost"] == 0
    assert r["duplicated"] == 0 and r["out_of_order"] == 0, r["order_anomalies"][:5]
