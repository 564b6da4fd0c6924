#!/usr/bin/env python
"""How far the models users bring get: `mlship init` -> `mlship deploy --target local` -> first prediction.

    python bench/fixtures_bench.py                       # every fixture, base image $MLSHIP_BASE_IMAGE or the test one
    python bench/fixtures_bench.py --only text_pipeline,keras2_zip --json fixtures.json

For each fixture kind, made by the test suite's own builders (tests/test_fixture_deploys.py and the files it
imports from): the text pipeline saved as model.joblib.gz, a pickle of the user's own class with its package
beside it (tests/test_user_packages.py), a torch net in a scikit-learn-style wrapper, a Keras 2 SavedModel zip.
Each runs the same round trip as tests/test_fixture_deploys.py, in this process: `mlship init` with no
hand-written contract (only the deploy port is set afterwards), `mlship deploy --target local` (a real image and
the test gate), POST /predict through the deploy's URL (checked against the original object's in-process
predictions), `mlship destroy`.

It prints one row per kind: whether init succeeded with no help (and the flags it needed), lines of user code
the contract needed (the files its load:/predict: name), the image size (`docker image inspect`), seconds from
`mlship init` to the first served prediction, the build stage's share of that, and whether the wheelhouse was
already cached. The old scikit-learn 0.24 pickle (.sav) is measured elsewhere: its row is left for it.

Bounded: --timeout (default 3600 s) for the whole run; every container and image it makes is removed, also on
errors, Ctrl-C and --timeout. See docs/models-you-have.md for a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "src")]
TEST_BASE = "mlship-test-base:bookworm"
KINDS = ["text_pipeline", "user_class", "torch_wrapper", "keras2_zip"]
LEFT_FOR = {"sklearn024_sav": "old scikit-learn 0.24 `.sav` (another helper measures it)"}


def user_class_fixture(root: Path) -> tuple[str, list[str], Any, Any]:
    """model.pkl: a pickle of ThresholdClassifier, its package mymodels/ beside it (tests/test_user_packages.py)."""
    import test_user_packages as up

    root.mkdir(parents=True, exist_ok=True)
    rows, expected = up.make_project(root)

    def check(predictions: list[dict[str, Any]]) -> None:
        assert [p["label"] for p in predictions] == expected, (predictions, expected)

    return "model.pkl", [], json.loads(up.rows_json(rows)), check


def run_one(kind: str, folder: Path, engine: Any) -> dict[str, Any]:
    import test_fixture_deploys as fx
    import test_user_packages as up
    import test_wrapped_models as wm

    maker = user_class_fixture if kind == "user_class" else fx.FIXTURES[kind]
    row: dict[str, Any] = {"kind": kind, "init_ok": False}
    started = time.perf_counter()
    try:
        artifact, init_args, body, check = maker(folder / kind)
        row["init_flags"] = " ".join(a for a in init_args if a.startswith("--") and a != "--sample")
        with fx.deployed(folder / kind, artifact, init_args, engine) as service:
            row["init_ok"] = True
            predictions, seconds = service.predict(body)
            check(predictions)
            row.update(user_code_lines=service.user_code_lines, image_mb=fx.image_size_mb(engine, service.image),
                       first_prediction_s=round(seconds, 1),
                       build_s=round(service.report["timings"].get("build", 0.0), 1),
                       wheelhouse="cached" if "wheelhouse cached" in service.log else "downloaded")
            service.destroy()
        row["ok"] = True
    except BaseException as exc:  # a failed fixture is a row, not the end of the run (Ctrl-C/--timeout: re-raised)
        row["ok"], row["error"] = False, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if isinstance(exc, KeyboardInterrupt | TimeoutError):
            raise
    finally:
        wm._forget_netwrap()
        up.forget()
        row["wall_s"] = round(time.perf_counter() - started, 1)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| fixture | init unaided | flags | user code lines | image MB | init -> first prediction s "
            "| of which build s | wheelhouse |")
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        if not r.get("ok"):
            lines.append(f"| {r['kind']} | {'yes' if r['init_ok'] else 'no'} | {r.get('init_flags', '')} | "
                         f"failed: {r.get('error', '')} | | | | |")
            continue
        lines.append(f"| {r['kind']} | yes | {r['init_flags'] or '-'} | {r['user_code_lines']} | {r['image_mb']} | "
                     f"{r['first_prediction_s']} | {r['build_s']} | {r['wheelhouse']} |")
    for kind, what in LEFT_FOR.items():
        lines.append(f"| {kind} | {what} | | | | | | |")
    return "\n".join(lines)


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError("--timeout")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(KINDS), help=f"comma-separated kinds (default: {','.join(KINDS)})")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run (default 3600)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the rows as JSON")
    args = p.parse_args(argv)
    kinds = [k for k in args.only.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    os.environ.setdefault("MLSHIP_BASE_IMAGE", TEST_BASE)
    os.environ.setdefault("NO_COLOR", "1")
    from mlship.image import engine as mlship_engine

    engine = mlship_engine.client()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(args.timeout)))
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mlship-fixtures-") as tmp:
            for kind in kinds:
                print(f"{kind} ...", file=sys.stderr, flush=True)
                rows.append(run_one(kind, Path(tmp), engine))
                print(f"  {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    except (KeyboardInterrupt, TimeoutError) as exc:
        print(f"\nstopped: {type(exc).__name__} {exc}", file=sys.stderr)
    finally:
        signal.alarm(0)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.node()}: {os.cpu_count()} CPUs, "
          f"{platform.platform()}; base image {os.environ['MLSHIP_BASE_IMAGE']}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if rows and all(r.get("ok") for r in rows) and len(rows) == len(kinds) else 1


if __name__ == "__main__":
    sys.exit(main())
