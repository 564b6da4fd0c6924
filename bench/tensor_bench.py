#!/usr/bin/env python
"""Tensor models served compiled (onnxruntime) and native (the framework), side by side, in one run.

    python bench/tensor_bench.py                    # both examples, 2 s warm-up + 5 s per workload
    python bench/tensor_bench.py --models torch --duration 10 --json tensor.json

For torch-digits and keras-digits (trained by their own train.py into a temp dir), the model is converted and
checked once as `mlship build` does; then, for serve.compile auto (compiled) and off (native), a
`python -m mlship.serving` process on one CPU (the load generator on another, as in serve_bench.py) is timed from
process start to the first prediction and driven at c=1 and c=32 with one 8x8 digit per request. The framework
called in-process on one instance (c=1, no HTTP) is the latency floor. Everything runs on loopback, bounded by
--duration and --max-requests; temp dirs and servers are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench
from serve_bench import REPO, ServerProcess, Workload, drive, plan_cpus, run_loop

EXAMPLES = {"torch": REPO / "examples" / "torch-digits", "keras": REPO / "examples" / "keras-digits"}


def make_project(kind: str, directory: Path) -> Path:
    """The example's contract (keras: the torch contract with the tensorflow runtime) and a trained model."""
    import yaml

    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor

    sys.path.insert(0, str(EXAMPLES[kind]))
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{kind}_train", EXAMPLES[kind] / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    directory.mkdir(parents=True)
    artifact = "digits.pt" if kind == "torch" else "digits.keras"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.train(directory / "model" / artifact)
    data = yaml.safe_load((EXAMPLES["torch"] / "mlship.yaml").read_text())
    if kind == "keras":
        data.update(name="keras-digits", runtime="tensorflow", artifact="model/digits.keras")
        data["dependencies"]["requirements"] = []
    data.pop("docs", None)
    (directory / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    predictor = Predictor(load_project(directory / "mlship.yaml"))
    predictor.load()  # converts, checks and keeps the compiled model, as `mlship build` does
    if predictor.compiled is None:
        raise SystemExit(f"{kind}: {predictor.compile_note}")
    native = directory.with_name(directory.name + "-native")
    shutil.copytree(directory, native, ignore=shutil.ignore_patterns(".mlship"))
    data.setdefault("serve", {})["compile"] = "off"
    (native / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return native


def in_process_latency_ms(directory: Path, image: list[list[float]], seconds: float) -> float:
    """Median ms of the framework's own call on one instance, in this process (the native runtime's predict)."""
    import numpy as np

    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor

    predictor = Predictor(load_project(directory / "mlship.yaml"))
    predictor.load()
    x = np.asarray([image], dtype=np.float32)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and len(times) < 100_000:
        t = time.perf_counter()
        predictor.runtime.predict(predictor.model, x, [])
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


def bench(kind: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    compiled_dir = root / kind
    native_dir = make_project(kind, compiled_dir)
    images = json.loads((EXAMPLES["torch"] / "rows.json").read_text())["instances"]
    bodies = [json.dumps({"input": image}, separators=(",", ":")).encode() for image in images]
    server_cpu, gen_cpu = plan_cpus()
    if gen_cpu is not None:
        os.sched_setaffinity(0, {gen_cpu})
    out: dict[str, Any] = {"in_process_ms": in_process_latency_ms(native_dir, images[0], 2.0)}
    for mode, directory in (("compiled", compiled_dir), ("native", native_dir)):
        server = ServerProcess(directory, server_cpu)
        try:
            cold = server.cold_start(bodies[0])
            loads = [Workload(f"c={c}", 1, c, bodies, kind) for c in (1, 32)]
            measured = {w.name: run_loop(drive(server, w, args.warmup, args.duration, args.max_requests,
                                               server_cpu), "asyncio") for w in loads}
            out[mode] = {"cold_start": cold, "memory": server.memory(), **measured}
        finally:
            server.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(EXAMPLES), default=sorted(EXAMPLES, reverse=True))
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="mlship-tensor-bench-"))
    results: dict[str, Any] = {}
    try:
        for kind in args.models:
            results[kind] = r = bench(kind, root, args)
            print(f"\n{kind}-digits  (framework in-process, 1 instance: {r['in_process_ms']:.3f} ms)")
            for mode in ("compiled", "native"):
                m = r[mode]
                print(f"  {mode:8s} start->first prediction {m['cold_start']['first_prediction_s']:.2f} s  "
                      f"RSS {m['memory']['rss_mb'] if m['memory'] else float('nan'):.0f} MB  "
                      f"c=1 {serve_bench.fmt_rate(m['c=1']['req_per_s'])} req/s p50 {m['c=1']['p50_ms']:.2f} ms  "
                      f"c=32 {serve_bench.fmt_rate(m['c=32']['req_per_s'])} req/s p50 {m['c=32']['p50_ms']:.2f} ms "
                      f"rows/call {m['c=32']['rows_per_model_call'] or 0:.1f} (errors {m['c=32']['errors']})")
            ratio = r["compiled"]["c=32"]["req_per_s"] / r["native"]["c=32"]["req_per_s"]
            print(f"  compiled / native at c=32: {ratio:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
