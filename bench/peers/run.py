#!/usr/bin/env python
"""mlship against the servers people would otherwise write or deploy, on the same model and the same core.

    python bench/peers/run.py                        # 1 s warm-up + 5 s per point, 3 rounds (~15 min)
    python bench/peers/run.py --quick --repeat 1     # 0.5 s + 2 s, one round (~3 min once venvs exist)
    python bench/peers/run.py --only mlship,fastapi --json peers.json

Builds one venv per peer tool (cached), trains the iris pipeline and a 100-tree random forest once, then
serves the same artifact from mlship (compiled to ONNX beforehand as `mlship build` does, and `mlship-native`
with serve.compile: off), Flask under gunicorn, FastAPI under uvicorn, BentoML (with and without
adaptive batching) and MLServer (default and parallel_workers 0). Each server is pinned to one CPU and
driven from another by serve_bench's keep-alive HTTP/1.1 load generator. Prints one markdown table:
throughput, p50/p99, ratios to the in-process predict_proba ceiling and to mlship, cold start and PSS.
See bench/README.md ("Peers").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # serve_bench: the load generator, CPU pinning and /proc readers

import serve_bench  # noqa: E402
import venvs  # noqa: E402
from servers import ALL_PEERS, APPS, DEFAULT_PEERS, Answer, Model, Peer, ServerProcess  # noqa: E402

# CPUs this process may use, read before main() pins it to one
USABLE_CPUS = serve_bench.USABLE_CPUS


@dataclass(frozen=True)
class Point:
    model: str
    rows: int
    concurrency: int

    @property
    def key(self) -> str:
        return f"{self.model}-{self.rows}-c{self.concurrency}"

    @property
    def title(self) -> str:
        return f"{self.model} {self.rows} row{'s' if self.rows > 1 else ''} c={self.concurrency}"


POINTS = [Point("iris", 1, 32), Point("iris", 1, 1), Point("iris", 100, 8), Point("rf", 1, 32), Point("rf", 1, 1),
          Point("rf", 100, 8)]
NATIVE_CONTRACT = "mlship-native.yaml"  # the contract with serve.compile: off (peer `mlship-native`)
MAX_BODIES = 64  # distinct request bodies per point, cycled by the load generator


class RunTimeout(BaseException):  # not Exception: event loops would log and swallow it
    pass


# -- models ----------------------------------------------------------------------------------------
def train_models(tmp: Path) -> dict[str, Model]:
    """The iris example (examples/iris-sklearn/train.py) and a 100-tree random forest, both fitted on
    DataFrames, so each server turns requests into a DataFrame with the training columns."""
    import joblib
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from mlship.init import init_project

    iris = serve_bench.make_project(tmp / "iris")
    x, y = make_classification(n_samples=2000, n_features=20, random_state=0)
    features = [f"f{i}" for i in range(x.shape[1])]
    frame = pd.DataFrame(x, columns=features)
    forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(frame, y)
    rf = tmp / "rf" / "model" / "rf.joblib"
    rf.parent.mkdir(parents=True)
    joblib.dump(forest, rf, compress=3)  # compressed like the iris example
    frame.head(5).to_csv(tmp / "rf" / "rows.csv", index=False)
    init_project(rf, directory=tmp / "rf", sample=tmp / "rf" / "rows.csv")
    for key in ("iris", "rf"):
        compile_like_build(tmp / key / "mlship.yaml")
    return {
        "iris": Model("iris", "iris: StandardScaler + LogisticRegression", iris, tmp / "iris" / "mlship.yaml",
                      list(serve_bench.FEATURES), serve_bench.iris_rows()),
        "rf": Model("rf", "rf: RandomForestClassifier(100 trees), 20 features", rf, tmp / "rf" / "mlship.yaml",
                    features, [[float(v) for v in row] for row in x]),
    }


def compile_like_build(contract: Path) -> None:
    """Convert and check the model as `mlship build` does, so that the server starts the way it does in an image
    (with the compiled model beside the artifact); also write mlship-native.yaml, the same contract with
    serve.compile: off, served by the `mlship-native` peer."""
    import yaml

    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor

    predictor = Predictor(load_project(contract))
    predictor.load()
    if predictor.compiled is None:
        raise SystemExit(f"{contract}: {predictor.compile_note}")
    data = yaml.safe_load(contract.read_text())
    data.setdefault("serve", {})["compile"] = "off"
    contract.with_name(NATIVE_CONTRACT).write_text(yaml.safe_dump(data, sort_keys=False))


class Reference:
    """The models loaded in this process: expected answers and the in-process ceilings."""

    def __init__(self, models: dict[str, Model]) -> None:
        import joblib

        self.models = models
        self.loaded = {key: joblib.load(m.artifact) for key, m in models.items()}

    def frame(self, key: str, batch: list[list[float]]) -> Any:
        import pandas as pd

        return pd.DataFrame(batch, columns=self.models[key].features)

    def expected(self, key: str, batch: list[list[float]]) -> Answer:
        model = self.loaded[key]
        proba = model.predict_proba(self.frame(key, batch))
        classes = [str(c) for c in model.classes_]
        return Answer([classes[i] for i in proba.argmax(axis=1)],
                      [dict(zip(classes, map(float, row), strict=True)) for row in proba])

    def ceilings(self, seconds: float, windows: int = 1, model: str | None = None) -> dict[str, float]:
        """Rows/s of predict_proba on a prebuilt float64 array (as bench/README.md says: the fastest input
        scikit-learn takes; the servers are sent rows and build their own input), on this core, per point (of
        `model`, or all): the best of `windows` windows of `seconds` (other work on the machine only ever lowers a
        window's rate). The models were fitted on DataFrames: scikit-learn's warning that an array has no feature
        names is silenced for the measurement (it is the same model and the same numbers)."""
        import warnings

        import numpy as np

        out: dict[str, float] = {}
        calls: dict[tuple[str, int], float] = {}
        for point in POINTS:
            if model is not None and point.model != model:
                continue
            if (point.model, point.rows) not in calls:
                array = np.asarray(self.models[point.model].rows[:point.rows], dtype=np.float64)
                predict = functools.partial(self.loaded[point.model].predict_proba, array)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="X does not have valid feature names")
                    calls[point.model, point.rows] = max(serve_bench.calls_per_second(predict, seconds)
                                                         for _ in range(windows))
            out[point.key] = calls[point.model, point.rows] * point.rows
        return out


def batches(rows: list[list[float]], size: int) -> list[list[list[float]]]:
    if size == 1:
        return [[row] for row in rows[:MAX_BODIES]]
    step = max(1, (len(rows) - size + 1) // MAX_BODIES)
    return [rows[i:i + size] for i in range(0, len(rows) - size + 1, step)][:MAX_BODIES]


PARITY = 1e-5  # the definition of the same prediction: same labels, probabilities within 1e-5


def mismatch(got: Answer, want: Answer) -> str | None:
    if got.labels != want.labels:
        return f"labels {got.labels[:5]} != expected {want.labels[:5]}"
    if got.probabilities is not None and want.probabilities is not None:
        for i, (g, w) in enumerate(zip(got.probabilities, want.probabilities, strict=True)):
            if g.keys() != w.keys() or any(abs(g[k] - w[k]) > PARITY for k in w):
                return f"row {i}: probabilities {g} != expected {w}"
    return None


# -- one server ------------------------------------------------------------------------------------
@dataclass
class Settings:
    warmup: float
    duration: float
    max_requests: int
    start_timeout: float
    loop: str
    server_cpu: int | None


LIVE: list[ServerProcess] = []  # servers to stop on the way out, whatever happens


def run_point(peer: Peer, model: Model, point: Point, srv: ServerProcess, port: int, ref: Reference,
              cfg: Settings) -> dict[str, Any]:
    """Check one answer, then time the point. A wrong or failed answer is reported instead of timed."""
    chunks = batches(model.rows, point.rows)
    bodies = [peer.body(model, b) for b in chunks]
    path = peer.path(model)
    try:
        status, raw = serve_bench.http_post(port, bodies[0], timeout=30.0, path=path)
    except OSError as exc:
        return {"error": f"check request failed: {type(exc).__name__}: {exc}"}
    if status != 200:
        return {"error": f"check request got HTTP {status}: {raw[:200]!r}"}
    try:
        got = peer.parse(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"error": f"unreadable answer ({type(exc).__name__}: {exc}): {raw[:200]!r}"}
    wrong = mismatch(got, ref.expected(model.key, chunks[0]))
    if wrong:
        return {"error": f"wrong answer: {wrong}"}
    requests = [serve_bench.build_request(port, body, path) for body in bodies]
    load = serve_bench.Workload(point.title, point.rows, point.concurrency, bodies)
    coro = serve_bench.measure(port, requests, load, cfg.warmup, cfg.duration, cfg.max_requests, cfg.server_cpu,
                               srv.cpu_seconds)
    result: dict[str, Any] = serve_bench.run_loop(coro, cfg.loop)
    raise_pending()
    result["probabilities_checked"] = got.probabilities is not None
    return result


def run_server(peer: Peer, python: Path, model: Model, points: list[Point], ref: Reference, work: Path,
               cfg: Settings, out: dict[str, Any]) -> None:
    """Start `peer` serving `model`, measure its cold start, its points and its PSS into `out` (as they come,
    so an interrupted run keeps them), stop it."""
    port = serve_bench.free_port()
    launch = peer.launch(python, model, port, work)
    srv = ServerProcess(launch, work / "logs" / f"{peer.name}-{model.key}.log", cfg.server_cpu)
    LIVE.append(srv)
    out["points"] = {}
    try:
        first = peer.body(model, model.rows[:1])
        out["cold_start_s"], _, _ = srv.first_answer(port, peer.path(model), first, cfg.start_timeout)
        for point in points:
            print(f"    {point.title:<16} ...", end="", flush=True)
            res = out["points"][point.key] = run_point(peer, model, point, srv, port, ref, cfg)
            if "error" in res:
                print(f" {res['error']}", flush=True)
            else:
                rate, unit = (res["req_per_s"], "req/s") if point.rows == 1 else (res["rows_per_s"], "rows/s")
                print(f" {serve_bench.fmt_rate(rate)} {unit}, p50 {res['p50_ms']:.2f} ms, "
                      f"p99 {res['p99_ms']:.2f} ms, {res['errors']} errors", flush=True)
            if srv.exited() is not None:
                raise srv.failure(f"exited with {srv.proc.returncode} during the load")
        out["pss_mb"] = srv.pss_mb()
        out["processes"] = len(srv.members())
    except RuntimeError as exc:
        out["error"] = str(exc)
        print(f"    !! {peer.name} on {model.key}: {str(exc).splitlines()[0]}", flush=True)
    finally:
        srv.stop()
        LIVE.remove(srv)


# -- aggregation -----------------------------------------------------------------------------------
def median_of(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(known) if known else None


def round_ceiling(this_round: dict[str, Any], key: str) -> float | None:
    """The best of a round's ceiling samples: taken at its start and before each server starts."""
    return max((s[key] for s in this_round["ceiling_samples"] if key in s), default=None)


def summarize(rounds: list[dict[str, Any]], names: list[str], not_installed: dict[str, str]) -> dict[str, Any]:
    """Median over the rounds of every number, per server and point; errors kept as text."""
    ceilings = {p.key: median_of([round_ceiling(r, p.key) for r in rounds]) for p in POINTS}
    servers: dict[str, Any] = {}
    for name in names:
        if name in not_installed:
            servers[name] = {"not_installed": not_installed[name]}
            continue
        runs = [r["servers"][name] for r in rounds if name in r["servers"]]
        row: dict[str, Any] = {"points": {}, "errors": []}
        for key in ("iris", "rf"):
            per_model = [run[key] for run in runs if key in run]
            row[f"cold_start_s_{key}"] = median_of([m.get("cold_start_s") for m in per_model])
            row[f"pss_mb_{key}"] = median_of([m.get("pss_mb") for m in per_model])
            row["errors"] += sorted({f"{key}: {m['error'].splitlines()[0]}" for m in per_model if "error" in m})
        for p in POINTS:
            done = [run[p.model]["points"][p.key] for run in runs if p.key in run.get(p.model, {}).get("points", {})]
            ok = [d for d in done if "error" not in d]
            failed = sorted({d["error"] for d in done if "error" in d})
            row["errors"] += [f"{p.title}: {e}" for e in failed]
            if not ok:
                if failed:
                    row["points"][p.key] = {"failed": "wrong answer" if any(e.startswith("wrong") for e in failed)
                                            else "failed"}
                continue
            cell: dict[str, Any] = {
                k: median_of([d[k] for d in ok])
                for k in ("req_per_s", "rows_per_s", "p50_ms", "p99_ms", "server_cpu", "generator_cpu")}
            cell["errors"] = sum(d["errors"] for d in ok)
            cell["rounds"] = len(ok)
            cell["noise"] = median_of([(d["other_on_server_cpu"] or 0) + (d["steal_on_server_cpu"] or 0) for d in ok])
            cell["ceiling_ratio"] = cell["rows_per_s"] / ceilings[p.key] if ceilings[p.key] else None
            row["points"][p.key] = cell
        servers[name] = row
    base = servers.get("mlship", {}).get("points", {})
    for row in servers.values():
        for key, cell in row.get("points", {}).items():
            if "failed" in cell:
                continue
            cell["mlship_ratio"] = (cell["rows_per_s"] / base[key]["rows_per_s"]
                                    if "rows_per_s" in base.get(key, {}) else None)
    return {"ceilings_rows_per_s": ceilings, "servers": servers}


# -- report ----------------------------------------------------------------------------------------
def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_pair(a: float | None, b: float | None, fmt: str) -> str:
    return " / ".join("-" if v is None else format(v, fmt) for v in (a, b))


def table(summary: dict[str, Any], names: list[str]) -> list[list[str]]:
    head = ["server"]
    for p in POINTS:
        unit = "req/s" if p.rows == 1 else "rows/s"
        head += [f"{p.model} {p.rows}r c{p.concurrency} {unit}", "p50/p99 ms", "x ceil", "x mlship"]
    head += ["cold start s iris / rf", "PSS MB iris / rf"]
    rows = [head]
    ceiling = ["in-process predict_proba (1 core)"]
    for p in POINTS:
        value = summary["ceilings_rows_per_s"][p.key]  # calls/s = rows/s for 1 row: the column's unit
        ceiling += ["-" if value is None else serve_bench.fmt_rate(value), "-", "1.00", "-"]
    rows.append([*ceiling, "-", "-"])
    for name in names:
        row = summary["servers"][name]
        if "not_installed" in row:
            reason = row["not_installed"].split(" (log: ")[0]
            short = reason if len(reason) <= 70 else reason[:67] + "..."
            rows.append([name, f"not installed: {short}", *["-"] * (len(head) - 2)])
            continue
        line = [name]
        for p in POINTS:
            cell = row["points"].get(p.key)
            if cell is None or "failed" in cell:
                line += [cell["failed"] if cell else "failed" if row["errors"] else "-", "-", "-", "-"]
                continue
            rate = cell["req_per_s"] if p.rows == 1 else cell["rows_per_s"]
            flag = " !" if cell["errors"] else ""
            line += [serve_bench.fmt_rate(rate) + flag, f"{fmt_ms(cell['p50_ms'])} / {fmt_ms(cell['p99_ms'])}",
                     fmt_ratio(cell["ceiling_ratio"]), fmt_ratio(cell["mlship_ratio"])]
        line += [fmt_pair(row["cold_start_s_iris"], row["cold_start_s_rf"], ".2f"),
                 fmt_pair(row["pss_mb_iris"], row["pss_mb_rf"], ".0f")]
        rows.append(line)
    return rows


def print_markdown(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    aligned = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(rows[0], widths, strict=True))]
    print("| " + " | ".join(aligned) + " |")
    print("|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
    for r in rows[1:]:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |")


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    cfg = result["config"]
    load = m["load_average_at_start"]
    print()
    print(f"machine : {m['cpu_model']}, nproc {m['nproc']} (usable {m['usable_cpus']}); load average "
          f"{' / '.join(f'{v:.2f}' for v in load)} (1/5/15 min) at start, "
          f"{' / '.join(f'{v:.2f}' for v in m['load_average_at_end'])} at end")
    print(f"python  : {m['python']} on {m['platform']}")
    print(f"pinning : {serve_bench.pinning(m, 'every server process on CPU {}', 'ceiling')}")
    print(f"run     : {cfg['rounds']} round(s) of: start each server per model, warm-up {cfg['warmup_s']:g} s + "
          f"measure {cfg['duration_s']:g} s per point (max {cfg['max_requests']:,} requests); medians over rounds")
    print(f"models  : {'; '.join(result['models'])}; same joblib file for every server")
    for name, v in result["venvs"].items():
        versions = ", ".join(f"{k} {x}" for k, x in v["versions"].items())
        how = "reused" if v["reused"] else f"built in {v['install_s']:.0f} s"
        print(f"venv    : {name} ({how}): " + (versions if v["python"] else f"NOT INSTALLED: {v['error']}"))
    print(f"main    : {', '.join(f'{k} {x}' for k, x in m['versions'].items())}")
    if result.get("incomplete"):
        print(f"!! incomplete run: {result['incomplete']}; the table has what was measured")
    print()
    names = result["servers_run"]
    print_markdown(table(result["summary"], names))
    print()
    print("rate = completed 200 responses per second (x rows per request for rows/s); x ceil = server rows/s / "
          "in-process predict_proba rows/s\non one core; x mlship = server rows/s / mlship rows/s on the same "
          "point (compare within this run: +-30% between runs).\n'!' after a rate: some requests failed "
          "(see below). PSS: whole server process tree after its load.")
    print()
    for name in names:
        print(f"- {name}: {ALL_PEERS[name].config}")
    noisy = []
    for name in names:
        row = result["summary"]["servers"][name]
        for err in row.get("errors", []):
            print(f"!! {name}: {err}")
        for key, cell in row.get("points", {}).items():
            if "failed" in cell:
                continue
            if cell["errors"]:
                print(f"!! {name} {key}: {cell['errors']} failed requests (non-200 or transport)")
            if (cell["generator_cpu"] or 0) > 0.9 and (cell["server_cpu"] or 0) < 0.9:
                print(f"!! {name} {key}: the load generator used {serve_bench.fmt_pct(cell['generator_cpu'])} "
                      "of its core and may be the bottleneck")
            if (cell["noise"] or 0) > 0.05:
                noisy.append(f"{name} {key} {serve_bench.fmt_pct(cell['noise'])}")
    if noisy:
        text = ("!! other processes or the hypervisor took > 5% of the server's CPU (median over the rounds) in: "
                + ", ".join(noisy) + ". Those numbers read low; run again on a quiet machine.")
        print(textwrap.fill(text, 118, subsequent_indent="   "))


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="0.5 s warm-up + 2 s measurement per point")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per point (default 1)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per point (default 5)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; the table shows medians (default 3)")
    p.add_argument("--only", default=None, metavar="A,B",
                   help=f"servers to run (default {','.join(DEFAULT_PEERS)}; all: {','.join(ALL_PEERS)})")
    p.add_argument("--max-requests", type=int, default=200_000, help="hard cap per point (default 200000)")
    p.add_argument("--start-timeout", type=float, default=120.0,
                   help="seconds a server may take to answer its first prediction (default 120)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="give up the whole run after this many seconds, installs included (default 3600)")
    p.add_argument("--cache", type=Path, default=venvs.DEFAULT_CACHE,
                   help=f"where the peer venvs live (default {venvs.DEFAULT_CACHE})")
    p.add_argument("--fresh", action="store_true", help="rebuild the peer venvs")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the raw numbers as JSON")
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else 0.5 if args.quick else 1.0
    args.duration = args.duration if args.duration is not None else 2.0 if args.quick else 5.0
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(DEFAULT_PEERS)
    unknown = [n for n in args.names if n not in ALL_PEERS]
    if unknown or not args.names or args.repeat < 1:
        p.error(f"unknown server(s) {unknown}; choose from {', '.join(ALL_PEERS)}" if unknown or not args.names
                else "--repeat must be at least 1")
    return args


PENDING: list[BaseException] = []  # a signal that arrived while the load generator's event loop ran


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM and the --timeout alarm: unwind through the finally blocks that stop the servers. Inside the
    event loop an exception raised here could be swallowed by a callback, so it waits until the loop is done
    (at most warm-up + window + 10 s)."""
    exc = RunTimeout() if signum == signal.SIGALRM else KeyboardInterrupt()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise exc from None
    PENDING.append(exc)


def raise_pending() -> None:
    if PENDING:
        raise PENDING.pop(0)


def machine_info(server_cpu: int | None, gen_cpu: int | None, loop: str, load: tuple[float, ...]) -> dict[str, Any]:
    info = serve_bench.machine(server_cpu, gen_cpu, loop)
    info.pop("load_average_1m_at_start", None)
    info["usable_cpus"] = USABLE_CPUS
    info["load_average_at_start"] = load
    info["load_average_at_end"] = os.getloadavg()
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGALRM, _on_signal)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    server_cpu, gen_cpu = serve_bench.plan_cpus()
    if gen_cpu is not None:
        # before numpy/sklearn start any thread pools, so every thread of this process stays on gen_cpu
        os.sched_setaffinity(0, {gen_cpu})
    loop = "uvloop" if serve_bench._has_uvloop() else "asyncio"
    cfg = Settings(args.warmup, args.duration, args.max_requests, args.start_timeout, loop, server_cpu)
    ceiling_s = 0.3 if args.quick else 0.5  # x 3 windows, the best counts
    tmp = Path(tempfile.mkdtemp(prefix="mlship-peers-"))
    envs: dict[str, venvs.Venv] = {}
    rounds: list[dict[str, Any]] = []
    models: dict[str, Model] = {}
    incomplete = None
    code = 0
    try:
        for name in dict.fromkeys(v for n in args.names if (v := ALL_PEERS[n].venv)):
            print(f"venv {name}: ", end="", flush=True)
            env = envs[name] = venvs.ensure(name, args.cache, fresh=args.fresh)
            print("reused" if env.reused else f"built in {env.install_s:.0f} s" if env.python
                  else f"NOT INSTALLED ({env.install_s:.0f} s): {env.error}", flush=True)
        print(f"training the models into {tmp} ...", flush=True)
        models = train_models(tmp)
        shutil.copytree(APPS, tmp / "apps", ignore=shutil.ignore_patterns("__pycache__"))
        (tmp / "logs").mkdir()
        ref = Reference(models)
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat}: in-process ceilings (best of 3 x {ceiling_s:g} s) ...", flush=True)
            this: dict[str, Any] = {"ceiling_samples": [ref.ceilings(ceiling_s, windows=3)], "servers": {}}
            rounds.append(this)
            for name in args.names:
                peer = ALL_PEERS[name]
                venv = envs.get(peer.venv) if peer.venv else None
                if venv is not None and venv.python is None:
                    continue
                python = venv.python if venv is not None and venv.python else Path(sys.executable)
                this["servers"][name] = {}
                for key, model in models.items():
                    this["ceiling_samples"].append(ref.ceilings(ceiling_s, model=key))  # more samples, same core
                    print(f"  {name} serving {key}", flush=True)
                    points = [p for p in POINTS if p.model == key]
                    out: dict[str, Any] = {}
                    this["servers"][name][key] = out
                    run_server(peer, python, model, points, ref, tmp, cfg, out)
    except KeyboardInterrupt:
        incomplete, code = "interrupted", 130
        print("\ninterrupted", file=sys.stderr)
    except RunTimeout:
        incomplete, code = f"--timeout {args.timeout:g} s reached", 1
        print(f"\n--timeout {args.timeout:g} s reached", file=sys.stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for srv in list(LIVE):
            with contextlib.suppress(Exception):
                srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    not_installed = {n: f"{envs[v].error}" for n in args.names
                     if (v := ALL_PEERS[n].venv) and v in envs and envs[v].python is None}
    if not rounds:
        return code or 1
    result = {
        "machine": machine_info(server_cpu, gen_cpu, loop, load_at_start),
        "config": {"warmup_s": args.warmup, "duration_s": args.duration, "rounds": len(rounds),
                   "max_requests": args.max_requests, "quick": args.quick,
                   "ceiling_window_s": ceiling_s,
                   "start_timeout_s": args.start_timeout},
        "models": [m.title for m in models.values()],
        "venvs": {k: {"python": str(v.python) if v.python else None, "error": v.error, "reused": v.reused,
                      "install_s": v.install_s, "versions": v.versions} for k, v in envs.items()},
        "servers_run": args.names,
        "points": {p.key: {"model": p.model, "rows": p.rows, "concurrency": p.concurrency} for p in POINTS},
        "rounds": rounds,
        "summary": summarize(rounds, args.names, not_installed),
        "incomplete": incomplete,
        "wall_s": time.perf_counter() - started,
    }
    print_report(result)
    print(f"\nwall time {result['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"saved {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
