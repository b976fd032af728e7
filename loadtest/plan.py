"""Capacity planner: simulate vlq's queue, GPU workers and autoscaler for a scenario, and find the cheapest settings.

    python -m loadtest.plan                              # every loadtest/scenarios/*.yaml, with their searches
    python -m loadtest.plan loadtest/scenarios/burst.yaml --no-search --format json

For each scenario file (``loadtest.scenario`` reads it; ``loadtest.sim`` is the model, ``loadtest.autoscale``
the KEDA/HPA loops) it prints P50/P95/P99 queue wait and end-to-end latency, GPU-hours and cost, writes the
replica timeline as a PNG, and, when the file has a ``search:``, runs the grid it names and answers with the
cheapest settings whose latency percentile meets the ``target:`` (the worst over the search's seeds) with no job
left unfinished. The full JSON goes to ``--json`` (and to stdout with ``--format json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtest.scenario import Plan, Target, load
from loadtest.sim import CLASSES, PoolStats, Scenario, simulate

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
REPORTS = Path(__file__).resolve().parent / "reports" / "plan"
SEARCH_KEYS = ("minReplicas", "maxReplicas", "targetUtilization", "maxInflight")


def percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile (NumPy's default method); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _latency(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "p99": percentile(values, 99),
            "mean": statistics.fmean(values) if values else math.nan}


def _classes(stats: PoolStats, warmup_s: float) -> dict[str, Any]:
    jobs = [job for job in stats.jobs if job.arrival >= warmup_s]
    out: dict[str, Any] = {}
    for cls in (*CLASSES, "all"):
        chosen = [job for job in jobs if cls in ("all", job.cls)]
        if chosen:
            out[cls] = {"jobs": len(chosen), "wait_s": _latency([j.start - j.arrival for j in chosen]),
                        "e2e_s": _latency([j.end - j.arrival for j in chosen])}
    return out


def _replicas(stats: PoolStats) -> dict[str, float]:
    counts = [sample[1] for sample in stats.samples]
    return {"max": max(counts, default=0), "mean": statistics.fmean(counts) if counts else 0.0,
            "min": min(counts, default=0)}


def summarize(stats: dict[str, PoolStats], scenario: Scenario, price: float) -> dict[str, Any]:
    """The JSON summary of one simulation: latency by class, replicas, GPU-hours, cost, Little's law check."""
    pools: dict[str, Any] = {}
    for spec in scenario.pools:
        pool = stats[spec.name]
        gpu_hours = pool.gpu_seconds / 3600
        sojourns = [job.end - job.arrival for job in pool.jobs]
        rate = len(sojourns) / scenario.duration_s
        scaler = spec.scaler
        pools[spec.name] = {
            "settings": {"mode": scaler.mode, "minReplicas": scaler.keda_min if scaler.mode == "keda" else
                         scaler.hpa_min, "maxReplicas": scaler.max_replicas, "targetJobsPerReplica": scaler.target,
                         "maxInflight": spec.max_inflight, "coldStartSeconds": spec.cold_start_s},
            "latency": _classes(pool, scenario.warmup_s), "replicas": _replicas(pool),
            "arrived": pool.arrivals, "unfinished": pool.arrivals - len(pool.jobs),
            "gpu_hours": round(gpu_hours, 3), "cost": round(gpu_hours * price, 2),
            "little": {"L": pool.job_seconds / scenario.duration_s,
                       "lambda_W": rate * statistics.fmean(sojourns) if sojourns else 0.0},
        }
    total = sum(pool["gpu_hours"] for pool in pools.values())
    hours = scenario.duration_s / 3600
    return {"duration_s": scenario.duration_s, "gpu_hours": round(total, 3), "cost": round(total * price, 2),
            "cost_per_hour": round(total * price / hours, 2), "price_per_gpu_hour": price, "pools": pools}


def measured(summary: Mapping[str, Any], target: Target, first_pool: str) -> float:
    """The value the target is checked against (inf when jobs were left unfinished or none were measured)."""
    pool = summary["pools"][target.pool or first_pool]
    if pool["unfinished"]:
        return math.inf
    latency = pool["latency"].get(target.cls or "all")
    if latency is None:
        return math.inf
    value = float(latency["e2e_s" if target.metric == "e2e" else "wait_s"][f"p{target.percentile:g}"])
    return value if math.isfinite(value) else math.inf


def plot(stats: dict[str, PoolStats], path: Path, title: str) -> None:
    """Replicas, ready workers and jobs held (queued + running) over time, one panel per pool."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a build machine
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(stats), 1, figsize=(10, 3.2 * len(stats)), squeeze=False)
    for axis, (name, pool) in zip(axes[:, 0], stats.items(), strict=True):
        minutes = [s[0] / 60 for s in pool.samples]
        axis.step(minutes, [s[1] for s in pool.samples], where="post", label="replicas (pods, GPUs held)")
        axis.step(minutes, [s[2] for s in pool.samples], where="post", label="ready workers", linestyle="--")
        axis.set_ylabel(f"{name}: workers")
        axis.set_xlabel("minutes")
        jobs = axis.twinx()
        jobs.plot(minutes, [s[3] + s[4] for s in pool.samples], color="tab:gray", alpha=0.5, linewidth=0.8,
                  label="jobs held (queued + running)")
        jobs.set_ylabel("jobs held")
        lines = axis.get_legend_handles_labels()[0] + jobs.get_legend_handles_labels()[0]
        axis.legend(lines, [str(line.get_label()) for line in lines], loc="upper left", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def candidates(grid: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of the grid's values, invalid ones (min above max) left out."""
    keys = [key for key in SEARCH_KEYS if key in grid]
    for combo in itertools.product(*(list(grid[key]) for key in keys)):
        settings = dict(zip(keys, combo, strict=True))
        if int(settings.get("minReplicas", 1)) <= int(settings.get("maxReplicas", math.inf)):
            yield settings


def _floor_cost(plan: Plan, settings: Mapping[str, Any]) -> float:
    # Pods never go below minReplicas (0 with scale to zero), so this much is paid whatever the traffic.
    spec = next(p for p in plan.with_settings(_search_pool(plan), settings, plan.scenario.seed).pools
                if p.name == _search_pool(plan))
    scaler = spec.scaler
    floor = {"none": scaler.fixed_replicas, "keda": scaler.keda_min}.get(scaler.mode, scaler.hpa_min)
    return floor * spec.gpus_per_worker * plan.scenario.duration_s / 3600 * plan.price_per_gpu_hour


def _search_pool(plan: Plan) -> str:
    return str(plan.search.get("pool") or plan.scenario.pools[0].name)


def evaluate(plan: Plan, settings: Mapping[str, Any]) -> dict[str, Any]:
    """One candidate over the search's seeds: worst measured value, mean cost, and whether it meets the target."""
    if plan.target is None:
        raise ValueError(f"{plan.name}: a search needs a target")
    seeds = [int(seed) for seed in plan.search.get("seeds", [plan.scenario.seed])]
    values, costs = [], []
    for seed in seeds:
        scenario = plan.with_settings(_search_pool(plan), settings, seed)
        summary = summarize(simulate(scenario), scenario, plan.price_per_gpu_hour)
        values.append(measured(summary, plan.target, scenario.pools[0].name))
        costs.append(summary["cost"])
    worst = max(values)
    return {"settings": dict(settings), "value_s": round(worst, 3) if math.isfinite(worst) else None,
            "cost": round(statistics.fmean(costs), 2), "meets": worst <= plan.target.seconds}


def search(plan: Plan) -> dict[str, Any]:
    """The cheapest candidate that meets the target; a candidate whose floor cost exceeds the best is skipped."""
    ordered = sorted(candidates(plan.search), key=lambda s: _floor_cost(plan, s))
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for settings in ordered:
        if best is not None and _floor_cost(plan, settings) > best["cost"]:
            continue
        result = evaluate(plan, settings)
        tried.append(result)
        if result["meets"] and (best is None or (result["cost"], result["value_s"]) < (best["cost"], best["value_s"])):
            best = result
    return {"pool": _search_pool(plan), "grid": {k: list(plan.search[k]) for k in SEARCH_KEYS if k in plan.search},
            "evaluated": len(tried), "skipped": len(ordered) - len(tried), "best": best, "tried": tried}


def run_plan(plan: Plan, out: Path, do_search: bool = True) -> dict[str, Any]:
    """Simulate the scenario as written, plot it, and search when the file asks for it."""
    stats = simulate(plan.scenario)
    result: dict[str, Any] = {"name": plan.name, "description": plan.description,
                              "summary": summarize(stats, plan.scenario, plan.price_per_gpu_hour)}
    png = out / f"{plan.name}.png"
    plot(stats, png, f"{plan.name}: as written")
    result["plot"] = str(png)
    if plan.target is not None:
        target = plan.target
        result["target"] = {"seconds": target.seconds, "percentile": target.percentile, "metric": target.metric,
                            "class": target.cls, "pool": target.pool}
        value = measured(result["summary"], target, plan.scenario.pools[0].name)
        result["as_written_meets"] = value <= target.seconds
    if do_search and plan.search and plan.target is not None:
        result["search"] = search(plan)
        best = result["search"]["best"]
        if best is not None:
            scenario = plan.with_settings(result["search"]["pool"], best["settings"], plan.scenario.seed)
            best_png = out / f"{plan.name}-best.png"
            plot(simulate(scenario), best_png, f"{plan.name}: cheapest settings {best['settings']}")
            result["search"]["best_plot"] = str(best_png)
    return result


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def text_report(result: Mapping[str, Any]) -> str:
    """A few lines a person reads: latency by class, GPU-hours, cost and the search's answer."""
    summary = result["summary"]
    lines = [f"## {result['name']}: {summary['gpu_hours']} GPU-h, cost {summary['cost']} "
             f"over {summary['duration_s'] / 3600:.2f} h ({summary['cost_per_hour']}/h); plot {result['plot']}"]
    for name, pool in summary["pools"].items():
        lines.append(f"  pool {name} {pool['settings']}")
        lines.append(f"    replicas mean {pool['replicas']['mean']:.2f} max {pool['replicas']['max']}, "
                     f"{pool['arrived']} jobs, {pool['unfinished']} unfinished")
        for cls, data in pool["latency"].items():
            wait, e2e = data["wait_s"], data["e2e_s"]
            lines.append(f"    {cls:11} n={data['jobs']:6}  wait p50/p95/p99 {_fmt(wait['p50'])}/{_fmt(wait['p95'])}/"
                         f"{_fmt(wait['p99'])} s   e2e p50/p95/p99 {_fmt(e2e['p50'])}/{_fmt(e2e['p95'])}/"
                         f"{_fmt(e2e['p99'])} s")
    if "target" in result:
        t = result["target"]
        lines.append(f"  target: {t['metric']} p{t['percentile']:g} <= {t['seconds']} s ({t['class'] or 'all'}); "
                     f"as written: {'met' if result['as_written_meets'] else 'MISSED'}")
    found = result.get("search")
    if found:
        best = found["best"]
        answer = (f"cheapest meeting the target: {best['settings']} -> cost {best['cost']}, "
                  f"measured {best['value_s']} s" if best else "no candidate in the grid meets the target")
        lines.append(f"  search ({found['evaluated']} run, {found['skipped']} skipped by floor cost): {answer}")
    return "\n".join(lines)


def parse_sets(items: list[str]) -> dict[str, float]:
    """``--set minReplicas=0`` pairs; only the keys a search may change."""
    settings = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in SEARCH_KEYS or not value:
            raise SystemExit(f"--set takes KEY=VALUE with KEY one of {', '.join(SEARCH_KEYS)}; got {item!r}")
        settings[key] = float(value)
    return settings


def main(argv: list[str] | None = None) -> int:
    """Command line: scenario files (default: all shipped ones), output folder, JSON file and format."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", type=Path, help="scenario YAML files (default loadtest/scenarios/)")
    parser.add_argument("--out", type=Path, default=REPORTS, help="folder for the PNG plots")
    parser.add_argument("--json", type=Path, help="write the full JSON result here")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="what goes to stdout")
    parser.add_argument("--no-search", action="store_true", help="only simulate each scenario as written")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a setting of the searched pool as written ({', '.join(SEARCH_KEYS)})")
    opts = parser.parse_args(argv)
    files = opts.scenarios or sorted(SCENARIOS.glob("*.yaml"))
    overrides = parse_sets(opts.set)
    results = []
    for path in files:
        plan = load(path)
        if overrides:
            plan = replace(plan, scenario=plan.with_settings(_search_pool(plan), overrides, plan.scenario.seed))
        result = run_plan(plan, opts.out, not opts.no_search)
        results.append(result)
        if opts.format == "text":
            print(text_report(result), flush=True)
    document = json.dumps(results, indent=2, allow_nan=False, default=str)
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(document + "\n")
    if opts.format == "json":
        sys.stdout.write(document + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
