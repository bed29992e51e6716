"""chat/lbweights.py's readings and the CHAT_WEIGHTS_* configuration."""

from __future__ import annotations

import asyncio

import pytest

from chat.config import Config
from chat.lbweights import WeightsPoller, forward_weights, parse_haproxy_csv, weighted_rule

# HAProxy 2.6's stats CSV (header and rows cut to the columns that matter here)
CSV = """# pxname,svname,status,weight,uweight,
www,FRONTEND,OPEN,,,
chat,blue,UP,90,90,
chat,green,DOWN,0,10,
chat,BACKEND,UP,90,100,
green,green,UP,1,1,
"""


def test_csv_gives_each_servers_user_weight() -> None:
    # green is DOWN: its effective weight is 0, the weight set (uweight) is still 10
    assert parse_haproxy_csv(CSV, "chat", ("blue", "green")) == {"blue": 90, "green": 10}


def test_csv_without_uweight_uses_weight() -> None:
    old = "# pxname,svname,weight,\nchat,blue,80,\nchat,green,20,\n"
    assert parse_haproxy_csv(old, "chat", ("blue", "green")) == {"blue": 80, "green": 20}


@pytest.mark.parametrize("text", ["<html>login</html>", "# pxname,svname,uweight,\nchat,blue,1,\n"])
def test_csv_without_both_servers_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_haproxy_csv(text, "chat", ("blue", "green"))


ARNS = {"blue": "arn:tg/blue", "green": "arn:tg/green"}


def test_the_rule_listing_both_groups_wins_over_others_and_the_default() -> None:
    both = {"RuleArn": "r2", "Priority": "20", "Actions": [{"Type": "forward", "ForwardConfig": {
        "TargetGroups": [{"TargetGroupArn": "arn:tg/blue", "Weight": 70},
                         {"TargetGroupArn": "arn:tg/green", "Weight": 30}]}}]}
    one = {"RuleArn": "r1", "Priority": "5", "Actions": [{"Type": "forward", "ForwardConfig": {
        "TargetGroups": [{"TargetGroupArn": "arn:tg/green", "Weight": 1}]}}]}
    default = {"RuleArn": "d", "Priority": "default", "IsDefault": True,
               "Actions": both["Actions"]}
    rule = weighted_rule([default, one, both], ARNS)
    assert rule is both
    assert forward_weights(rule["Actions"], ARNS) == {"blue": 70, "green": 30}


def test_a_plain_forward_is_all_for_its_group() -> None:
    actions = [{"Type": "forward", "TargetGroupArn": "arn:tg/green"}]
    assert forward_weights(actions, ARNS) == {"blue": 0, "green": 100}
    assert forward_weights([{"Type": "fixed-response"}], ARNS) == {"blue": 0, "green": 0}


def test_config_reads_and_checks_the_weights_source() -> None:
    c = Config.from_env({"CHAT_WEIGHTS_HAPROXY_URL": "http://127.0.0.1:8079/_haproxy/stats;csv"})
    assert (c.weights_haproxy_url, c.weights_haproxy_backend, c.weights_poll) == (
        "http://127.0.0.1:8079/_haproxy/stats;csv", "chat", 2.0)
    assert Config.from_env({}).weights_haproxy_url is None
    with pytest.raises(ValueError, match="CHAT_WEIGHTS_BLUE_TARGET_GROUP_ARN"):
        Config.from_env({"CHAT_WEIGHTS_LISTENER_ARN": "arn:l"})
    with pytest.raises(ValueError, match="not both"):
        Config.from_env({"CHAT_WEIGHTS_LISTENER_ARN": "arn:l", "CHAT_WEIGHTS_HAPROXY_URL": "x",
                         "CHAT_WEIGHTS_BLUE_TARGET_GROUP_ARN": "b",
                         "CHAT_WEIGHTS_GREEN_TARGET_GROUP_ARN": "g"})
    with pytest.raises(ValueError, match="CHAT_WEIGHTS_POLL_SECONDS"):
        Config.from_env({"CHAT_WEIGHTS_POLL_SECONDS": "0"})


class FlakySource:
    name = "haproxy"

    def __init__(self) -> None:
        self.answers: list[dict[str, int] | Exception] = []

    async def start(self) -> None:
        pass

    async def read(self) -> dict[str, int]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        pass


def test_poller_keeps_the_last_value_on_failure_and_clears_the_error_after() -> None:
    source = FlakySource()
    source.answers = [{"blue": 90, "green": 10}, ConnectionRefusedError("refused"),
                      {"blue": 50, "green": 50}]
    poller = WeightsPoller(source, 1.0)
    assert poller.value is None  # nothing read yet: /api/stats falls back to the events

    async def run() -> list[dict[str, object] | None]:
        seen = []
        for _ in range(3):
            await poller.poll_once()
            seen.append(poller.value)
        return seen

    first, failed, recovered = asyncio.run(run())
    assert first is not None and failed is not None and recovered is not None
    assert (first["blue"], first["green"], first["source"]) == (90, 10, "haproxy")
    assert (failed["blue"], failed["green"], failed["ts"]) == (90, 10, first["ts"])
    assert "refused" in str(failed["error"])
    assert (recovered["blue"], recovered["green"]) == (50, 50) and "error" not in recovered
