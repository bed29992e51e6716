"""haproxy_runtime_info (what the roles ask HAProxy) against a real HAProxy 2.6, run as
Ansible runs it; the same HAProxy stand-up as traffic_shift's haproxy driver tests."""

# The `stack` fixture is imported from the driver's tests; tests take it as a parameter.
# ruff: noqa: F811

from __future__ import annotations

from typing import Any

from tests.integration.test_traffic_shift_haproxy import (  # noqa: F401 - stack is a fixture
    Stack,
    run_module,
    stack,
)

MODULE = "canarychat.platform.haproxy_runtime_info"


def ask(stack: Stack, command: str, *flags: str, **extra: Any) -> dict[str, Any]:
    return run_module({"socket": stack.socket_path, "command": command, **extra}, *flags,
                      module=MODULE)


def test_get_weight_answers_are_parsed_per_server(stack: Stack) -> None:
    stack.set_weights(70, 30)
    res = ask(stack, "get weight chat/blue; get weight chat/green")
    assert not res.get("failed"), res
    assert res["changed"] is False
    assert res["weights"] == {"chat/blue": 70, "chat/green": 30}
    assert [ln for ln in res["output_lines"] if ln] == ["70 (initial 90)", "30 (initial 10)"]


def test_show_servers_state_rows_carry_the_operational_state(stack: Stack) -> None:
    res = ask(stack, "show servers state chat")
    assert not res.get("failed"), res
    rows = {r["srv_name"]: r for r in res["servers"]}
    assert set(rows) == {"blue", "green"}
    assert rows["green"]["be_name"] == "chat"
    assert rows["green"]["srv_op_state"] == "2"  # SRV_ST_RUNNING
    assert rows["green"]["srv_uweight"] == "10"
    assert res["output"].startswith("1\n")  # the server-state file format version

    stack.green.ready = False
    stack.wait_status("green", "DOWN")
    rows = {r["srv_name"]: r for r in ask(stack, "show servers state chat")["servers"]}
    assert rows["green"]["srv_op_state"] == "0"  # SRV_ST_STOPPED
    assert rows["blue"]["srv_op_state"] == "2"


def test_runs_in_check_mode(stack: Stack) -> None:
    res = ask(stack, "show info", "--check")
    assert not res.get("failed"), res
    assert "Name: HAProxy" in res["output"]


def test_a_command_that_changes_something_is_refused_before_connecting(stack: Stack) -> None:
    res = ask(stack, "get weight chat/blue; set server chat/green weight 0")
    assert res.get("failed") is True
    assert "refused: set server chat/green weight 0" in res["msg"]
    assert stack.weights() == {"blue": 90, "green": 10}


def test_an_unknown_server_fails_with_haproxys_answer(stack: Stack) -> None:
    res = ask(stack, "get weight chat/blue; get weight chat/greeen")
    assert res.get("failed") is True
    assert "HAProxy cannot read the weight of chat/greeen" in res["msg"]


def test_unreachable_socket_fails_with_the_reason(stack: Stack) -> None:
    res = ask(stack, "show info", timeout=2)
    assert not res.get("failed"), res
    res = ask(stack, "show info", socket=stack.socket_path + ".nope")
    assert res.get("failed") is True
    assert "cannot connect to the HAProxy runtime API" in res["msg"]
