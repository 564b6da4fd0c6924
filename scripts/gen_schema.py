"""Write schema/mlship.schema.json from the contract models; `--check` fails when it is stale.

    python scripts/gen_schema.py          # regenerate
    python scripts/gen_schema.py --check  # exit 1 if the committed schema differs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mlship.contract import FEATURE_TYPES, Contract

SCHEMA = Path(__file__).resolve().parents[1] / "schema" / "mlship.schema.json"


def render() -> str:
    schema = Contract.model_json_schema()
    # `sepal_length: float` is shorthand for `sepal_length: {type: float}`: allow both in editors.
    features = schema["$defs"]["InputSpec"]["properties"]["features"]
    features["additionalProperties"] = {
        "anyOf": [features["additionalProperties"], {"enum": list(FEATURE_TYPES), "type": "string"}]
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mlship.yaml"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not SCHEMA.is_file() or SCHEMA.read_text(encoding="utf-8") != text:
            print(f"{SCHEMA} is stale: run `python scripts/gen_schema.py` and commit it.", file=sys.stderr)
            return 1
        print(f"{SCHEMA.name} is up to date")
        return 0
    SCHEMA.parent.mkdir(exist_ok=True)
    SCHEMA.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
