"""The collection as a user gets it from Galaxy: `ansible-galaxy collection build` -> what the
tarball holds and must not hold -> `ansible-galaxy collection install --offline -p` into an
empty collections path -> the collection's playbooks by their fully-qualified names, run
from a directory outside the checkout with no ansible.cfg of ours.

The real run: a full `canarychat.platform.site` on the AWS inventory against the emulator
takes about 200 s on this 2-core machine (measured; test_aws_site.py runs it from the
checkout), so this test provisions what the weights' status reads itself (boto3 on the
emulator: the ALB, its listener at blue 70 / green 30, the two target groups, the admin
token parameter) and runs the installed `canarychat.platform.status` against it, which
reads the weights through the installed traffic_shift module; every entry playbook gets a
`--syntax-check` by its FQCN, and `ansible-doc` documents traffic_shift from the installed
path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml

from tests.conftest import REPO, VENV_BIN, Service, start_moto

pytestmark = [pytest.mark.aws, pytest.mark.integration, pytest.mark.timeout(300)]

NAME = "canary-chat"
REGION = "ap-northeast-2"
ENTRY_PLAYBOOKS = ["site", "canary", "rollback", "teardown"]
# sha256 of the Apache License 2.0 as apache.org publishes it (LICENSE-2.0.txt)
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"

MUST_HOLD = [
    "MANIFEST.json", "FILES.json", "README.md", "LICENSE", "CHANGELOG.rst",
    "changelogs/changelog.yaml", "changelogs/config.yaml", "meta/runtime.yml",
    "requirements.txt", "requirements.yml",
    *[f"{p}.yml" for p in ENTRY_PLAYBOOKS], *[f"playbooks/{p}.yml" for p in ENTRY_PLAYBOOKS],
    "playbooks/status.yml", "playbooks/base.yml",
    "plugins/modules/traffic_shift.py", "plugins/module_utils/traffic_shift/elbv2.py",
    "plugins/module_utils/traffic_shift/haproxy.py", "plugins/module_utils/haproxy_runtime.py",
    "roles/deploy/tasks/main.yml", "roles/deploy/meta/argument_specs.yml",
    "roles/data/files/dynamodb_emulator.py",
    "inventories/aws/hosts.yml", "inventories/local/hosts.yml",
    "chat/app.py", "chat/Dockerfile", "site/index.html", "site/board.html",
    "docs/architecture.md", "docs/aws.md",
]
# Development tooling: none of it, nothing below it.
MUST_NOT_HOLD = ["bench", "scripts", "tests", ".ci", ".github", "collections",
                 "extensions", ".venv", ".git", ".pytest_cache", ".mypy_cache",
                 ".ruff_cache", ".hypothesis", "Makefile", "requirements-dev.txt",
                 "pyproject.toml", "ansible.cfg", ".gitignore", ".ansible-lint",
                 "changelogs/.plugin-cache.yaml"]


def _env(collections: Path, home: Path) -> dict[str, str]:
    """A user's environment: our collections path only, no ansible.cfg of the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    cfg = home / "ansible.cfg"
    cfg.write_text("[defaults]\n")  # an empty one, so no /etc/ansible or ~ config applies
    env.update(ANSIBLE_CONFIG=str(cfg), ANSIBLE_COLLECTIONS_PATH=str(collections),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", HOME=str(home),
               ANSIBLE_LOCAL_TEMP=str(home / "tmp"), ANSIBLE_HOME=str(home / ".ansible"),
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 180
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    home = tmp_path_factory.mktemp("home-build")
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    p = _run([str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--output-path",
              str(out), str(REPO)], cwd=out, env=_env(out / "none", home))
    assert p.returncode == 0, p.stdout + p.stderr
    path = out / f"canarychat-platform-{version}.tar.gz"
    assert path.is_file(), p.stdout
    return path


@pytest.fixture(scope="module")
def installed(tarball: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """(collections path, the run directory outside the checkout, its environment)."""
    collections = tmp_path_factory.mktemp("collections")
    assert not any(collections.iterdir())
    run_dir = tmp_path_factory.mktemp("user")
    env = _env(collections, run_dir)
    p = _run([str(VENV_BIN / "ansible-galaxy"), "collection", "install", "--offline",
              "-p", str(collections), str(tarball)], cwd=run_dir, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not run_dir.resolve().is_relative_to(REPO)
    yield collections, run_dir, env


def test_the_tarball_holds_the_collection_and_no_tooling(tarball: Path) -> None:
    with tarfile.open(tarball) as tar:
        names = {m.name.rstrip("/") for m in tar.getmembers()}
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
        license_text = tar.extractfile("LICENSE").read()  # type: ignore[union-attr]
        changelog = tar.extractfile("CHANGELOG.rst").read().decode()  # type: ignore[union-attr]
    missing = [n for n in MUST_HOLD if n not in names]
    assert not missing, missing
    for bad in MUST_NOT_HOLD:
        leaked = sorted(n for n in names if n == bad or n.startswith(bad + "/"))
        assert not leaked, leaked
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".tar.gz"))]
    assert not [n for n in names if "node_modules" in n or n.endswith("package-lock.json")]
    # every directory and file of the roles, plugins, chat and site shipped, as in git
    tracked = subprocess.run(["git", "ls-files", "roles", "plugins", "chat", "site", "docs",
                              "playbooks", "inventories"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked and not [f for f in tracked if f not in names]

    info = manifest["collection_info"]
    assert info["license"] == ["Apache-2.0"]
    for key in ("repository", "documentation", "issues", "homepage"):
        assert not info.get(key), f"{key}: {info.get(key)} (no public address to name)"
    assert "example" not in json.dumps(info)
    assert hashlib.sha256(license_text).hexdigest() == APACHE_2_SHA256
    assert f"v{info['version']}\n" in changelog and "Release Notes" in changelog


def test_requires_ansible_is_what_the_tests_prove(tarball: Path) -> None:
    from ansible.release import __version__
    with tarfile.open(tarball) as tar:
        runtime = yaml.safe_load(tar.extractfile("meta/runtime.yml"))  # type: ignore[arg-type]
    assert runtime["requires_ansible"] == ">=2.19.0"
    assert __version__.startswith("2.19.")  # the only ansible-core tested


@pytest.mark.parametrize("playbook", [*ENTRY_PLAYBOOKS, "status"])
def test_installed_playbooks_by_fqcn_pass_syntax_check(
        installed: tuple[Path, Path, dict[str, str]], playbook: str) -> None:
    collections, run_dir, env = installed
    inv = collections / "ansible_collections/canarychat/platform/inventories/aws"
    p = _run([str(VENV_BIN / "ansible-playbook"), "-i", str(inv), "--syntax-check",
              f"canarychat.platform.{playbook}"], cwd=run_dir, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    where = collections / "ansible_collections/canarychat/platform/playbooks"
    assert f"playbook: {where / playbook}.yml" in p.stdout  # the installed copy


def test_ansible_doc_reads_traffic_shift_from_the_installed_path(
        installed: tuple[Path, Path, dict[str, str]]) -> None:
    collections, run_dir, env = installed
    p = _run([str(VENV_BIN / "ansible-doc"), "canarychat.platform.traffic_shift"],
             cwd=run_dir, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    where = collections / "ansible_collections/canarychat/platform/plugins/modules"
    assert str(where / "traffic_shift.py") in p.stdout
    assert "blue_target_group_name" in p.stdout


@pytest.fixture(scope="module")
def emulator() -> Iterator[Service]:
    svc = start_moto()
    try:
        yield svc
    finally:
        svc.stop()


def _seed_alb(url: str, blue: int, green: int) -> None:
    """What site.yml's load balancer tier leaves for the weights' status to read."""
    kw = {"endpoint_url": url, "region_name": REGION, "aws_access_key_id": "testing",
          "aws_secret_access_key": "testing"}
    ec2, elbv2, ssm = (boto3.client(s, **kw) for s in ("ec2", "elbv2", "ssm"))  # type: ignore[call-overload]
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24",
                                 AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
               for i, az in enumerate("ac")]
    lb = elbv2.create_load_balancer(Name=NAME, Subnets=subnets, Type="application",
                                    Scheme="internet-facing")["LoadBalancers"][0]
    tgs = {color: elbv2.create_target_group(
        Name=f"{NAME}-{color}", Protocol="HTTP", Port=8000, VpcId=vpc, TargetType="ip",
        HealthCheckPath="/readyz")["TargetGroups"][0]["TargetGroupArn"]
        for color in ("blue", "green")}
    elbv2.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
        DefaultActions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": tgs["blue"], "Weight": blue},
            {"TargetGroupArn": tgs["green"], "Weight": green}]}}])
    ssm.put_parameter(Name=f"/{NAME}/admin-token", Value="t" * 32, Type="SecureString")


def test_installed_status_playbook_reads_the_weights_from_the_alb(
        installed: tuple[Path, Path, dict[str, str]], emulator: Service) -> None:
    collections, run_dir, env = installed
    _seed_alb(emulator.url, 70, 30)
    inv = collections / "ansible_collections/canarychat/platform/inventories/aws"
    p = _run([str(VENV_BIN / "ansible-playbook"), "-i", str(inv), "canarychat.platform.status",
              "-e", f"aws_endpoint_url={emulator.url}"], cwd=run_dir, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert "weights: blue 70 / green 30" in out
    # the tasks ran from the installed copy, not from the checkout
    assert "TASK [canarychat.platform.deploy :" in out
    assert str(REPO / "roles") not in out and str(REPO / "playbooks") not in out
    assert re.search(r"\bchanged=0\b", out.split("PLAY RECAP")[-1])
