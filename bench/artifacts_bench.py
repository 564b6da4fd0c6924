#!/usr/bin/env python
"""Remote artifacts: what a model kept in a bucket costs at build time and at start.

    python bench/artifacts_bench.py                 # base image $MLSHIP_BASE_IMAGE or the test one
    python bench/artifacts_bench.py --mb 100 --json artifacts.json

Against moto in server mode on loopback (S3, versioned bucket; the real boto3), in this process:

1. iris: `mlship init s3://...` -> `mlship build` (cold: the dependency layers), a second build with the pin
   unchanged (bytes downloaded: expected 0), then a new object version, the pin updated, and a build (the
   model-only rebuild: goal <= 10 s; bytes downloaded: the new version, once).
2. a ~--mb MB artifact (the iris model with a random array attached, so it loads and predicts like iris): the
   baked image, and the serve.fetch_at_start image; each is run (host network: moto listens on loopback) and
   timed from `docker run` to the first 200 from /predict (cold start), three runs each, median.

Bounded: --timeout (default 1800 s) for the whole run. Every container and image it makes is removed, also on
errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "src")]
TEST_BASE = "mlship-test-base:bookworm"
ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def padded_iris(out: Path, megabytes: int) -> bytes:
    """The iris model with ~``megabytes`` MB of random float64 attached (incompressible): a large artifact."""
    import joblib
    import numpy as np

    from emulators.storage_fixtures import iris_variant

    iris_variant(out)
    model = joblib.load(out)  # the bench's own file, just written
    model.bench_padding_ = np.random.default_rng(0).random(megabytes * 131_072)
    joblib.dump(model, out)
    return out.read_bytes()


def init(uri: str, folder: Path, name: str, extra: str = "") -> None:
    import shutil

    from mlship.init import init_project

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "examples" / "iris-sklearn" / "rows.csv", folder / "rows.csv")
    init_project(uri, directory=folder, sample=folder / "rows.csv", name=name, force=True)
    if extra:
        with (folder / "mlship.yaml").open("a") as fh:
            fh.write(extra)


def build(folder: Path, base: str, made: list[str]) -> tuple[str, float, int]:
    """(image, seconds, bytes downloaded) of one `mlship build`; prints its stages' seconds."""
    from mlship import pipeline
    from mlship.artifacts import cache, resolve
    from mlship.events import Events

    resolve._memo.clear()  # as a new `mlship build` process would start
    before, started, events = cache.downloaded_bytes[0], time.perf_counter(), Events()
    report = pipeline.build(folder, base_image=base, events=events)
    made.append(report.image)
    seconds = time.perf_counter() - started
    load = os.getloadavg()[0]
    print(f"build {report.image}: {seconds:.1f} s {dict((k, round(v, 1)) for k, v in events.timings.items())}, "
          f"load average {load:.1f}", flush=True)
    return report.image, seconds, cache.downloaded_bytes[0] - before


def cold_start(cli: Any, image: str, env: dict[str, str], containers: list[Any]) -> float:
    """Seconds from `docker run` to the first 200 from /predict (host network, a free loopback port)."""
    import httpx

    from conftest import free_port

    port = free_port()
    started = time.perf_counter()
    container = cli.containers.run(image, detach=True, network_mode="host",
                                   environment={**env, "PORT": str(port), "MLSHIP_HOST": "127.0.0.1"})
    containers.append(container)
    deadline = started + 300
    try:
        while time.perf_counter() < deadline:
            try:
                if httpx.post(f"http://127.0.0.1:{port}/predict", json=ROW, timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{image} did not predict within 300 s:\n{container.logs().decode()[-2000:]}")
    finally:
        container.remove(force=True)
        containers.remove(container)


def run(args: argparse.Namespace, made: list[str], containers: list[Any]) -> dict[str, Any]:
    import boto3

    from emulators.ecs_moto import MotoServer, aws_environment
    from emulators.storage_fixtures import iris_variant, repin, sha256
    from mlship.image import engine

    base = os.environ.get("MLSHIP_BASE_IMAGE") or TEST_BASE
    work = Path(tempfile.mkdtemp(prefix="artifacts-bench-"))
    os.environ["MLSHIP_CACHE_DIR"] = str(work / "cache")
    results: dict[str, Any] = {"base_image": base, "cpus": os.cpu_count()}
    with MotoServer() as moto:
        env = aws_environment(moto.endpoint, "us-east-1", str(work))
        os.environ.update(env)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        s3.put_bucket_versioning(Bucket="models", VersioningConfiguration={"Status": "Enabled"})

        name = f"bench-art-{uuid.uuid4().hex[:6]}"
        s3.put_object(Bucket="models", Key="iris/model.joblib", Body=iris_variant(work / "v1.joblib", c=1.0))
        init("s3://models/iris/model.joblib", work / name, name)
        _, results["iris_first_build_s"], results["iris_first_build_bytes"] = build(work / name, base, made)
        _, results["iris_same_pin_build_s"], results["iris_same_pin_bytes"] = build(work / name, base, made)
        data2 = iris_variant(work / "v2.joblib", c=0.05)
        s3.put_object(Bucket="models", Key="iris/model.joblib", Body=data2)
        repin(work / name, sha256(data2))
        _, results["iris_model_only_rebuild_s"], results["iris_model_only_bytes"] = build(work / name, base, made)
        print(json.dumps(results, indent=1), flush=True)

        big = f"bench-big-{uuid.uuid4().hex[:6]}"
        data = padded_iris(work / "big.joblib", args.mb)
        results["big_artifact_mb"] = round(len(data) / 1e6, 1)
        s3.put_object(Bucket="models", Key="big/model.joblib", Body=data)
        init("s3://models/big/model.joblib", work / big, big)
        baked, results["big_baked_build_s"], _ = build(work / big, base, made)
        init("s3://models/big/model.joblib", work / big, big, extra="serve:\n  fetch_at_start: true\n")
        fetching, results["big_fetch_build_s"], _ = build(work / big, base, made)
        cli = engine.client()
        results["big_baked_image_mb"] = round(cli.images.get(baked).attrs["Size"] / 1e6, 1)
        results["big_fetch_image_mb"] = round(cli.images.get(fetching).attrs["Size"] / 1e6, 1)
        baked_s = [cold_start(cli, baked, env, containers) for _ in range(args.runs)]
        fetch_s = [cold_start(cli, fetching, env, containers) for _ in range(args.runs)]
        results["cold_start_baked_s"] = [round(s, 2) for s in baked_s]
        results["cold_start_fetch_at_start_s"] = [round(s, 2) for s in fetch_s]
        results["cold_start_baked_median_s"] = round(statistics.median(baked_s), 2)
        results["cold_start_fetch_median_s"] = round(statistics.median(fetch_s), 2)
    return results


def cleanup(made: list[str], containers: list[Any]) -> None:
    from mlship.image import engine

    cli = engine.client()
    for container in containers:
        container.remove(force=True)
    names = {tag.split(":")[0] for tag in made}
    for image in cli.images.list():
        for tag in image.tags:
            if tag.split(":")[0] in names:
                cli.images.remove(tag, force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the large artifact (MB)")
    parser.add_argument("--runs", type=int, default=3, help="cold starts per image")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"over {args.timeout} s")))
    signal.alarm(args.timeout)
    made: list[str] = []
    containers: list[Any] = []
    try:
        results = run(args, made, containers)
    finally:
        signal.alarm(0)
        cleanup(made, containers)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
