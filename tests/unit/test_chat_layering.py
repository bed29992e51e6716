"""The layering of chat/, checked on its source with `ast`:

- no module reaches into another's private attributes: `x._name` only on `self`/`cls`,
  or where `_name` is defined in the same module (a class of that module), never on a
  name imported from another chat module or an object of another module's class;
- only the WebSocket seam (chat/ws/) touches Sanic's connection internals (`io_proto`,
  `_can_write`);
- the store never imports the wire protocol, and DynamoDB's attribute-value format
  (`["N"]`, `["S"]`, ...) stays in chat/ddb.py and chat/store.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CHAT = Path(__file__).resolve().parents[2] / "chat"
MODULES = sorted(p for p in CHAT.rglob("*.py") if "__pycache__" not in p.parts)
SEAM = CHAT / "ws"
# Sanic's write gate: the seam exists to hold this one private attribute of Sanic's
SEAM_PRIVATE = {"_can_write"}
DDB_FORMAT_OWNERS = {CHAT / "ddb.py", CHAT / "store.py"}
DDB_TYPES = {"N", "S", "B", "BOOL", "NULL", "M", "L", "SS", "NS", "BS"}


def rel(path: Path) -> str:
    return str(path.relative_to(CHAT.parent))


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def defined_privates(module: ast.Module) -> set[str]:
    """Private names this module defines: functions, classes, attributes it assigns."""
    names: set[str] = set()
    for node in ast.walk(module):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {n for n in names if n.startswith("_")}


def private_accesses(module: ast.Module, name: str, in_seam: bool = False) -> list[str]:
    own = defined_privates(module)
    chat_names = imported(module)
    bad = []
    for node in ast.walk(module):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or (attr.startswith("__") and attr.endswith("__")):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        if in_seam and attr in SEAM_PRIVATE:
            continue
        if attr in own and not (isinstance(base, ast.Name) and base.id in chat_names):
            continue  # an object of this module's own classes
        bad.append(f"{name}:{node.lineno}: .{attr} on {ast.unparse(base)}")
    return bad


def imported(module: ast.Module) -> set[str]:
    """Names bound by imports of other chat modules."""
    names: set[str] = set()
    for node in ast.walk(module):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "")
                                                 .startswith("chat")):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names
                         if a.name.startswith("chat"))
    return names


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_no_module_reaches_into_another_modules_private_attributes(path: Path) -> None:
    assert private_accesses(tree(path), rel(path), path.is_relative_to(SEAM)) == []


def sanic_internals(module: ast.Module, name: str) -> list[str]:
    return [f"{name}:{n.lineno}: .{n.attr}" for n in ast.walk(module)
            if isinstance(n, ast.Attribute) and n.attr in ("io_proto", "_can_write")]


@pytest.mark.parametrize("path", [p for p in MODULES if not p.is_relative_to(SEAM)], ids=rel)
def test_only_the_websocket_seam_touches_sanics_connection_internals(path: Path) -> None:
    assert sanic_internals(tree(path), rel(path)) == []


def test_the_store_does_not_import_the_wire_protocol() -> None:
    store = tree(CHAT / "store.py")
    for node in ast.walk(store):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            assert module not in ("protocol", "chat.protocol"), ast.unparse(node)
            if (node.level and not module) or module == "chat":
                assert "protocol" not in {a.name for a in node.names}, ast.unparse(node)
        elif isinstance(node, ast.Import):
            assert "chat.protocol" not in {a.name for a in node.names}, ast.unparse(node)


@pytest.mark.parametrize("path", [p for p in MODULES if p not in DDB_FORMAT_OWNERS],
                         ids=rel)
def test_dynamodb_attribute_values_stay_in_the_store(path: Path) -> None:
    found = [f"{rel(path)}:{n.lineno}: {ast.unparse(n)}" for n in ast.walk(tree(path))
             if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant)
             and n.slice.value in DDB_TYPES]
    assert found == []


def test_the_checks_see_what_they_forbid() -> None:
    """Each check finds the kind of violation it is for (none of them is vacuous)."""
    sample = ast.parse(
        "from .store import MessageStore as M\n"
        "class Own:\n    def __init__(self):\n        self._mine = 1\n"
        "def f(ws, store, own: Own):\n"
        "    M._x\n    own._mine\n    store.client._pool\n"
        "    ws.io_proto.transport.write(b'')\n    ws.io_proto._can_write.is_set()\n")
    assert private_accesses(sample, "sample") == [
        "sample:6: ._x on M", "sample:8: ._pool on store.client",
        "sample:10: ._can_write on ws.io_proto"]
    assert private_accesses(sample, "sample", in_seam=True) == [
        "sample:6: ._x on M", "sample:8: ._pool on store.client"]
    assert len(sanic_internals(sample, "sample")) == 3
