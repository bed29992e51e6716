"""The GitHub workflows (.github/workflows) against what the repository says elsewhere:

- ci.yml runs on pull requests every check `make test` runs (scripts/test.sh: lint, every
  test directory, both molecule scenarios);
- release.yml's deploy job runs the playbooks with the inventory and -e variables that
  README.md and docs/aws.md tell a person to run, the canary steps in the runbook's order,
  and authenticates only through OIDC (no access keys anywhere).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def workflow(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True
    if True in doc:
        doc["on"] = doc.pop(True)
    return dict(doc)


def runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


Command = tuple[str, str, dict[str, str]]  # (inventory, playbook, -e variables)


def parse_playbook_command(text: str) -> Command:
    words = shlex.split(text)
    assert Path(words[0]).name == "ansible-playbook", text
    inventory, playbook, extra = "inventories/local", "", {}
    it = iter(words[1:])
    for w in it:
        if w == "-i":
            inventory = next(it)
        elif w == "-e":
            k, _, v = next(it).partition("=")
            extra[k] = v
        elif w.endswith(".yml"):
            playbook = w
    return inventory, playbook, extra


def documented_commands() -> list[Command]:
    """Every `ansible-playbook ...` command in README.md and docs/, in order."""
    found = []
    for path in DOCS:
        for m in re.finditer(r"(?:`|^\s*)((?:\.venv/bin/)?ansible-playbook [^`\n#]+)",
                             path.read_text(), re.M):
            found.append(parse_playbook_command(m.group(1).strip()))
    return found


def documented_variables() -> set[str]:
    """Every `-e name=...` the docs mention, in a command or on its own."""
    names = set()
    for path in DOCS:
        names |= set(re.findall(r"-e ([a-z_]+)=", path.read_text()))
    return names


@pytest.fixture(scope="module")
def deploy() -> list[Command]:
    return [parse_playbook_command(line.strip().replace('"$CHAT_IMAGE"', "IMAGE"))
            for r in runs(workflow("release.yml")["jobs"]["deploy"])
            for line in r.splitlines() if "ansible-playbook" in line]


def test_pull_requests_run_every_check_of_make_test():
    ci = workflow("ci.yml")
    assert "pull_request" in ci["on"]
    lint = runs(ci["jobs"]["lint"])
    assert "bash scripts/test.sh lint" in lint
    suites = [m["args"] for m in ci["jobs"]["pytest"]["strategy"]["matrix"]["include"]]
    covered: dict[str, list[str]] = {}
    for args in suites:
        words = shlex.split(args)
        covered.setdefault(words[0], []).append(" ".join(words[1:]))
    with_tests = {f"tests/{d.name}" for d in (REPO / "tests").iterdir()
                  if d.is_dir() and any(d.glob("test_*.py"))}
    assert set(covered) == with_tests
    # a directory split by marker is split into complementary halves
    for path, selections in covered.items():
        if len(selections) > 1:
            (marker,) = {re.sub(r"^-m (not )?", "", s) for s in selections}
            assert sorted(selections) == [f"-m {marker}", f"-m not {marker}"], path
    # every scenario that runs a step; default/ is molecule's stub and runs none
    scenarios = {d.name for d in (REPO / "extensions" / "molecule").iterdir() if d.is_dir()
                 and yaml.safe_load((d / "molecule.yml").read_text())["scenario"]["test_sequence"]}
    assert scenarios >= {"local", "aws"}
    assert set(ci["jobs"]["molecule"]["strategy"]["matrix"]["scenario"]) == scenarios


def test_lint_runs_actionlint():
    text = (REPO / "scripts" / "test.sh").read_text()
    lint = text[text.index("lint() {"):text.index("}", text.index("lint() {"))]
    assert "actionlint" in lint


def test_release_runs_on_tags_with_oidc_only():
    rel = workflow("release.yml")
    assert rel["on"] == {"push": {"tags": ["v*"]}}
    assert rel["permissions"]["id-token"] == "write"
    text = "\n".join(p.read_text() for p in WORKFLOWS.glob("*.yml"))
    assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    for name in ("image", "deploy"):
        creds = [s for s in rel["jobs"][name]["steps"]
                 if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]
        assert len(creds) == 1
        assert creds[0]["with"]["role-to-assume"] == "${{ vars.AWS_CI_ROLE_ARN }}"


def test_deploy_runs_what_the_docs_tell_a_person(deploy: list[Command]):
    docs = documented_commands()
    variables = documented_variables()
    playbooks = [p for _, p, _ in deploy]
    assert playbooks == ["site.yml", "canary.yml", "canary.yml", "canary.yml", "rollback.yml"]
    for inventory, playbook, extra in deploy:
        assert inventory == "inventories/aws"
        same = [c for c in docs if c[:2] == (inventory, playbook)]
        assert same, f"docs never run {playbook} on {inventory}"
        # every variable is one the docs give a person for this purpose
        assert set(extra) <= variables, set(extra) - variables
        if playbook != "site.yml":  # site.yml's image differs per release
            assert (inventory, playbook, extra) in docs, (playbook, extra)
    # the canary steps are the runbook's, in its order
    doc_steps = [c[2] for c in docs if c[:2] == ("inventories/aws", "canary.yml")]
    steps = [e for _, p, e in deploy if p == "canary.yml"]
    assert steps == [s for s in doc_steps if s in steps]
    # the release goes to green only; blue keeps its image for the canary to compare with
    assert deploy[0][2] == {"chat_green_image": "IMAGE",
                            "compute_green_version": "$GITHUB_REF_NAME"}


def test_rollback_runs_only_when_a_canary_step_failed():
    steps = workflow("release.yml")["jobs"]["deploy"]["steps"]
    ids = [s["id"] for s in steps if "canary.yml" in s.get("run", "")]
    rollback = next(s for s in steps if "rollback.yml" in s.get("run", ""))
    assert rollback["if"].startswith("failure()")
    assert all(f"steps.{i}.outcome == 'failure'" in rollback["if"] for i in ids)
    assert steps.index(rollback) == len(steps) - 1
