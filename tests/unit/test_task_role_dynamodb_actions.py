"""The ECS task role allows every DynamoDB operation the chat calls.

IAM is not enforced by the emulator (docs/aws.md): a call the role does not allow passes
every test here and fails with AccessDeniedException on AWS. So the operations are read
from the chat's code and compared with `security_dynamodb_actions`
(roles/security/defaults/main.yml, rendered into the task policy). `chat/tables.py` is left
out: `python -m chat init-tables` creates the local stack's tables; on AWS the data role
creates them and the task never does.
"""

from __future__ import annotations

import re
from pathlib import Path

import botocore.session
import yaml
from botocore import xform_name

REPO = Path(__file__).resolve().parents[2]
NOT_THE_TASKS = {"tables.py"}
# IAM has no action for a transaction itself: each action inside it needs the permission of
# the operation it stands for (Put: dynamodb:PutItem, ConditionCheck:
# dynamodb:ConditionCheckItem, ...), docs/aws.md. The store's TransactWriteItems holds Puts.
TRANSACTION_ACTIONS = {"TransactWriteItems": {"PutItem"}}


def operations_called_by_the_chat() -> set[str]:
    names = botocore.session.get_session().get_service_model("dynamodb").operation_names
    found: set[str] = set()
    for path in sorted((REPO / "chat").rglob("*.py")):
        if path.name in NOT_THE_TASKS:
            continue
        text = path.read_text()
        for op in names:
            snake = xform_name(op)
            # aioboto3 / our store's `_call("get_item", ...)`, and chat/ddb.py's
            # `self.call("GetItem", ...)`
            if (re.search(rf"\.{snake}\(|\"{snake}\"", text)
                    or re.search(rf"\"{op}\"", text)):
                found.add(op)
    return found


def test_the_task_role_allows_every_dynamodb_operation_the_chat_calls() -> None:
    defaults = yaml.safe_load((REPO / "roles/security/defaults/main.yml").read_text())
    allowed = {a.removeprefix("dynamodb:") for a in defaults["security_dynamodb_actions"]}
    called = operations_called_by_the_chat()
    assert {"GetItem", "PutItem", "Query", "BatchWriteItem"} <= called  # the scan works
    for op, needs in TRANSACTION_ACTIONS.items():
        if op in called:
            called = (called - {op}) | needs
    assert called - allowed == set()


def test_the_store_s_transactions_hold_only_the_actions_mapped_above() -> None:
    store = (REPO / "chat" / "store.py").read_text()
    assert "transact_write_items(" in store
    # the actions the store puts into TransactItems: {"Put": ...}, {"Update": ...}, ...
    actions = set(re.findall(r"\{\"(Put|Update|Delete|ConditionCheck)\": ", store))
    assert actions == {"Put"}, "map the new transaction actions in TRANSACTION_ACTIONS"
