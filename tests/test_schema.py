"""The committed JSON schema (schema/mlship.schema.json) matches the contract models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schema" / "mlship.schema.json"


def test_committed_schema_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_schema.py", "--check"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, (
        f"schema is stale; run `python scripts/gen_schema.py`:\n{result.stdout}{result.stderr}"
    )


def test_schema_forbids_unknown_top_level_keys() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False
    assert {"name", "runtime", "artifact", "task", "input"} <= set(schema["required"])
    assert "runtime" in schema["properties"]


def test_schema_forbids_unknown_keys_in_every_section() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    for name, definition in schema["$defs"].items():
        assert definition.get("additionalProperties") is False, f"$defs.{name} allows unknown keys"
