#!/usr/bin/env python
"""mlship's iris server against a bare ASGI app on the same server stack: what the HTTP layer leaves for the model.

    python bench/asgi_floor.py                  # 2 s warm-up + 5 s per server, iris 1 row at c=32 (and c=1)
    python bench/asgi_floor.py --duration 10 --json floor.json

Both servers run on one CPU (the load generator on another, as in serve_bench.py), on loopback, uvicorn with
httptools and uvloop, no access log: `python -m mlship.serving` for the iris example (compiled: onnxruntime), and
the bare app below, which reads the body and answers a constant JSON prediction of the same size as mlship's for the
first iris row. The ratio mlship / bare at c=32 is the share of a core's request rate left once the model, the
validation and the batching run (issue 19 measured about 0.48x). Servers and temp dirs are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench
from serve_bench import HOST, ServerProcess, Workload, drive, free_port, http_get, plan_cpus, run_loop

#: the bare app: a module uvicorn imports; BODY is set from the environment, so its size matches mlship's answer
BARE_APP = '''
import os

BODY = os.environ["BARE_BODY"].encode()
HEAD = {"type": "http.response.start", "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole body, as any server must before answering
        message = await receive()
        more = message.get("more_body", False)
    await send(HEAD)
    await send({"type": "http.response.body", "body": BODY})
'''


class BareServer:
    """uvicorn serving BARE_APP with httptools and uvloop on one CPU; what drive() needs of a ServerProcess."""

    def __init__(self, directory: Path, body: bytes, cpu: int | None) -> None:
        (directory / "bare_app.py").write_text(BARE_APP)
        self.port = free_port()
        self.log_path = directory / "bare.log"
        cmd = [sys.executable, "-m", "uvicorn", "bare_app:app", "--host", HOST, "--port", str(self.port),
               "--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
        env = {**os.environ, "BARE_BODY": body.decode()}

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=pin, start_new_session=True)
        deadline = time.perf_counter() + 30
        while http_get(self.port, "/") != 200:
            if self.proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"the bare app did not start:\n{self.log_path.read_text()[-1500:]}")
            time.sleep(0.02)

    def cpu_seconds(self) -> float | None:
        return serve_bench.proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(server: Any, bodies: list[bytes], args: argparse.Namespace, cpu: int | None) -> dict[str, Any]:
    out = {}
    for concurrency in (1, 32):
        load = Workload(f"c={concurrency}", 1, concurrency, bodies)
        out[load.name] = run_loop(drive(server, load, args.warmup, args.duration, args.max_requests, cpu), "asyncio")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=500_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    server_cpu, gen_cpu = plan_cpus()
    if gen_cpu is not None:
        os.sched_setaffinity(0, {gen_cpu})
    root = Path(tempfile.mkdtemp(prefix="mlship-asgi-floor-"))
    results: dict[str, Any] = {"load_average_at_start": serve_bench.load_average(), "server_cpu": server_cpu,
                               "generator_cpu": gen_cpu}
    try:
        (root / "iris").mkdir()
        serve_bench.make_project(root / "iris")
        rows = serve_bench.iris_rows()
        bodies = [serve_bench.request_body([row]) for row in rows]
        mlship = ServerProcess(root / "iris", server_cpu)
        try:
            results["mlship_cold_start"] = mlship.cold_start(bodies[0])
            answer = serve_bench.http_post(mlship.port, bodies[0])[1]
            results["mlship"] = measure(mlship, bodies, args, server_cpu)
        finally:
            mlship.stop()
        bare = BareServer(root, answer, server_cpu)
        try:
            results["bare"] = measure(bare, bodies, args, server_cpu)
        finally:
            bare.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"iris 1 row, one server CPU ({server_cpu}), load generator on CPU {gen_cpu}, "
          f"load average {results['load_average_at_start']} at start; the same {len(answer)}-byte answer")
    for name in ("c=1", "c=32"):
        m, b = results["mlship"][name], results["bare"][name]
        ratio = results[f"ratio_{name}"] = m["req_per_s"] / b["req_per_s"]
        # requests per CPU-second the server used: steadier than req/s when other work takes part of the core
        per_cpu = results[f"ratio_per_cpu_s_{name}"] = (
            ratio * b["server_cpu"] / m["server_cpu"] if m["server_cpu"] and b["server_cpu"] else None)
        print(f"  {name:5s} mlship {serve_bench.fmt_rate(m['req_per_s'])} req/s (p50 {m['p50_ms']:.2f} ms, "
              f"server CPU {m['server_cpu'] or 0:.2f})  bare ASGI {serve_bench.fmt_rate(b['req_per_s'])} req/s "
              f"(p50 {b['p50_ms']:.2f} ms, server CPU {b['server_cpu'] or 0:.2f})  ratio {ratio:.2f}x, "
              f"per server CPU-second {per_cpu or float('nan'):.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
