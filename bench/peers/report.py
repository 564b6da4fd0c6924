"""The peer bench's numbers: medians over the rounds, the markdown table and the notes under it."""

from __future__ import annotations

import math
import statistics
import textwrap
from typing import Any

import serve_bench
from servers import Suite


# -- aggregation -----------------------------------------------------------------------------------
def median_of(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(known) if known else None


def round_ceiling(this_round: dict[str, Any], key: str) -> float | None:
    """The best of a round's ceiling samples: taken at its start and before each server starts."""
    return max((s[key] for s in this_round["ceiling_samples"] if key in s), default=None)


def model_keys(suite: Suite) -> list[str]:
    return list(dict.fromkeys(p.model for p in suite.points))


def summarize(suite: Suite, rounds: list[dict[str, Any]], names: list[str],
              not_installed: dict[str, str]) -> dict[str, Any]:
    """Median over the rounds of every number, per server and point; errors kept as text."""
    ceilings = {p.key: median_of([round_ceiling(r, p.key) for r in rounds]) for p in suite.points}
    latency = {key: median_of([r.get("latency_ms", {}).get(key) for r in rounds]) for key in model_keys(suite)}
    servers: dict[str, Any] = {}
    for name in names:
        if name in not_installed:
            servers[name] = {"not_installed": not_installed[name]}
            continue
        runs = [r["servers"][name] for r in rounds if name in r["servers"]]
        row: dict[str, Any] = {"points": {}, "errors": []}
        for key in model_keys(suite):
            per_model = [run[key] for run in runs if key in run]
            row[f"cold_start_s_{key}"] = median_of([m.get("cold_start_s") for m in per_model])
            row[f"pss_mb_{key}"] = median_of([m.get("pss_mb") for m in per_model])
            row["errors"] += sorted({f"{key}: {m['error'].splitlines()[0]}" for m in per_model if "error" in m})
        for p in suite.points:
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
            cell["rows_per_cpu_s"] = median_of([d["rows_per_s"] / d["server_cpu"] for d in ok if d["server_cpu"]])
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
    return {"ceilings_rows_per_s": ceilings, "in_process_latency_ms": latency, "servers": servers}


# -- report ----------------------------------------------------------------------------------------
def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_pair(values: list[float | None], fmt: str) -> str:
    return " / ".join("-" if v is None else format(v, fmt) for v in values)


def table(suite: Suite, summary: dict[str, Any], names: list[str]) -> list[list[str]]:
    keys = model_keys(suite)
    head = ["server"]
    for p in suite.points:
        unit = "req/s" if p.rows == 1 else "rows/s"
        head += [f"{p.model} {p.rows}r c{p.concurrency} {unit}", "p50/p99 ms", "x ceil", "x mlship"]
    head += [f"cold start s {' / '.join(keys)}", f"PSS MB {' / '.join(keys)}"]
    rows = [head]
    ceiling = [suite.ceiling]
    for p in suite.points:
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
        for p in suite.points:
            cell = row["points"].get(p.key)
            if cell is None or "failed" in cell:
                line += [cell["failed"] if cell else "failed" if row["errors"] else "-", "-", "-", "-"]
                continue
            rate = cell["req_per_s"] if p.rows == 1 else cell["rows_per_s"]
            flag = " !" if cell["errors"] else ""
            line += [serve_bench.fmt_rate(rate) + flag, f"{fmt_ms(cell['p50_ms'])} / {fmt_ms(cell['p99_ms'])}",
                     fmt_ratio(cell["ceiling_ratio"]), fmt_ratio(cell["mlship_ratio"])]
        line += [fmt_pair([row[f"cold_start_s_{k}"] for k in keys], ".2f"),
                 fmt_pair([row[f"pss_mb_{k}"] for k in keys], ".0f")]
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


def headline(suite: Suite, summary: dict[str, Any], names: list[str]) -> list[str]:
    """Per model: mlship over the best peer at the highest 1-row concurrency (the issue's goal for tensors: >= 3x),
    and mlship's c=1 p50 against the model's own call in this process on one instance (no HTTP)."""
    lines = []
    servers = summary["servers"]
    peers = [n for n in names if not n.startswith("mlship") and "points" in servers[n]]
    for key in model_keys(suite):
        busy = max((p for p in suite.points if p.model == key and p.rows == 1), key=lambda p: p.concurrency)
        mine = servers.get("mlship", {}).get("points", {}).get(busy.key, {})
        for what, unit, field in (("req/s", "req/s", "req_per_s"),
                                  ("per second of the server's CPU", "req/cpu-s", "rows_per_cpu_s")):
            rates = {n: servers[n]["points"][busy.key][field] for n in peers
                     if servers[n]["points"].get(busy.key, {}).get(field)}
            if mine.get(field) and rates:
                best = max(rates, key=lambda n: rates[n])
                lines.append(f"{key} 1 row c={busy.concurrency}, {what}: mlship {serve_bench.fmt_rate(mine[field])} "
                             f"{unit} = {mine[field] / rates[best]:.2f}x the best peer ({best}, "
                             f"{serve_bench.fmt_rate(rates[best])} {unit})")
        lone = next((p for p in suite.points if p.model == key and p.rows == 1 and p.concurrency == 1), None)
        floor = summary["in_process_latency_ms"].get(key)
        if lone is None or floor is None:
            continue
        p50s = [f"{n} {fmt_ms(servers[n]['points'][lone.key]['p50_ms'])} ms"
                for n in names if "p50_ms" in servers[n].get("points", {}).get(lone.key, {})]
        lines.append(f"{key} 1 row c=1 p50: {', '.join(p50s)}; the model's own call in-process on one instance "
                     f"{floor:.3f} ms")
    return lines


def print_report(suite: Suite, result: dict[str, Any]) -> None:
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
    print(f"models  : {'; '.join(result['models'])}; same model file for every server")
    for name, v in result["venvs"].items():
        versions = ", ".join(f"{k} {x}" for k, x in v["versions"].items())
        how = "reused" if v["reused"] else f"built in {v['install_s']:.0f} s"
        print(f"venv    : {name} ({how}): " + (versions if v["python"] else f"NOT INSTALLED: {v['error']}"))
    print(f"main    : {', '.join(f'{k} {x}' for k, x in m['versions'].items())}")
    if result.get("incomplete"):
        print(f"!! incomplete run: {result['incomplete']}; the table has what was measured")
    print()
    names = result["servers_run"]
    print_markdown(table(suite, result["summary"], names))
    print()
    for line in headline(suite, result["summary"], names):
        print(f"- {line}")
    print()
    print("rate = completed 200 responses per second (x rows per request for rows/s); x ceil = server rows/s / "
          "the in-process row's rows/s\n(the model's own call, one core, no HTTP); x mlship = server rows/s / "
          "mlship rows/s on the same point (compare within this run:\n+-30% between runs). '!' after a rate: some "
          "requests failed (see below). PSS: whole server process tree after its load.")
    print()
    for name in names:
        print(f"- {name}: {suite.peers[name].config}")
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


