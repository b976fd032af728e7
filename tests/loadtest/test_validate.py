"""The planner's validation against the live stack: its pure parts, and a short live run of the whole path."""

from __future__ import annotations

import asyncio
import math
import statistics
import time

import pytest
import simpy

from loadtest import replay, validate
from loadtest.arrivals import Stages, Times
from loadtest.autoscale import Policy, ScalerSpec
from loadtest.plan import percentile
from loadtest.sim import Pool, PoolSpec, Scenario, ServiceCurve, simulate
from loadtest.stack import LocalStack
from loadtest.validate import Inputs, Load

EXPOSITION = """\
# HELP vlq_queue_depth Jobs waiting in the queue
# TYPE vlq_queue_depth gauge
vlq_queue_depth 7.0
vlq_queue_depth_bogus 100.0
vlq_queue_started_jobs{model="a"} 3.0
vlq_queue_started_jobs{model="b"} 1.0
vlq_queue_oldest_age_seconds 2.5
"""


def test_held_jobs_adds_queued_and_started_over_labels_only() -> None:
    assert replay.held_jobs(EXPOSITION) == 11.0
    assert replay.held_jobs("") == 0.0


def test_service_time_is_the_slope_of_starts_over_rounds() -> None:
    # Four slots with their own phases, 0.51 s per job, 6 rounds, a little jitter.
    phases = [0.0, 0.004, 0.009, 0.013]
    starts = [phase + r * 0.51 + (0.001 if (r + i) % 2 else -0.001)
              for r in range(6) for i, phase in enumerate(phases)]
    assert validate.service_time(starts, 4) == pytest.approx(0.51, abs=0.001)


def test_trace_is_what_the_simulator_draws_for_the_same_seed() -> None:
    spec = validate.burst_stages(0.7, 8.0)
    times = validate.trace(spec, 54.0, seed=3)
    assert times == validate.trace(spec, 54.0, seed=3)
    assert times != validate.trace(spec, 54.0, seed=4)
    pool = PoolSpec("p", 2, ServiceCurve(((1.0, 0.5),)), ScalerSpec(mode="none", fixed_replicas=2, scrape_interval_s=0))
    drawn = simulate(Scenario((pool,), (spec,), 54.0, seed=3))["p"]
    assert sorted(job.arrival for job in drawn.jobs) == pytest.approx(times)


def test_burst_stages_have_the_mean_utilisation_asked_for() -> None:
    spec = validate.burst_stages(0.9, 8.0, cycles=2)
    jobs = sum(seconds * rate for seconds, rate in spec.stages)
    seconds = sum(seconds for seconds, _ in spec.stages)
    assert jobs / seconds == pytest.approx(0.9 * 8.0)
    assert spec.stages[0] == (validate.LULL_S, validate.LULL_SHARE * 8.0)
    assert spec.stages[1][1] == pytest.approx(2.5 * 8.0)  # (0.9 * 18 - 0.1 * 12) / 6


def test_the_chart_scaler_is_the_charts_hpa_with_time_divided() -> None:
    spec = validate.chart_scaler(slots=2, max_replicas=3)
    assert (spec.mode, spec.min_replicas, spec.max_replicas, spec.target) == ("hpa", 1, 3, 2)
    assert spec.sync_period_s == pytest.approx(1.0)  # 15 s / 15
    assert spec.up.window_s == 0.0
    assert spec.up.policies == (Policy("Pods", 2, pytest.approx(4.0)),)  # 2 pods per 60 s
    assert spec.down.window_s == pytest.approx(20.0)  # 300 s
    assert spec.down.policies == (Policy("Pods", 1, pytest.approx(8.0)),)  # 1 pod per 120 s
    assert spec.scrape_interval_s == validate.JANITOR_S


def test_predict_adds_the_claim_overhead_to_the_models_waits() -> None:
    load = Load("batch", Times((0.0,) * 12), 1.0, ScalerSpec(mode="none", fixed_replicas=2, scrape_interval_s=0), 1)
    waits, timeline = validate.predict(load, [0.0] * 12, Inputs(service_s=0.5, overhead_s=0.01), slots=2)
    assert sorted(waits) == pytest.approx([0.01] * 4 + [0.51] * 4 + [1.01] * 4)
    assert timeline[0] == (0.0, 2, 2)


def test_step_functions_and_errors() -> None:
    timeline = [(0.0, 1, 1), (2.0, 3, 1), (3.0, 3, 3), (8.0, 2, 2)]
    assert [validate.step_at(timeline, t) for t in (0.0, 1.9, 2.0, 7.9, 8.0, 20.0)] == [1, 1, 3, 3, 2, 2]
    assert validate.step_at(timeline, 2.5, column=2) == 1
    # 2 s at 1, 6 s at 3, 2 s at 2 over 10 s.
    assert validate.time_mean(timeline, 10.0) == pytest.approx((2 * 1 + 6 * 3 + 2 * 2) / 10)
    assert validate.ape(1.1, 1.0) == pytest.approx(10.0)
    assert validate.ape(0.9, 1.0) == pytest.approx(10.0)


class FakeProc:
    def __init__(self) -> None:
        self.terminated = False

    def poll(self) -> int | None:
        return 0 if self.terminated else None

    def terminate(self) -> None:
        self.terminated = True


class FakeStack:
    def __init__(self) -> None:
        self.procs: list[FakeProc] = []

    def spawn_worker(self, name: str) -> tuple[FakeProc, str]:
        self.procs.append(FakeProc())
        return self.procs[-1], f"http://127.0.0.1:1/{name}"


def test_worker_set_removes_a_starting_worker_first_then_the_newest_ready() -> None:
    stack = FakeStack()
    workers = replay.WorkerSet(stack)  # type: ignore[arg-type]
    workers.scale_to(3)
    first, second, third = workers.workers
    first.ready, second.ready = time.monotonic() - 2, time.monotonic() - 1
    assert (workers.replicas, workers.ready) == (3, 2)
    workers.scale_to(2)
    assert third.proc.terminated and workers.draining == [third]
    workers.scale_to(1)
    assert second.proc.terminated and workers.workers == [first]
    assert [point[1:] for point in workers.timeline] == [(3, 0), (2, 2), (1, 1)]


def test_a_short_live_run_matches_the_model() -> None:
    # Two instant workers (2 slots, 0.5 s a job) take a 4 s burst at twice their capacity: ~64 jobs.
    load = Load("smoke", Stages(((4.0, 16.0),)), 4.0,
                ScalerSpec(mode="none", fixed_replicas=validate.FIXED_WORKERS, scrape_interval_s=0), seed=5)
    worker_env = {"VLQ_WORKER_INSTANT_DELAY_S": str(validate.DELAY_S),
                  "VLQ_WORKER_MAX_INFLIGHT": str(validate.SLOTS)}
    started = time.monotonic()
    with LocalStack(engine="instant", worker_env=worker_env) as stack:
        stack.start(worker=False)
        (outcome,) = asyncio.run(validate.measure(stack, [load]))
    assert time.monotonic() - started < 40
    assert len(outcome.measured) == len(validate.trace(load.spec, 4.0, 5)) > 40
    assert validate.DELAY_S < outcome.inputs.service_s < validate.DELAY_S * 1.2
    assert 0 < outcome.inputs.overhead_s < 0.05
    assert statistics.fmean(outcome.measured) > 1.0  # the burst queued
    for q in (50, 95):
        assert percentile(outcome.predicted, q) == pytest.approx(percentile(outcome.measured, q), rel=0.25)
    assert not math.isnan(validate.mape([outcome], 50))


def test_the_model_replays_measured_cold_starts_in_start_order() -> None:
    spec = PoolSpec("p", 1, ServiceCurve(((1.0, 1.0),)), ScalerSpec(mode="none"), cold_start_s=9.0,
                    cold_starts=(1.0, 2.0))
    env = simpy.Environment()
    pool = Pool(env, spec, Scenario((spec,), (), 100.0))
    pool.scale_to(2)

    def ready_at(until: float) -> int:
        env.run(until=until)
        return sum(1 for worker in pool.workers if worker.state == "ready")

    assert [ready_at(0.9), ready_at(1.1), ready_at(2.1)] == [0, 1, 2]
    pool.scale_to(3)  # the third start is past the recorded ones: cold_start_s
    assert [ready_at(10.9), ready_at(11.2)] == [2, 3]


def test_measured_cold_starts_fill_the_unknown_with_their_mean() -> None:
    assert validate._measured_cold([1.0, None, 3.0], 5.0) == (2.0, (1.0, 2.0, 3.0))
    assert validate._measured_cold([], 5.0) == (5.0, ())
