"""The discrete-event model against queueing theory's closed forms, and its scheduling rules."""

from __future__ import annotations

import math
import statistics

import pytest
import simpy

from loadtest.arrivals import Poisson, Times, Users
from loadtest.autoscale import ScalerSpec
from loadtest.sim import Pool, PoolSpec, PoolStats, Scenario, ServiceCurve, WorkSize, simulate

FLAT = ServiceCurve(((1.0, 1.0),))  # one second of mean work per job, whatever the load: service rate 1


def erlang_c(servers: int, load: float) -> float:
    """Probability that an arrival waits in M/M/c (``load`` = lambda / mu, in Erlangs)."""
    rho = load / servers
    top = load**servers / math.factorial(servers) / (1 - rho)
    return top / (sum(load**k / math.factorial(k) for k in range(servers)) + top)


def fixed_pool(replicas: int, slots: int = 1, curve: ServiceCurve = FLAT, work: str = "exp") -> PoolSpec:
    return PoolSpec("p", slots, curve, ScalerSpec(mode="none", fixed_replicas=replicas, scrape_interval_s=0),
                    WorkSize(work))


def run(pool: PoolSpec, rate: float, duration: float, seed: int = 7) -> PoolStats:
    return simulate(Scenario((pool,), (Poisson(rate),), duration, seed=seed))["p"]


def mean_wait(stats: PoolStats) -> float:
    return statistics.fmean(job.start - job.arrival for job in stats.jobs)


def mean_sojourn(stats: PoolStats) -> float:
    return statistics.fmean(job.end - job.arrival for job in stats.jobs)


@pytest.fixture(scope="module")
def mm4() -> PoolStats:
    # M/M/4 at rho 0.7, ~280,000 jobs.
    return run(fixed_pool(4), 2.8, 100_000.0)


def test_erlang_c_helper_matches_a_textbook_value() -> None:
    # M/M/2 with a = 1: C = 1/3 (P(wait) = a^2 / (2 + ... ) worked by hand).
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho


def test_mm1_mean_wait_matches_the_closed_form() -> None:
    stats = run(fixed_pool(1), 0.5, 200_000.0)
    # Wq = rho / (mu - lambda) = 0.5 / 0.5.
    assert mean_wait(stats) == pytest.approx(1.0, rel=0.04)
    assert mean_sojourn(stats) == pytest.approx(2.0, rel=0.03)


def test_mmc_mean_wait_matches_erlang_c(mm4: PoolStats) -> None:
    expected = erlang_c(4, 2.8) / (4 * 1.0 - 2.8)  # Wq = C(c, a) / (c mu - lambda) = 0.357
    assert expected == pytest.approx(0.3572, abs=1e-4)
    assert mean_wait(mm4) == pytest.approx(expected, rel=0.04)
    assert mean_sojourn(mm4) == pytest.approx(expected + 1.0, rel=0.01)


def test_littles_law_holds(mm4: PoolStats) -> None:
    duration = 100_000.0
    lam = len(mm4.jobs) / duration
    assert lam == pytest.approx(2.8, rel=0.01)
    # L (time-average jobs in the system) = lambda x W, up to the jobs still inside at the end.
    assert mm4.job_seconds / duration == pytest.approx(lam * mean_sojourn(mm4), rel=0.002)


def test_c_slots_on_a_flat_curve_are_c_servers() -> None:
    # One worker with 4 slots and a speed that does not depend on the load is M/M/4 too: the same jobs, the same
    # times, as four one-slot workers.
    one = run(fixed_pool(1, slots=4), 2.8, 5_000.0)
    four = run(fixed_pool(4, slots=1), 2.8, 5_000.0)
    assert [job.end for job in one.jobs] == pytest.approx([job.end for job in four.jobs])


def test_processor_sharing_matches_mm1_ps() -> None:
    # S(n) = n seconds: the engine's throughput is 1 job/s however it is shared, so this is M/M/1-PS, whose mean
    # sojourn is 1 / (mu - lambda) = 2 s at lambda 0.5.
    curve = ServiceCurve(((1.0, 1.0), (2.0, 2.0)))
    stats = run(fixed_pool(1, slots=100_000, curve=curve), 0.5, 200_000.0)
    assert mean_wait(stats) == 0.0
    assert mean_sojourn(stats) == pytest.approx(2.0, rel=0.04)


def test_service_curve_interpolates_and_extrapolates() -> None:
    curve = ServiceCurve(((1.0, 0.264), (4.0, 0.885), (16.0, 3.9)))
    assert curve.seconds(1) == pytest.approx(0.264)
    assert curve.seconds(2) == pytest.approx(0.264 + (0.885 - 0.264) / 3)
    assert curve.seconds(10) == pytest.approx(0.885 + (3.9 - 0.885) / 2)
    assert curve.seconds(32) == pytest.approx(3.9 + (3.9 - 0.885) / 12 * 16)  # the last segment, continued
    assert curve.throughput(16) == pytest.approx(16 / 3.9)


def test_interactive_jobs_take_the_next_free_slot_before_batch() -> None:
    pool = fixed_pool(1, work="const")
    arrivals = (Times((0.0,) * 5, cls="batch"), Times((0.5,), cls="interactive"))
    stats = simulate(Scenario((pool,), arrivals, 100.0))["p"]
    interactive = next(job for job in stats.jobs if job.cls == "interactive")
    assert interactive.start == pytest.approx(1.0)  # right after the first batch job, ahead of four queued
    assert sorted(job.end for job in stats.jobs if job.cls == "batch") == pytest.approx([1.0, 3.0, 4.0, 5.0, 6.0])


def test_closed_loop_users_keep_one_job_each() -> None:
    # 3 users, 1 s jobs on one slot, no think time: always 3 jobs held, each answered in 3 s.
    stats = simulate(Scenario((fixed_pool(1, work="const"),), (Users(3, (0.0, 0.0)),), 300.0))["p"]
    assert stats.job_seconds / 300.0 == pytest.approx(3.0, abs=0.02)
    assert statistics.fmean(job.end - job.arrival for job in stats.jobs[10:]) == pytest.approx(3.0)


def test_a_removed_worker_drains_and_holds_its_gpu_until_done() -> None:
    env = simpy.Environment()
    spec = fixed_pool(1, slots=2, work="const")
    pool = Pool(env, spec, Scenario((spec,), (), 100.0))
    pool.scale_to(1, warm=True)
    env.run(until=0.1)
    pool.submit("interactive")
    pool.submit("interactive")
    pool.submit("interactive")  # queued: both slots are taken
    env.run(until=0.5)
    pool.scale_to(0)
    env.run(until=100.0)
    pool.close()
    ends = sorted(job.end for job in pool.stats.jobs)
    assert ends == pytest.approx([1.1, 1.1])  # the two in flight finish; the queued one stays queued
    assert pool.queued() == 1
    assert pool.stats.gpu_seconds == pytest.approx(1.1)  # held until the drain ended, not freed at 0.5

