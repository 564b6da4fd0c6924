"""Prometheus metrics in the text exposition format, without a client library (cheap on the hot path).

Exposed at /metrics:

- ``mlship_requests_total{path,code}``            counter
- ``mlship_request_duration_seconds{path}``        histogram
- ``mlship_prediction_errors_total{kind}``         counter (invalid_input, timeout, overload, model)
- ``mlship_batch_instances``                       histogram of instances per /predict request
- ``mlship_model_batch_rows``                      histogram of rows per model call (requests coalesced)
- ``mlship_predictions_in_progress``               gauge
- ``mlship_model_ready``                           gauge (1 when /readyz answers 200)
"""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        lines, running = [], 0
        for bound, count in zip(self.buckets, self.counts):  # noqa: B905 - counts has one more (+Inf); 3.9: no strict=
            running += count
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        suffix = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{suffix} {self.total:.6f}")
        lines.append(f"{name}_count{suffix} {self.n}")
        return lines


class Metrics:
    """All counters live on the event loop thread, so no locks are needed."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.errors: dict[str, int] = defaultdict(int)
        self.batch = Histogram(BATCH_BUCKETS)
        self.model_batch = Histogram(BATCH_BUCKETS)
        self.in_progress = 0
        self.ready = 0

    def request(self, path: str, code: int, seconds: float) -> None:
        self.requests[(path, code)] += 1
        hist = self.latency.get(path)
        if hist is None:
            hist = self.latency[path] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def render(self) -> str:
        out = [
            "# HELP mlship_requests_total HTTP requests by path and status code.",
            "# TYPE mlship_requests_total counter",
        ]
        out += [f'mlship_requests_total{{path="{p}",code="{c}"}} {n}' for (p, c), n in sorted(self.requests.items())]
        out += [
            "# HELP mlship_request_duration_seconds Time from request start to response.",
            "# TYPE mlship_request_duration_seconds histogram",
        ]
        for path, hist in sorted(self.latency.items()):
            out += hist.render("mlship_request_duration_seconds", f'path="{path}"')
        out += [
            "# HELP mlship_prediction_errors_total Failed /predict requests by kind.",
            "# TYPE mlship_prediction_errors_total counter",
        ]
        out += [f'mlship_prediction_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())]
        out += [
            "# HELP mlship_batch_instances Instances per /predict request.",
            "# TYPE mlship_batch_instances histogram",
            *self.batch.render("mlship_batch_instances"),
            "# HELP mlship_model_batch_rows Rows per model call (concurrent requests are coalesced).",
            "# TYPE mlship_model_batch_rows histogram",
            *self.model_batch.render("mlship_model_batch_rows"),
            "# HELP mlship_predictions_in_progress Predictions queued or running in model threads.",
            "# TYPE mlship_predictions_in_progress gauge",
            f"mlship_predictions_in_progress {self.in_progress}",
            "# HELP mlship_model_ready 1 when the model is loaded and warmed up.",
            "# TYPE mlship_model_ready gauge",
            f"mlship_model_ready {self.ready}",
        ]
        return "\n".join(out) + "\n"
