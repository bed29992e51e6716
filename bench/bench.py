"""Side-by-side benchmark: our chat (blue + green, real storage path) vs Socket.IO 4.8.

    bash bench/run.sh [--quick] [--rounds N] [--no-write]

One sitting, everything on 127.0.0.1 free ports: one redis-server per system, the DynamoDB
emulator (moto, roles/data/files/dynamodb_emulator.py) for ours, one HAProxy with a
frontend per system. Systems alternate A B A B;
each round of a system runs, on fresh server processes:

  demo     100 users, 20 msg/s, through HAProxy (ours: both colors, 50/50)
  ladder   1,000 users in one room, direct to the two processes, rising send rates until
           p99 (send -> receive) >= 250 ms or anything is lost; server CPU per delivery
  memory   2,500 idle connections: RSS delta of both server processes / connections
  storm    1,000 clients (direct to the processes) reconnect at one moment while 10 of
           them send 5 msg/s in all: time from the trigger until the last client is back
           (ours: its new connection's history; the peer: Socket.IO's connect), per-client
           reconnect times, failed attempts, and that nothing was lost or repeated.
           Triggers: `drain` (ours only, the issue's storm: all clients on blue,
           POST /api/admin/drain {"color": "blue"}, clients follow `migrate` to green with
           since) and `all` (both: every client closes and reconnects at once, ours with
           since). Goal: every client back with its history, nothing lost, in <= 15 s.

--quick keeps the storms at 1,000 clients. The same Node load generator
(bench/peer/loadgen.js) drives both, and reports its own CPU.
Results go to docs/benchmarks.md (section "Fan-out vs Socket.IO") and to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PEER = REPO / "bench" / "peer"
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench:fanout:start -->", "<!-- bench:fanout:end -->"
OURS, PEER_NAME = "ours", "socket.io"
CPU_RATE = 30  # msg/s at 1,000 clients where CPU per delivery and latency are compared
LADDER = [20, CPU_RATE, 40, 50, 60, 80, 100, 120, 160, 200, 240, 280, 320, 360, 400]  # msg/s
UNPACED = {"CHAT_FLUSH_INTERVAL": "0"}  # ours without the paced flush of large rooms
STORM_USERS = 1000  # clients of the reconnect storm, in --quick too
STORM_GOAL_S = 15.0  # every client back with its history, nothing lost, within this
STORM_DRAIN_SECONDS = 10  # the drain's window (CHAT_DRAIN_SECONDS, the chat's default)
STORM_RATE, STORM_SENDERS = 5, 10  # msg/s in all, and how many clients send them
STORM_TIMEOUT = 180  # s from the trigger: a storm that is not over by then is reported so


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


def rss_kib(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


@dataclass
class Procs:
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{name}.log", "ab")  # closed below: the child keeps its copy
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                             env={**os.environ, **(env or {})})
        out.close()
        self.procs.append(p)
        return p

    def stop(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            if p in self.procs:
                self.procs.remove(p)

    def stop_all(self) -> None:
        self.stop(list(reversed(self.procs)))


# Our system's HAProxy is the local stack's own: the loadbalancer role's template, rendered
# by our_haproxy_cfg() below (tests/haproxy_config.py renders the same template for the
# tests; bench/ imports nothing from tests/). The peer is not our system: it keeps a small
# frontend of its own, a second configuration file of the same HAProxy process.
HAPROXY_TEMPLATE = REPO / "roles/loadbalancer/templates/haproxy.cfg.j2"
HAPROXY_KNOBS = {
    # Each instance is checked by two backends, `chat` (/readyz) and its color's for the
    # pinned paths (/healthz, which asks neither Redis nor DynamoDB): every 1,000 ms each,
    # an instance answers two checks a second, as each peer process does (one backend,
    # every 500 ms); down after 2 failures, up after 1.
    "loadbalancer_local_check_inter_ms": 1000,
    "loadbalancer_local_check_fall": 2,
    "loadbalancer_local_check_rise": 1,
    # as the peer's client/server timeouts (an upgraded WebSocket has `timeout tunnel` 1h)
    "loadbalancer_local_http_timeout": "60s",
    "loadbalancer_initial_weights": {"blue": 50, "green": 50},
}
PEER_HAPROXY_CFG = """defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
frontend fe_peer
  bind 127.0.0.1:{lb_peer}
  default_backend peer
backend peer
  balance roundrobin
  option httpchk GET /healthz
  default-server check inter 500ms fall 2 rise 1
  server a 127.0.0.1:{peer_a} weight 50
  server b 127.0.0.1:{peer_b} weight 50
"""


def our_haproxy_cfg(ports: dict[str, int], tmp: Path) -> str:
    """The role's haproxy.cfg with its defaults and the local inventory's values, on this
    sitting's ports: public door `lb_ours`, admin listener `lb_ours_admin`, runtime API
    socket and server-state file in `tmp`, run as the current user."""
    import grp
    import pwd

    import jinja2
    import yaml

    defaults = yaml.safe_load((REPO / "roles/loadbalancer/defaults/main.yml").read_text())
    local = yaml.safe_load((REPO / "inventories/local/group_vars/all.yml").read_text())
    user = pwd.getpwuid(os.getuid()).pw_name
    port = ports["lb_ours"]
    context = {
        **defaults, **HAPROXY_KNOBS,
        "ansible_managed": "rendered for the benchmark by bench/bench.py",
        "local_bind_address": "127.0.0.1", "local_lb_port": port,
        "local_admin_port": ports["lb_ours_admin"], "local_blue_port": ports["blue"],
        "local_green_port": ports["green"], "local_run_dir": str(tmp),
        "local_state_dir": str(tmp), "local_haproxy_stats_uri": local["local_haproxy_stats_uri"],
        # what the inventory's expression gives for the loopback bind address
        "local_allowed_hosts": [f"127.0.0.1:{port}", f"localhost:{port}"],
        "local_users": {**local["local_users"], "haproxy": user},
    }
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True)  # as ansible.builtin.template renders it
    text = env.from_string(HAPROXY_TEMPLATE.read_text()).render(context)
    # HAProxy's `group` is the user's own group here, not one named after the user
    return text.replace(f"    group {user}\n",
                        f"    group {grp.getgrgid(os.getgid()).gr_name}\n")


class Sitting:
    """The shared infrastructure of one benchmark sitting and the two systems on it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.p = Procs(tmp)
        self.ports = {k: free_port() for k in (
            "redis_ours", "redis_peer", "moto", "blue", "green", "peer_a", "peer_b",
            "lb_ours", "lb_ours_admin", "lb_peer")}
        self.aws_env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                        "AWS_REGION": "ap-northeast-2", "AWS_DEFAULT_REGION": "ap-northeast-2",
                        "AWS_ENDPOINT_URL_DYNAMODB": f"http://127.0.0.1:{self.ports['moto']}"}

    def up(self) -> None:
        redis = shutil.which("redis-server") or "redis-server"
        for key in ("redis_ours", "redis_peer"):
            self.p.start(key, [redis, "--port", str(self.ports[key]), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(self.tmp)])
            wait_port(self.ports[key])
        # The local stack's DynamoDB emulator (moto with an indexed Query, see
        # roles/data/files/dynamodb_emulator.py); the same one every test stack uses.
        self.p.start("moto", [sys.executable, str(REPO / "roles/data/files/dynamodb_emulator.py"),
                              "-H", "127.0.0.1", "-p", str(self.ports["moto"])])
        wait_http(f"http://127.0.0.1:{self.ports['moto']}/moto-api/")
        subprocess.run([sys.executable, "-m", "chat", "init-tables"], cwd=REPO, check=True,
                       env={**os.environ, **self.aws_env}, stdout=subprocess.DEVNULL)
        ours, peer = self.tmp / "haproxy.cfg", self.tmp / "haproxy-peer.cfg"
        ours.write_text(our_haproxy_cfg(self.ports, self.tmp))
        peer.write_text(PEER_HAPROXY_CFG.format(**self.ports))
        self.p.start("haproxy", [shutil.which("haproxy") or "haproxy", "-db",
                                 "-f", str(ours), "-f", str(peer)])
        wait_port(self.ports["lb_ours"])

    def start_system(self, system: str,
                     extra: dict[str, str] | None = None) -> list[subprocess.Popen[bytes]]:
        if system == OURS:
            procs = []
            for color, version in (("blue", "v1"), ("green", "v2")):
                env = {**self.aws_env, "REDIS_URL": f"redis://127.0.0.1:{self.ports['redis_ours']}/0",
                       "CHAT_LOG_LEVEL": "WARNING", **(extra or {})}
                procs.append(self.p.start(color, [
                    sys.executable, "-m", "chat", "serve", "--host", "127.0.0.1",
                    "--port", str(self.ports[color]), "--color", color, "--version", version],
                    env=env, cwd=REPO))
            for color in ("blue", "green"):
                wait_http(f"http://127.0.0.1:{self.ports[color]}/readyz")
            return procs
        procs = [self.p.start(key, ["node", "server.js"], cwd=PEER, env={
            "PORT": str(self.ports[key]),
            "REDIS_URL": f"redis://127.0.0.1:{self.ports['redis_peer']}"})
            for key in ("peer_a", "peer_b")]
        for key in ("peer_a", "peer_b"):
            wait_http(f"http://127.0.0.1:{self.ports[key]}/healthz")
        return procs

    def urls(self, system: str, via_lb: bool) -> list[str]:
        if system == OURS:
            if via_lb:
                return [f"ws://127.0.0.1:{self.ports['lb_ours']}/ws"]
            return [f"ws://127.0.0.1:{self.ports[c]}/ws" for c in ("blue", "green")]
        if via_lb:
            return [f"http://127.0.0.1:{self.ports['lb_peer']}"]
        return [f"http://127.0.0.1:{self.ports[k]}" for k in ("peer_a", "peer_b")]

    def wait_lb(self, system: str) -> None:
        """Until HAProxy forwards to the (re)started servers of this system."""
        if system == OURS:  # /readyz through the admin listener: the public door refuses it
            wait_http(f"http://127.0.0.1:{self.ports['lb_ours_admin']}/readyz")
        else:
            wait_http(f"http://127.0.0.1:{self.ports['lb_peer']}/healthz")


def loadgen(system: str, urls: list[str], users: int, rates: list[int], *, pids: list[int],
            duration: float, warmup: float = 2, drain: float = 10, room: str,
            hold: bool = False, timeout: float = 600, min_steps: int = 1) -> dict[str, Any]:
    argv = ["node", str(PEER / "loadgen.js"), "--proto", "chat" if system == OURS else "sio",
            "--users", str(users), "--rates", ",".join(map(str, rates)),
            "--min-steps", str(min_steps),
            "--duration", str(duration), "--warmup", str(warmup), "--drain", str(drain),
            "--room", room, "--pids", ",".join(map(str, pids))]
    for u in urls:
        argv += ["--url", u]
    if hold:
        argv.append("--hold")
    return run_loadgen(argv, timeout)


def run_loadgen(argv: list[str], timeout: float,
                env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the Node load generator; its last JSON line on stdout is the report."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})
    for line in proc.stderr.splitlines():
        log(f"  {line}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def memory(sitting: Sitting, system: str, pids: list[int], n: int, room: str) -> dict[str, Any]:
    """RSS delta of both server processes with n idle connections, per connection.

    A warm-up of 200 connections (opened, then closed) comes first, so that one-time costs
    (botocore's service model, connection pools, JIT and caches) are not counted per
    connection; the baseline is taken after it.
    """
    def hold(users: int, room: str) -> subprocess.Popen[str]:
        argv = ["node", str(PEER / "loadgen.js"), "--proto", "chat" if system == OURS
                else "sio", "--users", str(users), "--room", room, "--hold",
                "--concurrency", "100"]
        for u in sitting.urls(system, via_lb=False):
            argv += ["--url", u]
        # stdin stays open: the generator ends its hold when its stdin ends
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    warm = hold(200, room + "-warm")
    assert warm.stdout is not None
    warm.stdout.readline()
    warm.terminate()
    warm.communicate(timeout=120)
    time.sleep(2)  # closes and their cleanup settle
    before = sum(rss_kib(p) for p in pids)
    proc = hold(n, room)
    assert proc.stdout is not None
    t0 = time.monotonic()
    first = json.loads(proc.stdout.readline())
    connect_s = time.monotonic() - t0
    # Let the servers finish per-connection work (presence, connection records).
    samples = []
    for _ in range(6):
        time.sleep(0.5)
        samples.append(sum(rss_kib(p) for p in pids))
    after = max(samples)
    proc.terminate()  # the generator reports and closes its connections on SIGTERM
    out, _ = proc.communicate(timeout=120)
    final = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    connected = int(first["connected"])
    return {"connected": connected, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_conn": (after - before) / max(1, connected), "connect_wall_s": connect_s,
            "connect_ms": final.get("connect_ms"), "unexpected_closes":
            final.get("unexpected_closes", 0)}


def storm(sitting: Sitting, system: str, trigger: str, room: str) -> dict[str, Any]:
    """The reconnect storm of STORM_USERS clients (loadgen.js --storm), on fresh processes.

    drain (ours): every client on blue, green up; the generator calls blue's
    POST /api/admin/drain {"color": "blue"} (bearer token: the bench's own, random) and the
    clients follow `migrate` to green. all: clients alternate between the two processes,
    and every one closes and reconnects at once.
    """
    token = secrets.token_hex(16)
    extra = ({"CHAT_ADMIN_TOKEN": token, "CHAT_DRAIN_SECONDS": str(STORM_DRAIN_SECONDS)}
             if system == OURS else None)
    procs = sitting.start_system(system, extra)
    try:
        argv = ["node", str(PEER / "loadgen.js"), "--proto", "chat" if system == OURS else "sio",
                "--storm", trigger, "--users", str(STORM_USERS), "--room", room,
                "--storm-rate", str(STORM_RATE), "--storm-senders", str(STORM_SENDERS),
                "--storm-timeout", str(STORM_TIMEOUT), "--drain", "10",
                "--pids", ",".join(str(p.pid) for p in procs)]
        urls = sitting.urls(system, via_lb=False)
        if trigger == "drain":
            argv += ["--url", urls[0], "--migrate-url", urls[1], "--drain-color", "blue",
                     "--drain-url", f"http://127.0.0.1:{sitting.ports['blue']}/api/admin/drain"]
        else:
            for u in urls:
                argv += ["--url", u]
        return run_loadgen(argv, STORM_TIMEOUT * 2 + 60, env={"BENCH_ADMIN_TOKEN": token})
    finally:
        sitting.p.stop(procs)


def storms(sitting: Sitting, system: str, rnd: int, stamp: str) -> dict[str, Any]:
    out = {}
    for trigger in ("drain", "all") if system == OURS else ("all",):
        log(f"{system} round {rnd}: reconnect storm of {STORM_USERS} clients, {trigger}")
        out[trigger] = storm(sitting, system, trigger, room=f"storm-{trigger}-{stamp}")
    return out


def run_round(sitting: Sitting, system: str, quick: bool, rnd: int,
              rates: list[int] | None = None, storms_only: bool = False) -> dict[str, Any]:
    stamp = f"{system.replace('.', '')}-{rnd}-{int(time.time())}"
    if storms_only:  # development: the storms alone
        return {"system": system, "round": rnd, "storm": storms(sitting, system, rnd, stamp)}
    procs = sitting.start_system(system)
    pids = [p.pid for p in procs]
    try:
        sitting.wait_lb(system)
        log(f"{system} round {rnd}: demo load (100 users, 20 msg/s, via HAProxy)")
        demo = loadgen(system, sitting.urls(system, via_lb=True), 100, [20], pids=pids,
                       duration=6 if quick else 15, room=f"demo-{stamp}")
        ladder_rates = rates or ([CPU_RATE, 60, 90] if quick else LADDER)
        log(f"{system} round {rnd}: 1,000 clients, rates {ladder_rates}")
        # The CPU step runs even when a lower rate already missed the latency bar.
        ladder = loadgen(system, sitting.urls(system, via_lb=False), 1000, ladder_rates,
                         pids=pids, duration=5 if quick else 8, drain=8,
                         room=f"ladder-{stamp}", min_steps=ladder_rates.index(CPU_RATE) + 1)
        store = store_latency(sitting) if system == OURS else None
    finally:
        sitting.p.stop(procs)
    unpaced = None
    if system == OURS:  # the same CPU step without the paced flush, for comparison
        procs = sitting.start_system(system, UNPACED)
        try:
            log(f"{system} round {rnd}: 1,000 clients at {CPU_RATE} msg/s, "
                "CHAT_FLUSH_INTERVAL=0")
            unpaced = loadgen(system, sitting.urls(system, via_lb=False), 1000, [CPU_RATE],
                              pids=[p.pid for p in procs], duration=5 if quick else 8,
                              drain=8, room=f"unpaced-{stamp}")
        finally:
            sitting.p.stop(procs)
    procs = sitting.start_system(system)
    try:
        n = 1000 if quick else 2500
        log(f"{system} round {rnd}: memory at {n} idle connections")
        mem = memory(sitting, system, [p.pid for p in procs], n, room=f"idle-{stamp}")
    finally:
        sitting.p.stop(procs)
    return {"system": system, "round": rnd, "demo": demo, "ladder": ladder, "memory": mem,
            "store_latency": store, "unpaced": unpaced,
            "storm": storms(sitting, system, rnd, stamp)}


def store_latency(sitting: Sitting) -> dict[str, Any]:
    """chat_store_latency_seconds of the blue instance after the ladder: mean, in seconds."""
    with urllib.request.urlopen(f"http://127.0.0.1:{sitting.ports['blue']}/metrics") as r:
        text = r.read().decode()
    m = re.search(r'chat_store_latency_seconds_sum\{[^}]*\} (\S+)', text)
    c = re.search(r'chat_store_latency_seconds_count\{[^}]*\} (\S+)', text)
    return {"sum_s": float(m.group(1)) if m else 0.0, "count": float(c.group(1)) if c else 0.0}


# --- summary ---


def _step(ladder: dict[str, Any], rate: int) -> dict[str, Any] | None:
    return next((s for s in ladder.get("steps", []) if s["rate"] == rate), None)


def sustained(ladder: dict[str, Any]) -> int:
    best = 0
    for s in ladder.get("steps", []):
        if not s.get("sustained"):
            break
        best = s["rate"]
    return best


def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for system in (OURS, PEER_NAME):
        every = [r for r in rounds if r["system"] == system]
        if not every:
            continue
        out[system] = {
            "storm_drain": storm_summary([r["storm"]["drain"] for r in every
                                          if "drain" in r.get("storm", {})]),
            "storm_all": storm_summary([r["storm"]["all"] for r in every
                                        if "all" in r.get("storm", {})]),
        }
        rs = [r for r in every if "ladder" in r]  # --storms-only rounds have nothing else
        if not rs:
            continue
        cpu = [_step(r["ladder"], CPU_RATE) for r in rs]
        cpu_ok = [s for s in cpu if s]
        med = statistics.median

        demo_steps = [r["demo"]["steps"][0] for r in rs if r["demo"].get("steps")]
        unpaced = [_step(r["unpaced"], CPU_RATE) for r in rs if r.get("unpaced")]
        unpaced_ok = [s for s in unpaced if s]
        out[system] |= {
            "rounds": len(rs),
            "cpu_us": med([s["server_cpu_us_per_delivery"] for s in cpu_ok]) if cpu_ok else None,
            "loadgen_cpu_us": med([s["loadgen_cpu_us_per_delivery"] for s in cpu_ok])
            if cpu_ok else None,
            "sustained": min(sustained(r["ladder"]) for r in rs),
            "sustained_each": [sustained(r["ladder"]) for r in rs],
            "demo": {p: pct(demo_steps, "latency_ms", p) for p in ("p50", "p95", "p99")},
            "demo_lost": sum(s["lost"] + s["duplicated"] + s["out_of_order"] for s in demo_steps),
            "k1": {p: pct(cpu_ok, "latency_ms", p) for p in ("p50", "p95", "p99")},
            "k1_lost": sum(s["lost"] + s["duplicated"] + s["out_of_order"] for s in cpu_ok),
            "mem_kib": med([r["memory"]["kib_per_conn"] for r in rs]),
            "mem_n": rs[0]["memory"]["connected"],
            "store_mean_ms": med([1000 * r["store_latency"]["sum_s"]
                                  / max(1.0, r["store_latency"]["count"]) for r in rs])
            if rs[0].get("store_latency") else None,
            "sys_us": med([s.get("server_sys_us_per_delivery", 0.0) for s in cpu_ok])
            if cpu_ok else None,
            "unpaced_cpu_us": med([s["server_cpu_us_per_delivery"] for s in unpaced_ok])
            if unpaced_ok else None,
            "unpaced": {p: pct(unpaced_ok, "latency_ms", p) for p in ("p50", "p95", "p99")},
            "connect_p50": med([r["ladder"]["connect_ms"]["p50"] for r in rs]),
            "connect_p99": med([r["ladder"]["connect_ms"]["p99"] for r in rs]),
        }
    return out


def storm_summary(reps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One storm trigger over the rounds: the worst round's time decides the goal."""
    if not reps:
        return None

    def back_s(r: dict[str, Any]) -> float | None:
        ms = r.get("all_back_ms")
        return None if ms is None else ms / 1000

    def p(key: str, q: str) -> float | None:
        vals = [r[key][q] for r in reps if r.get(key) and r[key].get(q) is not None]
        return statistics.median(vals) if vals else None

    each = [back_s(r) for r in reps]
    missing = [r.get("seq_missing") for r in reps]
    return {
        "rounds": len(reps),
        "each": each,
        "time_s": None if None in each else max(t for t in each if t is not None),
        "members": min(int(r.get("members", 0)) for r in reps),
        "not_back": max(int(r.get("not_back", r.get("members", STORM_USERS))) for r in reps),
        "errors": [r["error"] for r in reps if r.get("error")],
        "reconnect": {q: p("reconnect_ms", q) for q in ("p50", "p99")},
        "failed_each": [r.get("failed_attempts") for r in reps],
        "sent": sum(int(r.get("sent", 0)) for r in reps),
        "lost": sum(int(r.get("lost", 0)) for r in reps),
        # the same message twice to a client, a seq twice on a connection, or before since
        "duplicated": sum(int(r.get("duplicated", 0)) + int(r.get("out_of_order", 0))
                          + int(r.get("before_since", 0)) for r in reps),
        # chat: stored seqs a client never got (None: the peer, or the check failed)
        "seq_missing": None if None in missing else sum(missing),
        "cpu_s": statistics.median([sum(r.get("server_cpu_s", [0.0])) for r in reps]),
    }


def storm_goal(s: dict[str, Any] | None) -> str:
    """met/missed for STORM_GOAL_S: all back, nothing lost, and by how much."""
    if not s or s["errors"]:
        return "n/a"
    if s["time_s"] is None:
        return (f"**not met** ({s['not_back']} of {s['members']} not back "
                f"{STORM_TIMEOUT} s after the trigger)")
    bad = s["lost"] + s["duplicated"] + (s["seq_missing"] or 0)
    if bad:
        return f"**not met** ({bad} lost or repeated)"
    gap = s["time_s"] - STORM_GOAL_S
    if gap > 0:
        return f"**not met** (by {gap:.1f} s)"
    return f"met ({-gap:.1f} s to spare)"


def storm_time(s: dict[str, Any] | None) -> str:
    """Worst round (every round): s, or how many were still out at the timeout."""
    if not s:
        return "n/a"
    if s["errors"]:
        return "failed: " + "; ".join(s["errors"])
    each = ", ".join(_f(t) if t is not None else f"> {STORM_TIMEOUT}" for t in s["each"])
    worst = (_f(s["time_s"]) if s["time_s"] is not None
             else f"> {STORM_TIMEOUT} ({s['not_back']} of {s['members']} not back)")
    return f"{worst} ({each})"


def storm_client(s: dict[str, Any] | None) -> str:
    if not s or s["errors"]:
        return "n/a"
    failed = ", ".join(str(f) for f in s["failed_each"])
    return (f"{_f(s['reconnect']['p50'], '{:.0f}')} / {_f(s['reconnect']['p99'], '{:.0f}')}; "
            f"{failed}")


def storm_msgs(s: dict[str, Any] | None) -> str:
    if not s or s["errors"]:
        return "n/a"
    missing = "" if s["seq_missing"] is None else f", {s['seq_missing']}"
    return f"{s['sent']}: {s['lost']}, {s['duplicated']}{missing}"


def pct(steps: list[dict[str, Any]], key: str, p: str) -> float | None:
    vals = [s[key][p] for s in steps if s and s[key][p] is not None]
    return statistics.median(vals) if vals else None


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        model = m.group(1).strip() if m else ""

    def ver(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    pkgs = {}
    for name in ("sanic", "websockets", "redis", "aioboto3", "moto"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version
            pkgs[name] = version(name)
    node_pkgs = {}
    for name in ("socket.io", "@socket.io/redis-adapter", "socket.io-client", "ws", "redis"):
        with contextlib.suppress(OSError, ValueError):
            node_pkgs[name] = json.loads(
                (PEER / "node_modules" / name / "package.json").read_text())["version"]
    py = ", ".join(f"{k} {v}" for k, v in pkgs.items())
    js = ", ".join(f"{k} {v}" for k, v in node_pkgs.items())
    return (f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
            f"Python {platform.python_version()} ({py}), "
            f"Node {ver(['node', '--version'])} ({js}), "
            f"{ver(['redis-server', '--version'])[:40]}, {ver(['haproxy', '-v'])[:30]}")


def table(summary: dict[str, dict[str, Any]], quick: bool, started: str,
          load: str) -> str:
    o, p = summary.get(OURS, {}), summary.get(PEER_NAME, {})

    def ratio(a: float | None, b: float | None) -> str:
        return "n/a" if not a or not b else f"{a / b:.2f}×"

    def goal(ok: bool | None, miss: str = "") -> str:
        return "n/a" if ok is None else ("met" if ok else f"**not met** {miss}".strip())

    cpu_ok = None if not o.get("cpu_us") or not p.get("cpu_us") else \
        o["cpu_us"] <= 0.5 * p["cpu_us"]
    rate_ok = None if not p.get("sustained") else o.get("sustained", 0) >= 2 * p["sustained"]
    mem_ok = None if o.get("mem_kib") is None else o["mem_kib"] <= 16
    demo_ok = None if o.get("demo", {}).get("p99") is None else o["demo"]["p99"] <= 25
    rows = [
        ("Server CPU per delivery, µs (both processes, 1,000 clients, "
         f"{CPU_RATE} msg/s)", _f(o.get("cpu_us")), _f(p.get("cpu_us")),
         ratio(o.get("cpu_us"), p.get("cpu_us")), "≤ 0.5×",
         goal(cpu_ok, f"(need ≤ {_f(0.5 * p['cpu_us'])})" if cpu_ok is False else "")),
        ("… of which kernel (stime), µs", _f(o.get("sys_us")), _f(p.get("sys_us")),
         ratio(o.get("sys_us"), p.get("sys_us")), "", ""),
        ("Sustainable send rate at 1,000 clients, msg/s (p99 < 250 ms, every message acked "
         "and delivered, every round; per round)",
         f"{o.get('sustained', 'n/a')} ({', '.join(map(str, o.get('sustained_each', [])))})",
         f"{p.get('sustained', 'n/a')} ({', '.join(map(str, p.get('sustained_each', [])))})",
         ratio(o.get("sustained"), p.get("sustained")), "≥ 2×", goal(rate_ok)),
        ("Demo load (100 users, 20 msg/s, via HAProxy) p50 / p95 / p99, ms",
         " / ".join(_f(o.get("demo", {}).get(k)) for k in ("p50", "p95", "p99")),
         " / ".join(_f(p.get("demo", {}).get(k)) for k in ("p50", "p95", "p99")),
         "", "ours p99 ≤ 25", goal(demo_ok)),
        (f"1,000 clients at {CPU_RATE} msg/s p50 / p95 / p99, ms",
         " / ".join(_f(o.get("k1", {}).get(k)) for k in ("p50", "p95", "p99")),
         " / ".join(_f(p.get("k1", {}).get(k)) for k in ("p50", "p95", "p99")), "", "", ""),
        ("… ours without the paced flush (CHAT_FLUSH_INTERVAL=0), same step: CPU µs per "
         "delivery; p50 / p95 / p99, ms",
         f"{_f(o.get('unpaced_cpu_us'))}; " + " / ".join(
             _f(o.get("unpaced", {}).get(k)) for k in ("p50", "p95", "p99")),
         "", ratio(o.get("unpaced_cpu_us"), p.get("cpu_us")), "", ""),
        (f"Memory per idle connection, KiB (RSS delta ÷ {o.get('mem_n', 'n')} connections)",
         _f(o.get("mem_kib")), _f(p.get("mem_kib")), ratio(o.get("mem_kib"), p.get("mem_kib")),
         "ours ≤ 16", goal(mem_ok)),
        ("Connect time p50 / p99, ms (1,000 clients, 50 in flight)",
         f"{_f(o.get('connect_p50'))} / {_f(o.get('connect_p99'))}",
         f"{_f(p.get('connect_p50'))} / {_f(p.get('connect_p99'))}", "", "", ""),
        ("Load generator CPU per delivery, µs (same window)", _f(o.get("loadgen_cpu_us")),
         _f(p.get("loadgen_cpu_us")), "", "", ""),
        ("Store latency, mean ms (blue, the DynamoDB-emulator calls of a send, "
         "over the demo and the ladder)", _f(o.get("store_mean_ms")), "no storage", "", "", ""),
        ("Not delivered within the 8-10 s drain + duplicated + out of order (demo, and "
         "1,000 clients at the CPU rate)",
         f"{o.get('demo_lost', 'n/a')}, {o.get('k1_lost', 'n/a')}",
         f"{p.get('demo_lost', 'n/a')}, {p.get('k1_lost', 'n/a')}", "", "0", ""),
    ]
    od, oa, pa = o.get("storm_drain"), o.get("storm_all"), p.get("storm_all")

    def cpu_s(s: dict[str, Any] | None) -> str:
        return "n/a" if not s or s["errors"] else _f(s["cpu_s"])

    rows += [
        (f"Reconnect storm, drain: {STORM_USERS:,} clients all on blue, blue drained (migrate "
         f"spread over 80 % of a {STORM_DRAIN_SECONDS} s window; each client opens green with "
         "since, then closes blue); from the drain call until every client is on green with "
         "its history, s (worst round; per round)",
         storm_time(od), "no drain (its reconnect: next row)", "",
         f"≤ {STORM_GOAL_S:.0f} s, nothing lost", storm_goal(od)),
        ("… per client: migrate → history on green p50 / p99, ms; failed attempts (per round)",
         storm_client(od), "", "", "", ""),
        (f"Reconnect storm, all at once: each of {STORM_USERS:,} clients (on both processes) "
         "closes and reconnects at one instant (ours with since); until the last is back "
         "(ours: history; the peer: connect), s (worst round; per round)",
         storm_time(oa), storm_time(pa),
         ratio(oa["time_s"] if oa else None, pa["time_s"] if pa else None),
         f"ours ≤ {STORM_GOAL_S:.0f} s", storm_goal(oa)),
        ("… per client: close → back p50 / p99, ms; failed attempts (per round)",
         storm_client(oa), storm_client(pa), "", "", ""),
        (f"Storm messages ({STORM_RATE} msg/s from {STORM_SENDERS} of the clients, from 2 s "
         "before the trigger to 2 s after the last is back) sent: lost, duplicated (per client "
         "and message), ours also stored seqs a client missed; drain; all. The peer has no "
         "resume: what it sends while a client reconnects is lost to that client",
         f"{storm_msgs(od)}; {storm_msgs(oa)}", storm_msgs(pa), "", "0", ""),
        ("Server CPU from the trigger until the last client is back, s (both processes); "
         "drain; all", f"{cpu_s(od)}; {cpu_s(oa)}", cpu_s(pa), "", "", ""),
    ]
    head = ["| measure | ours (Sanic, blue+green, DynamoDB path) | Socket.IO 4.8 + Redis adapter "
            "(2 processes) | ours ÷ peer | goal | |", "|---|---|---|---|---|---|"]
    body = [f"| {' | '.join(r)} |" for r in rows]
    meta = [f"Run `{'bash bench/run.sh --quick' if quick else 'bash bench/run.sh'}` on "
            f"{started}; rounds per system: {o.get('rounds', 0)} (A B A B…). Machine: "
            f"{machine()}. Load average at the start: {load}."]
    if quick:
        meta.append("Quick mode: fewer rates, shorter windows, and memory at 1,000 (not "
                    f"2,500) connections; the storms at {STORM_USERS:,} clients as in the full "
                    "sitting.")
    return "\n".join([*meta, "", *head, *body])


def write_doc(section: str) -> None:
    block = f"{START}\n{section}\n{END}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Fan-out vs Socket.IO\n\n" + block + "\n"
    DOC.write_text(text)


def ensure_peer() -> None:
    if not (PEER / "node_modules" / "socket.io").exists():
        log("installing the peer from npm (npm ci in bench/peer)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER, check=True)


@contextlib.contextmanager
def sitting_up() -> Iterator[Sitting]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    s = Sitting(tmp)
    try:
        s.up()
        yield s
    finally:
        s.p.stop_all()
        log(f"logs in {tmp}")


def ab_runs(s: Sitting, code: dict[str, Path], rounds: int
            ) -> Iterator[tuple[int, str, str, list[subprocess.Popen[bytes]]]]:
    """For the A/B diagnostics (bench/demo_ab.py, bench/connect_ab.py): per round, our chat
    started from code["A"] and code["B"] (the order swaps every round), then the peer, each
    on fresh processes: (round, "A" | "B" | "peer", system, processes), stopped after."""
    global REPO
    for rnd in range(rounds):
        for run in (["A", "B"] if rnd % 2 == 0 else ["B", "A"]) + ["peer"]:
            system = PEER_NAME if run == "peer" else OURS
            if run != "peer":
                REPO = code[run]  # start_system runs `python -m chat` there
            procs = s.start_system(system)
            try:
                yield rnd, run, system, procs
            finally:
                s.p.stop(procs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="≤ 3 min: 1 round, fewer rates")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per system (default 2)")
    ap.add_argument("--rates", default="", help=f"comma list of ladder rates, msg/s, "
                    f"including {CPU_RATE} (default {','.join(map(str, LADDER))}); for "
                    "development: never written to the docs")
    ap.add_argument("--no-write", action="store_true", help="print only, keep docs as they are")
    ap.add_argument("--json", default="", help="also write every raw report to this file")
    ap.add_argument("--from-json", default="", help="render the table from a --json file of "
                    "an earlier sitting instead of running one")
    ap.add_argument("--storms-only", action="store_true", help="run only the reconnect "
                    "storms; for development: never written to the docs")
    ap.add_argument("--systems", default=f"{OURS},{PEER_NAME}",
                    help=f"comma list of systems to run (default {OURS},{PEER_NAME}); one "
                         "system alone is for development, its table has no ratios")
    args = ap.parse_args(argv)
    systems = [s for s in (OURS, PEER_NAME) if s in args.systems.split(",")]
    if not systems:
        ap.error(f"--systems: choose from {OURS}, {PEER_NAME}")
    rates = sorted({int(r) for r in args.rates.split(",") if r.strip()})
    if rates and CPU_RATE not in rates:
        ap.error(f"--rates must include the CPU step's rate, {CPU_RATE}")
    if len(systems) < 2 or rates or args.storms_only:
        args.no_write = True  # docs/benchmarks.md only ever holds side-by-side sittings
    rounds = args.rounds or (1 if args.quick else 2)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        results, meta = saved["results"], saved["meta"]
    else:
        ensure_peer()
        meta = {"started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "load": Path("/proc/loadavg").read_text().split()[0], "quick": args.quick}
        results = []
        t0 = time.monotonic()
        with sitting_up() as sitting:
            for rnd in range(1, rounds + 1):
                for system in systems:
                    results.append(run_round(sitting, system, args.quick, rnd, rates,
                                             storms_only=args.storms_only))
        meta["wall_s"] = round(time.monotonic() - t0)
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    section = table(summarise(results), bool(meta["quick"]), meta["started"], meta["load"])
    section += f"\n\nWall time of the sitting: {meta.get('wall_s', '?')} s."
    print(section)
    if not args.no_write:
        write_doc(section)
        log(f"written to {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
