"""The DynamoDB emulator's patches of moto (roles/data/files/moto_patches/, one module per
patch) and its entry point (roles/data/files/dynamodb_emulator.py), importable in a test."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

FILES = Path(__file__).resolve().parents[1] / "roles" / "data" / "files"


def patch_module(name: str) -> ModuleType:
    """moto_patches.<name>, imported as the emulator imports it."""
    if str(FILES) not in sys.path:
        sys.path.insert(0, str(FILES))
    return importlib.import_module(f"moto_patches.{name}")


def entry_point() -> ModuleType:
    """dynamodb_emulator.py as a module (its `patch()` installs the table patches)."""
    module = sys.modules.get("dynamodb_emulator")
    if module is None:
        spec = importlib.util.spec_from_file_location("dynamodb_emulator",
                                                      FILES / "dynamodb_emulator.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["dynamodb_emulator"] = module
        spec.loader.exec_module(module)
    return module
