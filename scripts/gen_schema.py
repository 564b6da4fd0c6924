"""Write schema/mlship.schema.json (the contract) and schema/reports.schema.json (the `--json` documents) from
their pydantic models; `--check` fails when either is stale.

    python scripts/gen_schema.py          # regenerate
    python scripts/gen_schema.py --check  # exit 1 if the committed schema differs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic.json_schema import models_json_schema

from mlship.contract import FEATURE_TYPES, Contract
from mlship.reports import DOCUMENTS, SCHEMA_VERSION

SCHEMA = Path(__file__).resolve().parents[1] / "schema" / "mlship.schema.json"
REPORTS = SCHEMA.with_name("reports.schema.json")


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


def render_reports() -> str:
    """One schema: a document printed by `--json` is one of these (told apart by `kind`)."""
    _, schema = models_json_schema([(model, "serialization") for model in DOCUMENTS],
                                   title=f"mlship --json documents (schema_version {SCHEMA_VERSION})")
    schema["oneOf"] = [{"$ref": f"#/$defs/{model.__name__}"} for model in DOCUMENTS]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    outputs = {SCHEMA: render(), REPORTS: render_reports()}
    if "--check" in argv:
        stale = [path for path, text in outputs.items()
                 if not path.is_file() or path.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} is stale: run `python scripts/gen_schema.py` and commit it.", file=sys.stderr)
        if stale:
            return 1
        print(", ".join(path.name for path in outputs) + " are up to date")
        return 0
    SCHEMA.parent.mkdir(exist_ok=True)
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
