"""The image ECS Fargate runs (chat/Dockerfile), built and run here with buildah (issue 14).

scripts/image.sh builds it on a local Debian bookworm base (debootstrap, cached under
~/.cache/canary-chat/image and in buildah's storage, keyed by its package list) that stands in
for python:3.11-slim. The container runs the image's own command as the image's user
(`buildah run --isolation chroot --network host`, which honours the image's USER, WORKDIR and
ENV) against the session's redis-server and DynamoDB emulator, next to a chat process on the
host. Skipped, with the reason, only where buildah is missing or cannot run containers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chatstack import ADMIN_TOKEN, ChatClient, ChatStack, http
from tests.conftest import Service, free_port, wait_for_http
from tests.image.conftest import Built, buildah, image_env, needs_buildah

pytestmark = [pytest.mark.image, pytest.mark.integration, pytest.mark.timeout(900),
              needs_buildah]

# The layers the project adds on the base (the pinned requirements and chat/), uncompressed,
# as `buildah push IMAGE dir:` writes them; measured at 72 MiB (docs/image.md). The bound
# catches a dependency or a directory the image should not carry (Ansible alone is ~150 MiB).
PROJECT_LAYERS_MAX = 100 * 1024 * 1024
DRAIN_SECONDS = 2


@dataclass
class Container:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str, name: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?room={room}&name={name}"

    def chat_pid(self) -> int:
        """The chat server's host pid: the python descendant of buildah run (chroot isolation
        shares the host's pid namespace; buildah-chroot-exec is its parent)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for pid in descendants(self.proc.pid):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                # not buildah-chroot-exec (whose arguments are the same command)
                if Path(cmd[0].decode()).name.startswith("python") and cmd[1:4] == [
                        b"-m", b"chat", b"serve"]:
                    return pid
            time.sleep(0.1)
        raise AssertionError(f"no chat process under buildah run:\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.fixture()
def container(image: Built, chat_stack: ChatStack, redis_server: Service,
              moto_server: Service, tmp_path: Path) -> Iterator[Container]:
    """The image's command as the image's user, green v2, on a free port."""
    name = "chat-test-" + uuid.uuid4().hex[:8]
    buildah("from", "--name", name, image.tag)
    port = free_port()
    env = {
        "CHAT_PORT": str(port), "CHAT_COLOR": "green", "CHAT_VERSION": "v2",
        "REDIS_URL": redis_server.url, "AWS_ENDPOINT_URL_DYNAMODB": moto_server.url,
        "AWS_REGION": "ap-northeast-2", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "CHAT_ADMIN_TOKEN": ADMIN_TOKEN,
        "CHAT_DRAIN_SECONDS": str(DRAIN_SECONDS), "CHAT_GAP_SKIP": "3",
    }
    args = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
    log = tmp_path / "container.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            ["buildah", "run", "--isolation", "chroot", "--network", "host", *args, name,
             "--", *image.config["Cmd"]], stdin=subprocess.DEVNULL, stdout=f,
            stderr=subprocess.STDOUT)
    ctr = Container(name, proc, port, log)
    try:
        wait_for_http(f"{ctr.url}/healthz", timeout=60)
        yield ctr
    finally:
        if proc.poll() is None:
            for pid in descendants(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.kill()
        proc.wait(15)
        subprocess.run(["buildah", "rm", name], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=60)


def test_image_declares_what_ecs_needs(image: Built):
    cfg = image.config
    assert "8000/tcp" in (cfg.get("ExposedPorts") or {})
    assert cfg.get("StopSignal") == "SIGTERM"
    assert cfg.get("User") == "10001:10001"
    assert cfg["Cmd"] == ["python", "-m", "chat", "serve"]
    env = image_env(cfg)
    assert env["CHAT_PORT"] == "8000" and env["CHAT_HOST"] == "0.0.0.0"
    assert "/healthz" in " ".join(cfg["Healthcheck"]["Test"])


def test_image_holds_only_the_runtime(image: Built):
    ctr = buildah("from", image.tag).strip()
    try:
        probe = ("import importlib.util as u, os, json; print(json.dumps({m: bool(u.find_spec(m))"
                 " for m in ['sanic', 'redis', 'aioboto3', 'ansible', 'moto', 'pytest']}"
                 " | {'loadgen': bool(u.find_spec('loadgen')) or os.path.exists('/app/loadgen'),"
                 " 'app': os.path.exists('/app/chat/app.py'),"
                 " 'site': os.path.exists('/app/site'), 'tests': os.path.exists('/app/tests')}))")
        out = buildah("run", "--isolation", "chroot", "--network", "host", ctr, "--",
                      "python", "-c", probe)
    finally:
        buildah("rm", ctr)
    assert json.loads(out) == {"sanic": True, "redis": True, "aioboto3": True, "app": True,
                               "ansible": False, "moto": False, "pytest": False,
                               "loadgen": False, "site": False, "tests": False}


def test_project_layers_stay_small(image: Built, tmp_path: Path):
    base_layers = len(json.loads(buildah("inspect", "--type", "image", image.base))
                      ["OCIv1"]["rootfs"]["diff_ids"])
    buildah("push", "--quiet", "--disable-compression", image.tag, f"dir:{tmp_path}/img",
            timeout=300)
    manifest = json.loads((tmp_path / "img" / "manifest.json").read_text())
    layers = manifest["layers"]
    assert len(layers) > base_layers
    added = sum(layer["size"] for layer in layers[base_layers:])
    print(f"build {image.build_seconds:.1f} s; project layers {added / 2**20:.1f} MiB; "
          f"base {sum(la['size'] for la in layers[:base_layers]) / 2**20:.1f} MiB")
    assert added < PROJECT_LAYERS_MAX, f"project layers {added} bytes"


async def test_container_serves_drains_and_runs_unprivileged(image: Built, container: Container,
                                                              chat_stack: ChatStack):
    status, body, _ = await asyncio.to_thread(http, "GET", container.url + "/healthz")
    assert status == 200, body
    for _ in range(100):
        status, body, _ = await asyncio.to_thread(http, "GET", container.url + "/readyz")
        if status == 200:
            break
        await asyncio.sleep(0.2)
    assert status == 200, (body, container.logs())

    pid = await asyncio.to_thread(container.chat_pid)
    status_text = await asyncio.to_thread(Path(f"/proc/{pid}/status").read_text)
    uids = next(line for line in status_text.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids and all(u == "10001" for u in uids), uids

    # a message round trip between a client on the container and one on a host process
    host = await asyncio.to_thread(chat_stack.start, "blue")
    room = "img-" + uuid.uuid4().hex[:6]
    on_ctr = await ChatClient.connect(container.ws_url(room, "boxed"))
    on_host = await ChatClient.connect(host.ws_url(room, "hosted"))
    clients = [on_ctr, await ChatClient.connect(container.ws_url(room, "boxed2"))]
    try:
        await on_ctr.send("from the container")
        await on_host.wait_for(lambda: any(m["text"] == "from the container"
                                           for m in on_host.messages.values()),
                               what="container -> host")
        await on_host.send("from the host")
        await on_ctr.wait_for(lambda: any(m["text"] == "from the host"
                                          for m in on_ctr.messages.values()),
                              what="host -> container")

        # SIGTERM (the image's stop signal, what ECS sends) to the server: every client on
        # the container gets migrate, then 1012, and the process exits within ECS's stop
        # timeout for this drain (CHAT_DRAIN_SECONDS + 10, roles/compute).
        sig = signal.Signals[image.config["StopSignal"]]
        t0 = time.monotonic()
        os.kill(pid, sig)
        for c in clients:
            await c.wait_for(lambda c=c: c.migrates == 1, within=10, what="migrate")
            assert await c.closed(within=DRAIN_SECONDS + 10) == 1012
        rc = await asyncio.to_thread(container.proc.wait, DRAIN_SECONDS + 10)
        elapsed = time.monotonic() - t0
        assert rc == 0, container.logs()
        assert elapsed < DRAIN_SECONDS + 10
        # the host process and its client are untouched by the container's drain
        assert on_host.close_code is None
    finally:
        for c in [*clients, on_host]:
            await c.close()
        host.stop()
