"""``make bench`` validate: the capacity planner's prediction against the live local stack, on the same trace.

    python -m loadtest.validate            # the whole validation, about 6 minutes on a 2-core machine
    python -m loadtest.validate --quick    # one short load and a short scaler run (about 2 minutes)

The live side is ``loadtest.stack.LocalStack`` with the instant engine: each job holds one of a worker's
``SLOTS`` slots for ``DELAY_S`` seconds, whatever else runs, so the engine curve is flat, S(n) = the delay. The
planner (``loadtest.sim``) is given the same trace (generated once by ``loadtest.arrivals``, replayed through the
gateway's HTTP API at its timestamps) and the same service model. What it cannot know is measured in the same
run, just before each load, and never fitted to the waits:

- the **service time**: how long a job holds a slot (delay + claim + bookkeeping), from a saturation burst
  (``6 x slots`` jobs at once: the start times rise by one service time per round);
- the **claim overhead**: the wait of a job that finds a free slot (sequential probes at low load), added to
  every predicted wait;
- the **cold start** of each worker the scaler run starts (process start -> /healthz 200), given to the model
  in start order (``PoolSpec.cold_starts``): on a busy machine they range from 1 to 10 s.

Loads: Poisson arrivals whose rate alternates between 10% of the fixed pool's capacity for 12 s and a burst
for 6 s, at mean utilisations 0.5, 0.7 and 0.9 of the pool (bursts at 1.3, 1.9 and 2.5 x capacity). Steady
Poisson traffic would not do: below ~0.8 most jobs find a free slot, the P50 wait is the claim overhead (a few
ms) and a percentage error of it means nothing, while above that a 1% error in the service time moves the
waits by 10% or more. In bursts most jobs queue, and waits of seconds come from the backlog.

The scaler run starts at one warm worker; ``loadtest.replay.scale_loop`` reads queued + running from the
gateway's /metrics (the janitor refreshes the gauges every ``JANITOR_S``; that is the "scrape") and applies
``loadtest.autoscale.Hpa`` with the chart's HPA settings (``helm/vlq/values.yaml``, mode hpa, 1-3 workers)
with every period and window divided by ``TIME_SCALE``; the planner runs the same HPA on the same trace.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import simpy

from loadtest import arrivals
from loadtest.arrivals import Arrival, Stages, Times
from loadtest.autoscale import Hpa, Policy, Rules, ScalerSpec
from loadtest.measure import Check, fmt, table
from loadtest.plan import percentile
from loadtest.replay import Answer, WorkerSet, burst, new_client, replay, scale_loop
from loadtest.scenario import chart_values, deep_merge, scaler_from
from loadtest.sim import PoolSpec, Scenario, ServiceCurve, simulate
from loadtest.stack import ROOT, LocalStack

GOAL_MAPE = 15.0  # percent, on P50 and on P95 wait (the goal)
DELAY_S = 0.5  # the instant engine's time per job
SLOTS = 2  # VLQ_WORKER_MAX_INFLIGHT
FIXED_WORKERS = 2
UTILISATIONS = (0.5, 0.7, 0.9)  # mean load of the fixed pool, one run each
LULL_S, BURST_S, LULL_SHARE, CYCLES = 12.0, 6.0, 0.1, 3
SCALER_STAGES = ((15.0, 14.0), (45.0, 1.0)) * 2  # (seconds, jobs/s): bursts above even 3 workers' 12 jobs/s
TIME_SCALE = 15.0  # the chart's HPA periods and windows are divided by this (sync 15 s -> 1 s)
JANITOR_S = 0.1  # VLQ_GATEWAY_JANITOR_INTERVAL_S: how stale the scaler's metric may be (the "scrape")
PROBES = 6
CALIBRATION_ROUNDS = 6


@dataclass(frozen=True)
class Load:
    """One validation run: its trace, and the autoscaler (mode none: a fixed pool)."""

    name: str
    spec: Arrival
    duration_s: float
    scaler: ScalerSpec
    seed: int


@dataclass(frozen=True)
class Inputs:
    """What the model is told about the live stack, measured just before the run."""

    service_s: float
    overhead_s: float
    cold_start_s: float = 0.0
    cold_starts: tuple[float, ...] = ()  # each worker the run started, in order


@dataclass(frozen=True)
class Outcome:
    """Predicted and measured waits and replica timelines of one run."""

    load: Load
    inputs: Inputs
    predicted: list[float]
    measured: list[float]
    lags: list[float]
    predicted_timeline: list[tuple[float, int, int]]
    measured_timeline: list[tuple[float, int, int]]


def burst_stages(utilisation: float, capacity: float, cycles: int = CYCLES) -> Stages:
    """Lulls at ``LULL_SHARE`` of capacity then bursts, with the mean rate ``utilisation`` x capacity."""
    peak = (utilisation * (LULL_S + BURST_S) - LULL_SHARE * LULL_S) / BURST_S
    return Stages(((LULL_S, LULL_SHARE * capacity), (BURST_S, peak * capacity)) * cycles)


def trace(spec: Arrival, duration_s: float, seed: int) -> tuple[float, ...]:
    """The arrival times the planner's arrival stream draws for this seed (the trace both sides get)."""
    env = simpy.Environment()
    times: list[float] = []
    arrivals.start(env, lambda _cls, _done: times.append(env.now), spec, duration_s,
                   random.Random(f"{seed}:arrivals:0"))
    env.run(until=duration_s)
    return tuple(times)


def scaled_scaler(spec: ScalerSpec, factor: float, scrape_s: float) -> ScalerSpec:
    """``spec`` with its sync period, stabilisation windows and policy periods divided by ``factor``."""

    def rules(old: Rules) -> Rules:
        policies = tuple(Policy(p.kind, p.value, p.period_s / factor) for p in old.policies)
        return Rules(old.window_s / factor, old.select, policies)

    return dataclasses.replace(spec, sync_period_s=spec.sync_period_s / factor, up=rules(spec.up),
                               down=rules(spec.down), scrape_interval_s=scrape_s)


def chart_scaler(slots: int = SLOTS, max_replicas: int = 3) -> ScalerSpec:
    """The chart's HPA for this pool (its defaults, mode hpa, 1-``max_replicas``), time-scaled."""
    values = deep_merge(chart_values(), {"autoscaling": {"mode": "hpa", "minReplicas": 1, "maxReplicas": max_replicas},
                                         "worker": {"maxInflight": slots}})
    return scaled_scaler(scaler_from(values, {}), TIME_SCALE, JANITOR_S)


def loads(quick: bool = False) -> list[Load]:
    """The fixed-pool loads and the scaler run."""
    capacity = FIXED_WORKERS * SLOTS / DELAY_S
    fixed = ScalerSpec(mode="none", fixed_replicas=FIXED_WORKERS, scrape_interval_s=0)
    cycles = 1 if quick else CYCLES
    runs = [Load(f"fixed {FIXED_WORKERS} workers, utilisation {u:g}", burst_stages(u, capacity, cycles),
                 (LULL_S + BURST_S) * cycles, fixed, seed=index + 1)
            for index, u in enumerate(UTILISATIONS[-1:] if quick else UTILISATIONS)]
    stages = SCALER_STAGES[:2] if quick else SCALER_STAGES
    runs.append(Load("scaler 1-3 workers (chart HPA, time / 15)", Stages(stages), sum(s for s, _ in stages),
                     chart_scaler(), seed=11))
    return runs


def service_time(starts: Sequence[float], slots: int) -> float:
    """Seconds a job holds a slot, from a saturation burst: the least-squares slope of start time on round.

    With ``slots`` slots busy, the k-th job (by start) starts in round k // slots, one service time after the
    job of the round before on the same slot.
    """
    ordered = sorted(starts)
    rounds = [index // slots for index in range(len(ordered))]
    mean_x, mean_y = statistics.fmean(rounds), statistics.fmean(ordered)
    num = sum((x - mean_x) * (y - mean_y) for x, y in zip(rounds, ordered, strict=True))
    return num / sum((x - mean_x) ** 2 for x in rounds)


def predict(load: Load, times: Sequence[float], inputs: Inputs,
            slots: int = SLOTS) -> tuple[list[float], list[tuple[float, int, int]]]:
    """The planner's waits (plus the measured claim overhead) and replica timeline for this trace."""
    pool = PoolSpec("workers", slots, ServiceCurve(((1.0, inputs.service_s),)), load.scaler,
                    cold_start_s=inputs.cold_start_s, cold_starts=inputs.cold_starts)
    stats = simulate(Scenario((pool,), (Times(tuple(times)),), load.duration_s, sample_s=0.25))["workers"]
    if len(stats.jobs) != len(times):
        raise RuntimeError(f"the model finished {len(stats.jobs)} of {len(times)} jobs")
    waits = [job.start - job.arrival + inputs.overhead_s for job in stats.jobs]
    return waits, [(t, replicas, ready) for t, replicas, ready, _, _ in stats.samples]


def ape(predicted: float, measured: float) -> float:
    """Absolute percentage error of a prediction."""
    return abs(predicted - measured) / measured * 100


def step_at(timeline: Sequence[tuple[float, int, int]], at: float, column: int = 1) -> int:
    """The value of a step function (time-ordered change points) at ``at``."""
    value = timeline[0][column]
    for point in timeline:
        if point[0] > at:
            break
        value = point[column]
    return int(value)


def time_mean(timeline: Sequence[tuple[float, int, int]], end: float, column: int = 1) -> float:
    """Time-weighted mean of a step function over [0, ``end``]."""
    total = 0.0
    for (t, *_), following in zip(timeline, [*timeline[1:], None], strict=True):
        stop = min(end, following[0] if following else end)
        if stop > t:
            total += step_at(timeline, t, column) * (stop - t)
    return total / end


async def _calibrate(client: httpx.AsyncClient, workers: WorkerSet, label: str) -> Inputs:
    """Claim overhead from probes one at a time, service time from a burst that fills every slot for 6 rounds."""
    probes = []
    for index in range(PROBES):
        probes.extend(await burst(client, 1, f"{label} probe {index}"))
        await asyncio.sleep(0.2)
    slots = workers.replicas * SLOTS
    saturated = await burst(client, CALIBRATION_ROUNDS * slots, f"{label} calibration")
    return Inputs(service_time([a.started_at for a in saturated], slots),
                  statistics.median(a.wait_s for a in probes))


def _cold_starts(workers: WorkerSet, since: float) -> list[float | None]:
    """Cold starts of the workers spawned since ``since`` (``time.monotonic()``) in start order; None: stopped
    before it was ready."""
    every = sorted([*workers.workers, *workers.draining, *workers.retired], key=lambda w: w.spawned)
    return [w.cold_start_s for w in every if w.spawned >= since]


def _measured_cold(starts: Sequence[float | None], default: float) -> tuple[float, tuple[float, ...]]:
    """The mean of the measured cold starts (``default`` if none), and the sequence with it for the unknown."""
    known = [start for start in starts if start is not None]
    mean = statistics.fmean(known) if known else default
    return mean, tuple(mean if start is None else start for start in starts)


async def _run_load(client: httpx.AsyncClient, workers: WorkerSet, load: Load,
                    initial_cold: float) -> tuple[Inputs, list[Answer], list[tuple[float, int, int]]]:
    scaling = load.scaler.mode != "none"
    workers.scale_to(load.scaler.initial_replicas)
    await workers.settle()
    inputs = await _calibrate(client, workers, load.name)
    times = trace(load.spec, load.duration_s, load.seed)
    began = time.monotonic()
    workers.restart_clock()
    scaler = asyncio.create_task(scale_loop(client, workers, Hpa(load.scaler), load.scaler.sync_period_s)
                                 if scaling else asyncio.sleep(0))
    try:
        answers = await replay(client, times, load.name, t0=workers.t0)
    finally:
        scaler.cancel()
    mean, each = _measured_cold(_cold_starts(workers, began), initial_cold)
    return dataclasses.replace(inputs, cold_start_s=mean, cold_starts=each), answers, list(workers.timeline)


async def measure(stack: LocalStack, runs: list[Load]) -> list[Outcome]:
    """Run every load on the stack (it has no worker yet: the runs start their own); predict each."""
    async with new_client(stack.base_url) as client:
        workers = WorkerSet(stack)
        watcher = asyncio.create_task(workers.watch(client))
        try:
            workers.scale_to(FIXED_WORKERS)
            await workers.settle()
            initial_cold, _ = _measured_cold(_cold_starts(workers, 0.0), 0.0)
            outcomes = []
            for load in runs:
                inputs, answers, timeline = await _run_load(client, workers, load, initial_cold)
                times = [a.at for a in answers]
                predicted, predicted_timeline = predict(load, times, inputs)
                outcomes.append(Outcome(load, inputs, predicted, [a.wait_s for a in answers],
                                        [a.lag_s for a in answers], predicted_timeline, timeline))
                print(f"  {load.name}: {len(answers)} jobs", flush=True)
        finally:
            watcher.cancel()
    return outcomes


def _wait_rows(outcomes: Sequence[Outcome]) -> list[list[str]]:
    rows = []
    for o in outcomes:
        queued = sum(1 for w in o.measured if w > 0.05) / len(o.measured)
        cells = [o.load.name, str(len(o.measured)), f"{queued:.0%}"]
        for q in (50, 95):
            pred, meas = percentile(o.predicted, q), percentile(o.measured, q)
            cells += [fmt(pred), fmt(meas), f"{ape(pred, meas):.1f}%"]
        rows.append(cells)
    return rows


def _input_rows(outcomes: Sequence[Outcome]) -> list[list[str]]:
    return [[o.load.name, f"{o.inputs.service_s * 1000:.1f}", f"{o.inputs.overhead_s * 1000:.1f}",
             " ".join(f"{start:.1f}" for start in o.inputs.cold_starts) or "-",
             f"{percentile(o.lags, 50) * 1000:.1f} / {percentile(o.lags, 99) * 1000:.1f}"] for o in outcomes]


def _disturbed(outcomes: Sequence[Outcome], limit_s: float = 0.05) -> str:
    late = [o.load.name for o in outcomes if percentile(o.lags, 99) > limit_s]
    if not late:
        return ""
    return (f"\n**Disturbed:** the client sent 1% of the requests over {limit_s * 1000:.0f} ms late in: "
            f"{'; '.join(late)}. The machine was busy (another process took the CPU); those runs measure it too.")


def _timeline_rows(o: Outcome, every_s: float = 5.0) -> list[list[str]]:
    rows = []
    at = 0.0
    while at <= o.load.duration_s:
        rows.append([f"{at:g}", *(f"{step_at(tl, at)} ({step_at(tl, at, 2)})"
                                  for tl in (o.predicted_timeline, o.measured_timeline))])
        at += every_s
    return rows


def mape(outcomes: Sequence[Outcome], q: float) -> float:
    """Mean absolute percentage error of the ``q``-th percentile wait over the runs (NaN for none)."""
    if not outcomes:
        return math.nan
    return statistics.fmean(ape(percentile(o.predicted, q), percentile(o.measured, q)) for o in outcomes)


def report(outcomes: Sequence[Outcome]) -> list[Check]:
    """Print the tables; the checks against the goal."""
    print(f"\n## Planner validation: predicted vs measured queue wait (instant engine {DELAY_S} s/job, "
          f"{SLOTS} slots per worker)\n")
    print(table(["run", "jobs", "queued > 50 ms", "P50 predicted s", "measured s", "error",
                 "P95 predicted s", "measured s", "error"], _wait_rows(outcomes)))
    print("\nEvery load is Poisson bursts, so most jobs queue (third column): under steady Poisson below ~0.8 most "
          "jobs find a free slot, the P50 wait is the few-ms claim and its percentage error means nothing.")
    fixed = [o for o in outcomes if o.load.scaler.mode == "none"]
    print(f"\nMAPE, fixed pool only ({len(fixed)} loads): P50 {mape(fixed, 50):.1f}%, P95 {mape(fixed, 95):.1f}%; "
          f"all {len(outcomes)} runs: P50 {mape(outcomes, 50):.1f}%, P95 {mape(outcomes, 95):.1f}% "
          f"(goal <= {GOAL_MAPE:g}%)\n")
    print(table(["run", "service time ms (delay + overhead)", "claim overhead ms", "cold starts s, in order",
                 "client lag p50 / p99 ms"], _input_rows(outcomes)))
    print(_disturbed(outcomes))
    checks = [Check(f"planner MAPE, P50 wait, {len(outcomes)} runs", mape(outcomes, 50), GOAL_MAPE, False, "%"),
              Check(f"planner MAPE, P95 wait, {len(outcomes)} runs", mape(outcomes, 95), GOAL_MAPE, False, "%")]
    for o in outcomes:
        if o.load.scaler.mode != "none":
            checks.append(_timeline_report(o))
    return checks


def _timeline_report(o: Outcome) -> Check:
    end = o.load.duration_s
    pred, meas = time_mean(o.predicted_timeline, end), time_mean(o.measured_timeline, end)
    print(f"\n### Replica timeline, {o.load.name}: replicas (ready), every 5 s\n")
    print(table(["t s", "predicted", "measured"], _timeline_rows(o)))
    peaks = [max(p[1] for p in tl if p[0] <= end) for tl in (o.predicted_timeline, o.measured_timeline)]
    rows = _timeline_rows(o)
    agree = sum(1 for _, predicted, measured in rows if predicted.split()[0] == measured.split()[0])
    print(f"\nreplicas agree at {agree} of {len(rows)} sample times; time-weighted mean replicas over {end:g} s: "
          f"predicted {pred:.2f}, measured {meas:.2f} ({ape(pred, meas):.1f}% apart); most replicas: predicted "
          f"{peaks[0]}, measured {peaks[1]}")
    return Check("scaler run: time-weighted mean replicas, error", ape(pred, meas), GOAL_MAPE, False, "%")


def run(quick: bool = False) -> list[Check]:
    """Start the stack (no worker: the runs start their own), measure every load, predict, report."""
    worker_env = {"VLQ_WORKER_INSTANT_DELAY_S": str(DELAY_S), "VLQ_WORKER_MAX_INFLIGHT": str(SLOTS)}
    with LocalStack(engine="instant", worker_env=worker_env, logdir=ROOT / "loadtest" / "reports" / "validate-logs",
                    gateway_env={"VLQ_GATEWAY_JANITOR_INTERVAL_S": str(JANITOR_S)}) as stack:
        stack.start(worker=False)
        outcomes = asyncio.run(measure(stack, loads(quick)))
    return report(outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short load and a short scaler run")
    for check in run(parser.parse_args().quick):
        print(" | ".join(check.row()))


if __name__ == "__main__":
    main()
