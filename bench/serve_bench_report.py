"""serve_bench.py's report: the table of every workload (req/s, rows/s, p50/p99, errors, the ratio to the
in-process ceiling), cold start and memory.
"""

from __future__ import annotations

import textwrap
from typing import Any

from serve_bench_cpus import pinning


# -- report ----------------------------------------------------------------------------------------
def fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    cfg = result["config"]
    print()
    print(f"machine   : {m['cpu_model']}, nproc {m['nproc']} (usable {m['usable_cpus']})")
    print(f"python    : {m['python']} on {m['platform']}")
    if m["load_average_1m_at_start"] is not None:
        print(f"load      : 1-min load average {m['load_average_1m_at_start']:.2f} at start "
              "(well above 0: other work competes for the CPUs)")
    versions = ", ".join(f"{k}\N{NO-BREAK SPACE}{v}" for k, v in m["versions"].items())
    wrapped = textwrap.fill(versions, 110, initial_indent="versions  : ", subsequent_indent=" " * 12)
    print(wrapped.replace("\N{NO-BREAK SPACE}", " "))
    server = "server on CPU {} (affinity " + str(result["server_affinity"]) + ")"
    print(f"pinning   : {pinning(m, server, 'baseline')}")
    print(f"run       : warm-up {cfg['warmup_s']:g} s + measure {cfg['duration_s']:g} s per workload, "
          f"max {cfg['max_requests']:,} requests; in-process {cfg['baseline_s']:g} s per ceiling"
          + (f"; serve: {', '.join(cfg['serve'])}" if cfg.get("serve") else ""))
    labels = {"predict_proba": "model.predict_proba(prebuilt float64 array) <- ceiling",
              "frame_predict_proba": "model.predict_proba(prebuilt DataFrame)",
              "frame_and_predict_proba": "DataFrame build + predict_proba",
              "mlship_hot_path": "orjson parse + validate + Predictor.predict + dump"}
    for name, info in result["models"].items():
        cs, ready, after = info["cold_start"], info["memory_ready"], info["memory_after_load"]
        print()
        print(f"{name}: {info['description']}; model input: {info.get('model_input') or '-'}")
        print(f"  cold start: process start -> first HTTP answer {cs['first_http_s']:.2f} s, "
              f"-> /readyz 200 {cs['readyz_s']:.2f} s, -> first 200 prediction {cs['first_prediction_s']:.2f} s")
        if ready and after:
            print(f"  memory    : PSS {ready['pss_mb']:.0f} MB when ready, {after['pss_mb']:.0f} MB after the "
                  f"workloads (RSS {ready['rss_mb']:.0f} / {after['rss_mb']:.0f} MB)")
        base = info["in_process"]
        sizes = sorted(base, key=int)
        print("  in-process on one core (calls/s; rows/s = calls/s x rows):")
        print(f"    {'':56}" + "".join(f"{f'{s} row' + ('s' if int(s) > 1 else ''):>12}" for s in sizes))
        for key, label in labels.items():
            if key in base[sizes[0]]:
                print(f"    {label:56}" + "".join(f"{fmt_rate(base[s][key]):>12}" for s in sizes))
        if (info["in_process_other_cpu"] or 0) > 0.05:
            print(f"  !! other processes or the hypervisor took {fmt_pct(info['in_process_other_cpu'])} of the "
                  "baseline's CPU: the ceilings read low")
    print()
    cols = (f"{'model':<6}{'workload':<14}{'conc':>5}{'req/s':>9}{'rows/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
            f"{'errors':>7}{'in-process ceiling':>21}{'ratio':>7}{'srv cpu':>8}{'gen cpu':>8}{'rows/cpu-s':>11}"
            f"{'rows/call':>10}")
    print(cols)
    print("-" * len(cols))
    for w in result["workloads"]:
        ceiling = w["in_process_calls_per_s"]
        if w["rows_per_request"] == 1:
            ceil_text = f"{fmt_rate(ceiling)} calls/s"
        else:
            ceil_text = f"{fmt_rate(ceiling * w['rows_per_request'])} rows/s"
        print(f"{w['model']:<6}{w['workload']:<14}{w['concurrency']:>5}{fmt_rate(w['req_per_s']):>9}"
              f"{fmt_rate(w['rows_per_s']):>10}{w['p50_ms']:>8.2f}{w['p99_ms']:>8.2f}{w['errors']:>7}"
              f"{ceil_text:>21}{w['ratio']:>7.2f}{fmt_pct(w['server_cpu']):>8}"
              f"{fmt_pct(w['generator_cpu']):>8}"
              f"{fmt_rate(w['rows_per_s'] / w['server_cpu']) if w['server_cpu'] else '-':>11}"
              f"{format(w['rows_per_model_call'], '.1f') if w.get('rows_per_model_call') else '-':>10}")
    print()
    print("ratio = server rows/s / in-process predict_proba rows/s on a prebuilt array (same core count: 1); above")
    print("1 when the server coalesces concurrent requests into fewer model calls. srv/gen cpu = share of one core")
    print("used in the measurement window; rows/cpu-s = rows/s / srv cpu (what one whole core would serve: steadier")
    print("than rows/s when other work shares the core); rows/call = mean rows per model call")
    print("(mlship_model_batch_rows). Numbers move +-30% between runs: compare rows of one run.")
    for w in result["workloads"]:
        tag = f"{w['model']} {w['workload']} c={w['concurrency']}"
        if w["errors"]:
            print(f"!! {tag}: {w['errors']} errors: statuses {w['statuses']}, "
                  f"transport {w['transport_failures']}")
        if w["generator_cpu"] > 0.9 and (w["server_cpu"] or 0) < 0.9:
            print(f"!! {tag}: the load generator used {fmt_pct(w['generator_cpu'])} of its core "
                  "and may be the bottleneck")
        noise = (w["other_on_server_cpu"] or 0) + (w["steal_on_server_cpu"] or 0)
        if noise > 0.05:
            print(f"!! {tag}: other processes or the hypervisor took {fmt_pct(noise)} of the "
                  "server's CPU\n   during the measurement: expect lower, noisier numbers")
        if w["hit_max_requests"]:
            print(f"!! {tag}: stopped at --max-requests before the time ran out")
