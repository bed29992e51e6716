"""The board's configured weights are HAProxy's own, read from its stats CSV (issue 13, item 3).

A real HAProxy (weights 90/10 in its configuration, as site.yml leaves it) in front of a
real chat blue and green; no canary event is ever posted unless a test says so.
"""

from __future__ import annotations

import contextlib
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chatstack import http
from tests.conftest import REPO, Service, haproxy_status
from tests.lbstack import STATS_URI, WeightedStack, stats, wait_weights, weighted_stack


@pytest.fixture(scope="module")
def stack(moto_server: Service, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[WeightedStack]:
    with weighted_stack(moto_server, tmp_path_factory.mktemp("lbweights")) as s:
        yield s


def test_weights_are_haproxys_right_after_start_with_no_canary_event(
        stack: WeightedStack) -> None:
    assert stats(stack.blue)["events"] == []
    assert stack.lb_weights() == {"blue": 90, "green": 10}
    for inst in (stack.blue, stack.green):  # read at start: right from the first request
        got = stats(inst)["weights"]
        assert (got["blue"], got["green"], got["source"]) == (90, 10, "haproxy"), got
        assert "error" not in got
    # the public door's /api/stats (what the board page fetches) says the same
    status, body, _ = http("GET", stack.url + "/api/stats")
    assert status == 200 and b'"source":"haproxy"' in body.replace(b" ", b"")


def test_weights_follow_a_change_made_by_hand_on_the_runtime_api(stack: WeightedStack) -> None:
    stack.set_weight("green", 50)
    stack.set_weight("blue", 50)
    assert stack.lb_weights() == {"blue": 50, "green": 50}
    for inst in (stack.blue, stack.green):
        wait_weights(inst, {"blue": 50, "green": 50})


def test_a_canary_event_does_not_override_what_haproxy_has(stack: WeightedStack) -> None:
    status, _ = stack.chats.admin(stack.blue, "/api/admin/deploy-event", {
        "action": "step", "weights": {"blue": 10, "green": 90}, "ok": True})
    assert status == 201
    body = stats(stack.blue)
    assert [e["weights"] for e in body["events"]] == [{"blue": 10, "green": 90}]
    assert {c: body["weights"][c] for c in ("blue", "green")} == stack.lb_weights()


def test_weights_are_right_after_a_chat_restart(stack: WeightedStack) -> None:
    stack.set_weight("blue", 70)
    stack.set_weight("green", 30)
    blue = stack.restart_chat("blue")
    # read before the restarted chat took its first request: right at once, no waiting
    got = stats(blue)["weights"]
    assert (got["blue"], got["green"], got["source"]) == (70, 30, "haproxy"), got


def test_the_stats_page_is_read_only_and_keeps_its_host_allow_list(
        stack: WeightedStack) -> None:
    base = f"http://127.0.0.1:{stack.admin}{STATS_URI}"
    status, body, _ = http("GET", base + ";csv")
    assert status == 200 and body.startswith(b"# pxname,svname,")
    status, _, _ = http("GET", base + ";csv", headers={"Host": "evil.example"})
    assert status == 403
    # no `stats admin`: the page's action form (here: green to maintenance) changes nothing
    req = urllib.request.Request(base, data=b"s=green&action=maint&b=chat", method="POST",
                                 headers={"Host": f"127.0.0.1:{stack.admin}"})
    with contextlib.suppress(urllib.error.HTTPError), urllib.request.urlopen(req, timeout=5):
        pass
    assert not haproxy_status(stack.sock, "green").startswith("MAINT")


def test_the_role_template_serves_the_same_read_only_stats_page() -> None:
    template = (REPO / "roles/loadbalancer/templates/haproxy.cfg.j2").read_text()
    admin = template.split("frontend admin", 1)[1].split("\nbackend ", 1)[0]
    assert "stats enable" in admin and "stats uri {{ local_haproxy_stats_uri }}" in admin
    assert not re.search(r"^\s*stats admin", template, re.M)  # a directive, not a comment
    chat_conf = (REPO / "roles/compute/templates/chat.conf.j2").read_text()
    assert ('CHAT_WEIGHTS_HAPROXY_URL="http://127.0.0.1:{{ local_admin_port }}'
            '{{ local_haproxy_stats_uri }};csv"') in chat_conf


def test_haproxy_gone_keeps_the_last_weights_with_their_age_and_the_error(
        stack: WeightedStack) -> None:
    last = wait_weights(stack.green, stack.lb_weights())
    stack.stop_haproxy()
    deadline = time.monotonic() + 10
    while "error" not in (got := stats(stack.green)["weights"]):
        assert time.monotonic() < deadline, got
        time.sleep(0.2)
    assert {c: got[c] for c in ("blue", "green")} == {c: last[c] for c in ("blue", "green")}
    time.sleep(1.5)
    later = stats(stack.green)["weights"]
    assert later["ts"] == got["ts"] and later["age_s"] > got["age_s"]
    assert "lbweights_failed" in Path(stack.green.log_path).read_text()
