"""Signed admin calls against running chat instances (real redis-server, the DynamoDB emulator).

This is issue 11's "a replayed admin call is refused" test: the request that crosses the
plain-HTTP CloudFront -> ALB hop on AWS is a Canary-HMAC-SHA256 signed call, and whoever
copies it off the wire cannot use it again, on the same instance or any other one.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat import adminauth
from tests.chatstack import ADMIN_TOKEN, ChatInstance, ChatStack, http, raw_http_status
from tests.conftest import REPO, VENV_BIN, start_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def pair(chat_stack: ChatStack) -> Iterator[tuple[ChatInstance, ChatInstance]]:
    """Blue accepts Bearer too (the default); green takes signed calls only, as on AWS."""
    blue = chat_stack.start("blue", version="sig1")
    green = chat_stack.start("green", version="sig2", env={"CHAT_ADMIN_BEARER": "0"})
    yield blue, green
    blue.stop()
    green.stop()


def signed_post(inst: ChatInstance, path: str, body: Any, *, token: str = ADMIN_TOKEN,
                header: str | None = None, timestamp: int | None = None,
                send_body: bytes | None = None) -> tuple[int, Any, str]:
    """POST `body` (JSON) signed with `token`; returns (status, answer, the header used)."""
    raw = json.dumps(body).encode()
    header = header or adminauth.authorization(token, "POST", path, raw, timestamp=timestamp)
    status, answer, _ = http_raw(inst, path, raw if send_body is None else send_body, header)
    return status, answer, header


def http_raw(inst: ChatInstance, path: str, body: bytes,
             authorization: str) -> tuple[int, Any, dict[str, str]]:
    status, raw, headers = _post(inst.url + path, body, authorization)
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw, headers


def _post(url: str, body: bytes, authorization: str) -> tuple[int, bytes, dict[str, str]]:
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": authorization, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def raw_request(inst: ChatInstance, authorization: bytes, body: bytes = b'{"color":"blue"}',
                path: bytes = b"/api/admin/undrain") -> int:
    """One HTTP/1.1 request with exactly these header bytes; returns the status code."""
    status = raw_http_status(inst.port, b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\nConnection: close\r\n"
                             b"Authorization: " + authorization + b"\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert status is not None, "no answer"
    return status


def test_signed_call_works_and_its_replay_is_refused_on_every_instance(pair) -> None:
    blue, green = pair
    event = {"action": "step", "weights": {"blue": 90, "green": 10}, "message": "signed"}
    status, answer, header = signed_post(blue, "/api/admin/deploy-event", event)
    assert status == 201, answer
    assert blue.get_json("/api/stats")["events"][0]["message"] == "signed"
    # the same bytes again, as someone who copied them off the CloudFront -> ALB hop would
    for inst in (blue, green):
        status, answer, _ = signed_post(inst, "/api/admin/deploy-event", event, header=header)
        assert status == 401 and answer == {"error": "unauthorized", "reason": "replayed"}
    # a signed color command on the signed-only instance, then its replay
    status, answer, header = signed_post(green, "/api/admin/undrain", {"color": "green"})
    assert status == 202 and answer["cmd"] == "undrain", answer
    status, answer, _ = signed_post(green, "/api/admin/undrain", {"color": "green"},
                                    header=header)
    assert status == 401 and answer["reason"] == "replayed"


def test_stale_or_future_timestamps_are_refused(pair) -> None:
    blue, green = pair
    for inst in (blue, green):
        for offset in (-120, 120):
            status, answer, _ = signed_post(inst, "/api/admin/undrain", {"color": "blue"},
                                            timestamp=int(time.time()) + offset)
            assert status == 401 and answer["reason"] == "stale timestamp", (offset, answer)
        # a signature from 30 s ago is still fresh: the window is +-60 s by default
        status, answer, _ = signed_post(inst, "/api/admin/undrain", {"color": "blue"},
                                        timestamp=int(time.time()) - 30)
        assert status == 202, answer


def test_wrong_signatures_are_refused(pair) -> None:
    blue, green = pair
    for inst in (blue, green):
        status, answer, headers = http_raw(inst, "/api/admin/undrain", b'{"color":"blue"}',
                                           adminauth.authorization(
                                               "not-the-token", "POST", "/api/admin/undrain",
                                               b'{"color":"blue"}'))
        assert status == 401 and answer["reason"] == "bad signature"
        assert headers["WWW-Authenticate"] == "Canary-HMAC-SHA256"
        # signed for blue, sent for green: the body is part of the signature
        status, answer, _ = signed_post(inst, "/api/admin/drain", {"color": "blue"},
                                        send_body=b'{"color":"green"}')
        assert status == 401 and answer["reason"] == "bad signature"
        # signed for undrain, sent to drain: so is the path
        header = adminauth.authorization(ADMIN_TOKEN, "POST", "/api/admin/undrain",
                                         b'{"color":"green"}')
        status, answer, _ = http_raw(inst, "/api/admin/drain", b'{"color":"green"}', header)
        assert status == 401 and answer["reason"] == "bad signature"
    assert green.get("/readyz")[0] == 200  # nothing was drained


def test_bearer_is_refused_when_chat_admin_bearer_is_0(chat_stack: ChatStack, pair) -> None:
    blue, green = pair
    status, answer = chat_stack.admin(green, "/api/admin/undrain", {"color": "green"})
    assert status == 401 and answer["reason"] == "signed request required"
    status, _, headers = http("POST", green.url + "/api/admin/undrain", {"color": "green"},
                              {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 401 and headers["WWW-Authenticate"] == "Canary-HMAC-SHA256"
    # the default keeps Bearer working (the local stack's tooling and tests use it)
    assert chat_stack.admin(blue, "/api/admin/undrain", {"color": "blue"})[0] == 202


@pytest.mark.parametrize("authorization", [
    b"Bearer \xff", b"Bearer \xc3", b"Bearer " + ADMIN_TOKEN.encode() + b"\xff",
    b"Canary-HMAC-SHA256 \xff", b"Canary-HMAC-SHA256 t=1,n=\xe2\x80\xae,s=00",
    b"Canary-HMAC-SHA256 t=" + b"9" * 5000 + b",n=0123456789abcdef,s=" + b"0" * 64,
    b"Canary-HMAC-SHA256 t=\xd9\xa1,n=0123456789abcdef0123,s=" + b"a" * 64,
    b"Canary-HMAC-SHA256", b"canary-hmac-sha256 t=,n=,s=", b"\x7f\x01", b"",
])
def test_malformed_authorization_bytes_are_401_never_500(pair, authorization: bytes) -> None:
    for inst in pair:
        assert raw_request(inst, authorization) == 401, (inst.color, authorization)


def test_signed_calls_are_refused_503_while_redis_is_down(chat_stack: ChatStack,
                                                         tmp_path: Path) -> None:
    redis = start_redis(tmp_path)
    inst = chat_stack.start("blue", version="sig-redis", env={"REDIS_URL": redis.url})
    try:
        status, answer, _ = signed_post(inst, "/api/admin/undrain", {"color": "blue"})
        assert status == 202, answer
        redis.stop()
        status, answer, _ = signed_post(inst, "/api/admin/undrain", {"color": "blue"})
        # a nonce that cannot be checked could be a replay: refused, not accepted
        assert status == 503 and "nonce" in answer["error"], answer
        # Bearer does not need Redis for a command to the instance's own color
        status, _ = chat_stack.admin(inst, "/api/admin/undrain", {"color": "blue"})
        assert status == 202
    finally:
        inst.stop()
        redis.stop()


def test_deploy_role_admin_and_event_tasks_send_calls_the_chat_accepts(
        pair, tmp_path: Path) -> None:
    """roles/deploy/tasks/admin.yml and event.yml, run by ansible-playbook against the
    signed-only instance: the filter's header and the raw body the chat receives agree; an
    event that cannot be signed does not fail the play; the token is never printed."""
    _, green = pair
    playbook = tmp_path / "admin.yml"
    playbook.write_text(f"""
- name: Signed admin calls from the deploy role
  hosts: localhost
  gather_facts: false
  vars:
    __deploy_url: {green.url}
    __deploy_admin_token: {ADMIN_TOKEN}
  tasks:
    - name: Undrain green
      ansible.builtin.include_role:
        name: canarychat.platform.deploy
        tasks_from: admin
      vars:
        __deploy_admin_command: undrain
        __deploy_color: green
    - name: Record an event with text that JSON escapes
      ansible.builtin.include_role:
        name: canarychat.platform.deploy
        tasks_from: event
      vars:
        __deploy_event:
          action: step
          ok: true
          weights: {{blue: 50, green: 50}}
          gates: {{}}
          message: "signed by the role: caf\\u00e9 \\"quoted\\" {{{{ 1 + 1 }}}}"
    - name: An event that cannot be signed is reported, and the play goes on
      ansible.builtin.include_role:
        name: canarychat.platform.deploy
        tasks_from: event
      vars:
        __deploy_admin_token: ""
        __deploy_event: {{action: step, ok: true, weights: {{}}, gates: {{}}, message: lost}}
""")
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-vvv",
         "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}", str(playbook)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the board events: the first recorded, the unsignable one reported and skipped
    assert proc.stdout.count("deploy board event not recorded") == 1, proc.stdout[-3000:]
    assert "admin_signature: the token is empty" in proc.stdout
    assert "Canary-HMAC-SHA256 t=" in proc.stdout  # -vvv shows the header sent ...
    assert ADMIN_TOKEN not in proc.stdout + proc.stderr  # ... and never the token
    event = green.get_json("/api/stats")["events"][0]
    assert event["message"] == 'signed by the role: caf\u00e9 "quoted" 2'
    assert event["weights"] == {"blue": 50, "green": 50}
