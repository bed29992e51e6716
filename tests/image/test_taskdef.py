"""The same image on both colors: the ECS container definitions of blue and green, as the
compute role renders them (roles/compute/tasks/aws.yml's `community.aws.ecs_taskdefinition`
task and templates/aws_environment.yml.j2, templated by Ansible with the role's defaults), agree
with the image the image test runs (`buildah inspect`): port, stop timeout against the drain,
health check, and the environment variables the image's program reads.

The role's registered facts (IAM role ARNs, the Redis endpoint, the account) are stand-ins:
nothing compared here depends on them. Each rendered definition is registered on the DynamoDB
emulator's ECS (moto) and the comparisons read what DescribeTaskDefinition returns.
"""

from __future__ import annotations

import re
from typing import Any

import boto3
import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from tests.conftest import REPO, Service
from tests.image.conftest import Built, image_env, needs_buildah

pytestmark = [pytest.mark.image, needs_buildah]

ROLE = REPO / "roles" / "compute"
# Differences between blue's and green's container definitions that are on purpose.
PER_COLOR_ENV = {"CHAT_COLOR", "CHAT_VERSION", "CHAT_FAULT_RATE", "CHAT_TARGET_GROUP_ARNS"}


def trust(obj: Any) -> Any:
    if isinstance(obj, str):
        return trust_as_template(obj)
    if isinstance(obj, dict):
        return {k: trust(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [trust(v) for v in obj]
    return obj


def taskdef_task(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    for task in tasks:
        if "community.aws.ecs_taskdefinition" in task:
            return dict(task["community.aws.ecs_taskdefinition"])
        for key in ("block", "rescue", "always"):
            found = taskdef_task(task.get(key) or []) if task.get(key) else None
            if found:
                return found
    return {}


def role_defaults() -> dict[str, Any]:
    """The compute role's defaults over those of the roles it depends on, as Ansible sees them
    (its meta dependencies, e.g. canarychat.platform.aws for aws_name_prefix)."""
    meta = yaml.safe_load((ROLE / "meta" / "main.yml").read_text()) or {}
    out: dict[str, Any] = {}
    for dep in meta.get("dependencies") or []:
        name = (dep["role"] if isinstance(dep, dict) else dep).rsplit(".", 1)[-1]
        out |= yaml.safe_load((REPO / "roles" / name / "defaults" / "main.yml").read_text())
    return out | yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def render_container(color: str) -> dict[str, Any]:
    tasks = yaml.safe_load((ROLE / "tasks" / "aws.yml").read_text())
    task = taskdef_task(tasks)
    assert task, "no community.aws.ecs_taskdefinition task in roles/compute/tasks/aws.yml"
    (container,) = task["containers"]
    variables = trust(role_defaults()) | {
        "item": color, "aws_region": "ap-northeast-2",
        "__compute_images": {"blue": "repo:v1", "green": "repo:v2"},
        "__compute_redis": {"primary_endpoint": "redis.example", "primary_port": 6379},
        "__compute_caller": {"account": "123456789012"},
        "__compute_target_groups": [
            {"target_group_name": f"canary-chat-{c}",
             "target_group_arn": f"arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:"
                                 f"targetgroup/canary-chat-{c}/{i}"}
            for i, c in enumerate(("blue", "green"))],
        "__compute_roles": {"results": [{"iam_roles": [{"arn": "arn:aws:iam::1:role/e"}]},
                                        {"iam_roles": [{"arn": "arn:aws:iam::1:role/t"}]}]},
    }
    templar = Templar(loader=DataLoader(), variables=variables)
    env = container.get("environment")
    if isinstance(env, str):
        # `lookup('ansible.builtin.template', '<file>') | from_yaml`: the role's template
        m = re.search(r"lookup\(\s*'(?:ansible\.builtin\.)?template'\s*,\s*'([^']+)'", env)
        assert m, f"environment is an expression this test does not know: {env}"
        text = (ROLE / "templates" / m.group(1)).read_text()
        container["environment"] = yaml.safe_load(templar.template(trust_as_template(text)))
    rendered = templar.template(trust({k: v for k, v in container.items()
                                       if k != "environment"}))
    rendered["environment"] = templar.template(trust(container["environment"]))
    return dict(rendered)


@pytest.fixture(scope="module")
def containers(moto_server: Service) -> dict[str, dict[str, Any]]:
    """Each color's rendered container definition, registered on the emulator's ECS (which
    validates it against the API's shapes) and read back as ECS describes it."""
    ecs = boto3.client("ecs", endpoint_url=moto_server.url, region_name="ap-northeast-2")
    out = {}
    for color in ("blue", "green"):
        family = f"image-test-chat-{color}"
        ecs.register_task_definition(
            family=family, requiresCompatibilities=["FARGATE"], networkMode="awsvpc",
            cpu="256", memory="512", containerDefinitions=[render_container(color)])
        described = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
        (out[color],) = described["containerDefinitions"]
    return out


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("environment") or []}


def names_the_chat_reads() -> set[str]:
    text = "\n".join(p.read_text() for p in sorted((REPO / "chat").glob("*.py")))
    return set(re.findall(r'"((?:CHAT|AWS|REDIS)_[A-Z0-9_]+)"', text))


def test_blue_and_green_differ_only_in_color_version_fault_rate_and_target_group(containers):
    blue, green = containers["blue"], containers["green"]
    assert {k: v for k, v in env_of(blue).items() if k not in PER_COLOR_ENV} == \
        {k: v for k, v in env_of(green).items() if k not in PER_COLOR_ENV}
    assert set(env_of(blue)) == set(env_of(green))
    for key in set(blue) | set(green):
        if key in ("environment", "image", "logConfiguration"):
            continue
        assert blue.get(key) == green.get(key), key
    # both colors run the one repository's image, tagged with their version
    assert blue["image"].rsplit(":", 1)[0] == green["image"].rsplit(":", 1)[0]


def test_port_matches_the_image(image: Built, containers):
    exposed = {int(p.split("/")[0]) for p in image.config.get("ExposedPorts") or {}}
    for c in containers.values():
        ports = {m["containerPort"] for m in c["portMappings"]}
        assert ports == exposed, (ports, exposed)
        assert int(env_of(c)["CHAT_PORT"]) in exposed
        assert env_of(c)["CHAT_HOST"] == "0.0.0.0"
    # the image's command takes host and port from that environment: an option on it would
    # win over the task definition (chat/config.py: command-line options over CHAT_*)
    assert not {"--port", "--host", "--drain-seconds"} & set(image.config["Cmd"])


def test_stop_timeout_covers_the_drain(image: Built, containers):
    assert image.config["StopSignal"] == "SIGTERM"  # what ECS sends first
    for c in containers.values():
        drain = float(env_of(c).get("CHAT_DRAIN_SECONDS",
                                    image_env(image.config)["CHAT_DRAIN_SECONDS"]))
        # ECS sends SIGKILL stopTimeout seconds after SIGTERM (Fargate: at most 120)
        assert drain < int(c["stopTimeout"]) <= 120, (drain, c["stopTimeout"])


def test_health_check_agrees(image: Built, containers):
    # ECS ignores an image's HEALTHCHECK; a container definition's healthCheck, when there is
    # one, must probe what the image's does (/healthz on the port). None: the ALB's /readyz
    # target check decides alone.
    image_check = image.config["Healthcheck"]["Test"]
    for c in containers.values():
        check = c.get("healthCheck")
        if check is not None:
            assert check["command"] == image_check, (check["command"], image_check)


def test_every_variable_set_is_one_the_image_reads(containers):
    read = names_the_chat_reads()
    for c in containers.values():
        names = set(env_of(c)) | {s["name"] for s in c.get("secrets") or []}
        names.discard("PYTHONUNBUFFERED")  # read by the image's Python itself
        assert names - read == set(), f"set but never read by chat/: {names - read}"

