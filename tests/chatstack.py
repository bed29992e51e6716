"""Reusable chat stack for tests: redis-server + moto server + chat instances (blue, green).

Importable by any suite (integration, browser, e2e). Everything runs on free 127.0.0.1
ports, as real processes; nothing touches the fixed local-stack ports.

API
---
``ChatStack(redis_url, dynamodb_url, workdir, admin_token="test-admin-token",
drain_seconds=2.0, env=None)``
    ``init_tables()``            run ``python -m chat init-tables`` against dynamodb_url.
    ``start(color, version=None, port=None, env=None, static=None, wait=True)``
                                 start ``python -m chat serve`` (version default: v1 for
                                 blue, v2 otherwise) and wait for /readyz; returns a
                                 ``ChatInstance``.
    ``stop_all()``               stop every instance it started.
    ``admin(instance, path, body)``  POST an admin call with the bearer token -> (status, json).

``ChatInstance``: ``color``, ``version``, ``port``, ``url`` (http://127.0.0.1:port),
``ws_url(room, name, since=None)``, ``proc``, ``log_path``; ``get(path)`` -> (status, body
bytes); ``get_json(path)``; ``terminate()`` (SIGTERM, returns at once), ``wait(timeout)``
-> exit code; ``stop()`` (SIGTERM, then SIGKILL after 15 s); ``logs()`` -> str.

``ChatClient``: a small asyncio WebSocket client (websockets) that records every frame;
``await ChatClient.connect(inst.ws_url(room, name))`` returns after welcome and history.
``http(method, url, body=None, headers=None)`` -> (status, body bytes, headers).

Fixtures (import them in a conftest: ``from tests.chatstack import chat_stack, chat_pair``):
    ``chat_stack``   module-scoped ChatStack on the session's redis_server/moto_server,
                     tables created; instances stopped at module end.
    ``chat_pair``    module-scoped (blue, green) instances of ``chat_stack``.

Defaults for tests: CHAT_DRAIN_SECONDS=2, CHAT_GAP_SKIP=3; pass ``env`` to override any
CHAT_* variable (e.g. CHAT_SEND_QUEUE, CHAT_FAULT_RATE).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import REPO, Service, free_port, wait_for_http

ADMIN_TOKEN = "test-admin-token"


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, bytes, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def raw_http_status(port: int, request: bytes) -> int | None:
    """Write `request` to 127.0.0.1:`port` byte for byte; the answer's status code, None if
    none came (for requests an HTTP client library would refuse to send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return int(m.group(1)) if m else None

@dataclass
class ChatInstance:
    color: str
    version: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str, name: str, since: int | None = None) -> str:
        q = {"room": room, "name": name}
        if since is not None:
            q["since"] = str(since)
        return f"ws://127.0.0.1:{self.port}/ws?{urllib.parse.urlencode(q)}"

    def get(self, path: str) -> tuple[int, bytes]:
        status, body, _ = http("GET", self.url + path)
        return status, body

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path)[1])

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ChatStack:
    def __init__(self, redis_url: str, dynamodb_url: str, workdir: Path,
                 admin_token: str = ADMIN_TOKEN, drain_seconds: float = 2.0,
                 env: dict[str, str] | None = None) -> None:
        self.redis_url = redis_url
        self.dynamodb_url = dynamodb_url
        self.workdir = Path(workdir)
        self.admin_token = admin_token
        self.drain_seconds = drain_seconds
        self.extra_env = dict(env or {})
        self.instances: list[ChatInstance] = []

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url, AWS_ENDPOINT_URL_DYNAMODB=self.dynamodb_url,
            AWS_REGION="ap-northeast-2", AWS_DEFAULT_REGION="ap-northeast-2",
            AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
            CHAT_ADMIN_TOKEN=self.admin_token, CHAT_DRAIN_SECONDS=str(self.drain_seconds),
            CHAT_GAP_SKIP="3", PYTHONUNBUFFERED="1",
        )
        env.pop("AWS_PROFILE", None)
        env.update(self.extra_env)
        return env

    def init_tables(self) -> None:
        subprocess.run([sys.executable, "-m", "chat", "init-tables"], cwd=REPO,
                       env=self.base_env(), check=True, timeout=60,
                       stdout=subprocess.DEVNULL)

    def start(self, color: str, version: str | None = None, port: int | None = None,
              env: dict[str, str] | None = None, static: str | Path | None = None,
              wait: bool = True) -> ChatInstance:
        version = version or ("v1" if color == "blue" else "v2")
        port = port or free_port()
        full_env = self.base_env()
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "chat", "serve", "--host", "127.0.0.1", "--port",
               str(port), "--color", color, "--version", version]
        if static is not None:
            cmd += ["--static", str(static)]
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"chat-{color}-{port}.log"
        with log_path.open("wb") as logf:
            proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=logf,
                                    stderr=subprocess.STDOUT)
        inst = ChatInstance(color, version, port, proc, log_path, full_env)
        self.instances.append(inst)
        if wait:
            try:
                wait_for_http(f"{inst.url}/healthz", timeout=30)
                wait_until_ready(inst)
            except TimeoutError as e:
                inst.stop()
                raise RuntimeError(
                    f"chat {color} did not start:\n{inst.logs()[-4000:]}") from e
        return inst

    def admin(self, inst: ChatInstance, path: str, body: Any,
              token: str | None = None) -> tuple[int, Any]:
        tok = self.admin_token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        status, raw, _ = http("POST", inst.url + path, body, headers)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def stop_all(self) -> None:
        for inst in self.instances:
            inst.stop()
        self.instances.clear()


def wait_until_ready(inst: ChatInstance, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inst.proc.poll() is not None:
            raise TimeoutError(f"chat exited with {inst.proc.returncode}")
        status, _ = inst.get("/readyz")
        if status == 200:
            return
        time.sleep(0.1)
    raise TimeoutError("not ready")


@pytest.fixture(scope="module")
def chat_stack(redis_server: Service, moto_server: Service,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatStack]:
    stack = ChatStack(redis_server.url, moto_server.url, tmp_path_factory.mktemp("chat"))
    stack.init_tables()
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def chat_pair(chat_stack: ChatStack) -> tuple[ChatInstance, ChatInstance]:
    return chat_stack.start("blue"), chat_stack.start("green")


# --------------------------------------------------------------------------- test client


class ChatClient:
    """A small WebSocket chat client for tests (websockets' asyncio client).

    ``await ChatClient.connect(url)`` reads ``welcome`` and ``history``, then a reader task
    records every frame: ``messages`` (seq -> frame, live and history), ``seqs`` (in arrival
    order on this connection), ``acks`` (client_id -> seq), ``errors``, ``presence``,
    ``migrates``; ``close_code`` once closed. ``wait_for(pred)`` polls a predicate.
    """

    def __init__(self, ws: Any, welcome: dict[str, Any], history: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.history = history
        self.messages: dict[int, dict[str, Any]] = {
            m["seq"]: m for m in history["messages"]}
        self.seqs: list[int] = [m["seq"] for m in history["messages"]]
        self.acks: dict[str, int] = {}
        self.errors: list[dict[str, Any]] = []
        self.presence: list[dict[str, Any]] = []
        self.migrates = 0
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._reader: Any = None

    @classmethod
    async def connect(cls, url: str, read: bool = True, **kwargs: Any) -> ChatClient:
        ws = await websockets.connect(url, open_timeout=10, **kwargs)
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        history = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["type"] == "welcome", welcome
        assert history["type"] == "history", history
        client = cls(ws, welcome, history)
        if read:
            client.start_reading()
        return client

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                kind = frame.get("type")
                if kind == "message":
                    self.seqs.append(frame["seq"])
                    self.messages.setdefault(frame["seq"], frame)
                elif kind == "ack":
                    self.acks[frame["client_id"]] = frame["seq"]
                elif kind == "error":
                    self.errors.append(frame)
                elif kind == "presence":
                    self.presence.append(frame)
                elif kind == "migrate":
                    self.migrates += 1
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code if self.ws.close_code is not None else 1006

    async def send_json(self, obj: Any) -> None:
        await self.ws.send(json.dumps(obj))

    async def send(self, text: str, client_id: str | None = None) -> str:
        client_id = client_id or uuid.uuid4().hex
        await self.send_json({"type": "send", "text": text, "client_id": client_id})
        return client_id

    async def wait_for(self, pred: Any, within: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + within
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or pred}")
            await asyncio.sleep(0.02)

    async def closed(self, within: float = 10.0) -> int:
        await self.wait_for(lambda: self.close_code is not None, within, "close")
        assert self.close_code is not None
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader
