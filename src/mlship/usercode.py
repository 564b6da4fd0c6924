"""Import the user's `file.py:function` hooks (predict snippet and custom loader)."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlship.errors import UserCodeError


def load_function(root: Path, ref: str, key: str) -> Callable[..., Any]:
    """Import ``ref`` (``file.py:function``) relative to ``root``; ``key`` names the contract field."""
    filename, _, func_name = ref.partition(":")
    path = (root / filename).resolve()
    if not path.is_file():
        raise UserCodeError(
            f"mlship.yaml -> {key}: {filename} not found next to mlship.yaml.",
            fix=f"Create {filename} with a `{func_name}` function, or fix the `{key}` entry.",
        )
    module_name = f"mlship_user_{path.stem}"
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) != str(path):
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UserCodeError(f"Cannot import {filename}.", fix="Make sure it is a Python file.")
        module = importlib.util.module_from_spec(spec)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))  # let predict.py import its sibling modules
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise UserCodeError(
                f"{filename} failed to import: {exc.__class__.__name__}: {exc}",
                why=short_traceback(exc),
                fix=f"Fix the error in {filename}; `python {filename}` shows the same error.",
            ) from None
        sys.modules[module_name] = module
    func = getattr(module, func_name, None)
    if not callable(func):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UserCodeError(
            f"mlship.yaml -> {key}: {filename} has no function `{func_name}`.",
            why=f"Functions defined there: {', '.join(found) or 'none'}.",
            fix=f"Define `def {func_name}(...)` in {filename} or point `{key}` at an existing one.",
        )
    return func  # type: ignore[no-any-return]


def short_traceback(exc: BaseException, limit: int = 3) -> str:
    """The last frames of a traceback, for error messages about user code."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-limit)
    return "".join(lines).strip()
