"""playbooks/ci_role.yml against the AWS emulator: GitHub's OIDC provider and a role only the
repository's tag workflows can assume, with its policies written out and scoped (issue 14).

The emulator does not evaluate IAM conditions or policies (moto accepts any call from any
credentials by default), so what is checked is the documents themselves."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import boto3
import pytest

from tests.conftest import REPO, VENV_BIN, Service

pytestmark = [pytest.mark.aws, pytest.mark.integration, pytest.mark.timeout(300)]

REPOSITORY = "acme/canary-chat"
ROLE = "canary-chat-github-ci"
ISSUER = "token.actions.githubusercontent.com"
# IAM: the inline policies of one role together, whitespace not counted
INLINE_POLICY_LIMIT = 10240


def playbook(url: str, *extra: str) -> tuple[int, str, int]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "inventories/aws", "playbooks/ci_role.yml",
         "-e", f"aws_endpoint_url={url}", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False,
        # not the session's stdin: an asyncio test before may leave it non-blocking, which
        # ansible-playbook refuses
        stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    changed = sum(int(n) for n in re.findall(r"\bchanged=(\d+)", out.split("PLAY RECAP")[-1]))
    return proc.returncode, out, changed


@pytest.fixture(scope="module")
def iam(moto_server: Service) -> Any:
    rc, out, _ = playbook(moto_server.url, "-e", f"github_repository={REPOSITORY}")
    assert rc == 0, out[-4000:]
    return boto3.client("iam", endpoint_url=moto_server.url, region_name="ap-northeast-2")


def test_without_a_repository_it_refuses(moto_server: Service):
    rc, out, _ = playbook(moto_server.url)
    assert rc != 0 and "github_repository" in out


def test_provider_trusts_github_for_sts(iam):
    arns = [p["Arn"] for p in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]
            if p["Arn"].endswith(f":oidc-provider/{ISSUER}")]
    assert len(arns) == 1
    assert iam.get_open_id_connect_provider(
        OpenIDConnectProviderArn=arns[0])["ClientIDList"] == ["sts.amazonaws.com"]


def test_only_the_repositorys_tags_may_assume_the_role(iam):
    doc = iam.get_role(RoleName=ROLE)["Role"]["AssumeRolePolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    (stmt,) = doc["Statement"]
    assert stmt["Effect"] == "Allow" and stmt["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert stmt["Principal"] == {
        "Federated": f"arn:aws:iam::123456789012:oidc-provider/{ISSUER}"}
    assert stmt["Condition"]["StringEquals"] == {f"{ISSUER}:aud": "sts.amazonaws.com"}
    assert stmt["Condition"]["StringLike"] == {
        f"{ISSUER}:sub": [f"repo:{REPOSITORY}:ref:refs/tags/v*"]}
    assert iam.get_role(RoleName=ROLE)["Role"]["MaxSessionDuration"] == 3600
    assert iam.list_attached_role_policies(RoleName=ROLE)["AttachedPolicies"] == []


def policies(iam: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for name in iam.list_role_policies(RoleName=ROLE)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=ROLE, PolicyName=name)["PolicyDocument"]
        out[name] = json.loads(doc) if isinstance(doc, str) else doc
    return out


def test_policies_are_written_out_and_scoped(iam):
    docs = policies(iam)
    assert set(docs) == {"deploy", "provision"}
    size = sum(len(re.sub(r"\s", "", json.dumps(d))) for d in docs.values())
    assert size < INLINE_POLICY_LIMIT, size
    for doc in docs.values():
        for stmt in doc["Statement"]:
            actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            assert "*" not in actions and not any(a.startswith("iam:*") for a in actions)
            assert stmt["Effect"] == "Allow"
    deploy = {s["Sid"]: s for s in docs["deploy"]["Statement"]}
    # weights move on our load balancer's listener only; the image goes to our repository only
    assert all("/app/canary-chat/" in r for r in deploy["ShiftWeightsOnOurListener"]["Resource"])
    assert deploy["EcrPushOurRepository"]["Resource"].endswith(":repository/canary-chat-chat")
    passrole = next(s for s in docs["provision"]["Statement"]
                    if s["Sid"] == "PassOurRolesToEcsOnly")
    assert passrole["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}


def test_second_and_check_runs_change_nothing_and_provision_can_be_left_out(
        moto_server: Service, iam):
    rc, out, changed = playbook(moto_server.url, "-e", f"github_repository={REPOSITORY}")
    assert rc == 0 and changed == 0, out[-4000:]
    rc, out, changed = playbook(moto_server.url, "-e", f"github_repository={REPOSITORY}",
                                "--check", "--diff")
    assert rc == 0 and changed == 0, out[-4000:]
    rc, out, _ = playbook(moto_server.url, "-e", f"github_repository={REPOSITORY}",
                          "-e", "ci_role_provision=false")
    assert rc == 0, out[-4000:]
    assert set(policies(iam)) == {"deploy"}


def module(endpoint: str, check: bool = False, **args: Any) -> dict[str, Any]:
    """One call of canarychat.platform.iam_openid_connect_provider on the emulator."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    args |= {"endpoint_url": endpoint, "region": "ap-northeast-2"}
    proc = subprocess.run(
        [str(VENV_BIN / "ansible"), "localhost", "-c", "local", "-i", "localhost,",
         "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}",
         "-m", "canarychat.platform.iam_openid_connect_provider", "-a", json.dumps(args),
         *(["--check", "--diff"] if check else [])],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
        stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return dict(result)


def test_provider_module_check_mode_update_and_delete(moto_server: Service):
    url = "https://issuer.example/oidc"
    iam = boto3.client("iam", endpoint_url=moto_server.url, region_name="ap-northeast-2")

    def arns() -> list[str]:
        return [p["Arn"] for p in iam.list_open_id_connect_providers()[
            "OpenIDConnectProviderList"] if p["Arn"].endswith(":oidc-provider/issuer.example/oidc")]

    thumb = ["a" * 40]
    assert module(moto_server.url, check=True, url=url, thumbprints=thumb)["changed"] is True
    assert arns() == []  # check mode created nothing
    made = module(moto_server.url, url=url, thumbprints=thumb)
    assert made["changed"] is True and arns() == [made["arn"]]
    assert module(moto_server.url, url=url)["changed"] is False  # thumbprints kept
    # (changing the audiences is not tried: moto 5.2 does not implement
    # AddClientIDToOpenIDConnectProvider / RemoveClientIDFromOpenIDConnectProvider)
    moved = module(moto_server.url, url=url, thumbprints=["b" * 40])
    assert moved["changed"] is True
    assert iam.get_open_id_connect_provider(OpenIDConnectProviderArn=made["arn"])[
        "ThumbprintList"] == ["b" * 40]
    assert module(moto_server.url, url=url, state="absent")["changed"] is True
    assert arns() == []
    assert module(moto_server.url, url=url, state="absent")["changed"] is False
