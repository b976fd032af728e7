"""Discrete-event model (SimPy) of vlq's queue and GPU workers, for the capacity planner (``loadtest.plan``).

A job arrives in its pool's queue for its class. A ready worker with a free slot (of ``max_inflight``) takes
it, from the ``interactive`` queue before ``batch``, as an RQ worker listening on both queues in that order
would; among workers with free slots the least loaded one takes it (Redis hands a list to the client blocked
longest, which spreads jobs over workers the same way). A worker's engine batches everything it holds: with n
jobs in flight each job advances at 1/S(n) of its work per second, where S(n) (seconds per job at n in flight)
is interpolated from a measured or derived curve and each job's work has mean 1 (processor sharing with a
speed that depends on the load). A new worker holds its GPU through a cold start before it takes jobs. On
scale-down the Deployment removes a starting pod first, then the most recently ready one, which stops taking
jobs and finishes the ones it holds (vlq's SIGTERM drain) before its GPU is freed. The autoscaler is
``loadtest.autoscale``; it reads the pool's jobs held (queued + running) as Prometheus scraped them last.

Arrival streams are ``loadtest.arrivals``; recorded traces are read by ``loadtest.traces``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from loadtest import arrivals, autoscale
from loadtest.arrivals import Arrival
from loadtest.autoscale import ScalerSpec

CLASSES = ("interactive", "batch")  # a free slot is filled from the first non-empty queue, in this order
STARTING, READY, DRAINING, GONE = "starting", "ready", "draining", "gone"
EPSILON = 1e-9  # slack on work already done, so float rounding never leaves a finished job running


@dataclass(frozen=True)
class ServiceCurve:
    """Seconds per job at n jobs in flight, (n, seconds) points interpolated linearly, extrapolated at both ends."""

    points: tuple[tuple[float, float], ...]

    def seconds(self, in_flight: int) -> float:
        """S(n): how long one job takes while n jobs share the engine."""
        pts = sorted(self.points)
        if len(pts) == 1:
            return pts[0][1]
        # The segment whose right end is at or past n; the last one beyond the table, the first one below it.
        index = next((i for i in range(len(pts) - 1) if in_flight <= pts[i + 1][0]), len(pts) - 2)
        (x0, y0), (x1, y1) = pts[index], pts[index + 1]
        return max(y0 + (y1 - y0) * (in_flight - x0) / (x1 - x0), 1e-6)

    def throughput(self, in_flight: int) -> float:
        """Jobs per second one worker completes with n jobs in flight."""
        return in_flight / self.seconds(in_flight)


@dataclass(frozen=True)
class WorkSize:
    """Distribution of a job's work, mean 1: const, exp, or lognormal with coefficient of variation ``cv``."""

    dist: str = "const"
    cv: float = 0.0

    def draw(self, rng: random.Random) -> float:
        """One job's work."""
        if self.dist == "exp":
            return rng.expovariate(1.0)
        if self.dist == "lognormal" and self.cv > 0:
            sigma2 = math.log(1 + self.cv**2)
            return rng.lognormvariate(-sigma2 / 2, math.sqrt(sigma2))
        return 1.0


@dataclass(frozen=True)
class PoolSpec:
    """One worker pool: its engine curve, slots, cold start, GPUs and autoscaler."""

    name: str
    max_inflight: int
    curve: ServiceCurve
    scaler: ScalerSpec
    work: WorkSize = WorkSize()
    cold_start_s: float = 0.0
    gpus_per_worker: int = 1
    # Cold starts of the workers started during the run, in start order (measured ones, replayed by
    # ``loadtest.validate``); workers past the end of it take ``cold_start_s``.
    cold_starts: tuple[float, ...] = ()


@dataclass(frozen=True)
class Scenario:
    """What to simulate: pools, arrivals, how long (arrivals stop at ``duration_s``), and the seed."""

    pools: tuple[PoolSpec, ...]
    arrivals: tuple[Arrival, ...]
    duration_s: float
    warmup_s: float = 0.0
    drain_s: float = 3600.0
    seed: int = 1
    sample_s: float = 15.0


class Job:
    """One job: when it arrived, started (took a slot) and ended."""

    __slots__ = ("arrival", "cls", "done", "end", "start", "tag", "work")

    def __init__(self, arrival: float, cls: str, work: float, done: simpy.Event | None = None) -> None:
        self.arrival, self.cls, self.work, self.done = arrival, cls, work, done
        self.start = self.end = math.nan
        self.tag = 0.0


@dataclass
class PoolStats:
    """What one pool recorded: finished jobs, the replica timeline and time integrals."""

    jobs: list[Job] = field(default_factory=list)
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)  # t, replicas, ready, queued, running
    gpu_seconds: float = 0.0
    job_seconds: float = 0.0  # integral of jobs in the system over [0, duration]: Little's law's L x T
    arrivals: int = 0


class Worker:
    """One worker pod: its state and the jobs on its engine."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.state = STARTING
        self.jobs: list[Job] = []
        self.vtime = 0.0  # work each job in flight has received since the worker started
        self.last = pool.env.now
        self.version = 0  # bumped on every change; an armed completion timer from an older version is stale
        self.ready_at = math.inf

    def advance(self, now: float) -> None:
        """Credit the work done since the last change at the current speed."""
        if self.jobs:
            self.vtime += (now - self.last) / self.pool.seconds[len(self.jobs)]
        self.last = now

    def add(self, job: Job) -> None:
        """Take a job into a free slot."""
        now = self.pool.env.now
        self.advance(now)
        job.start, job.tag = now, self.vtime + job.work
        self.jobs.append(job)
        self.arm()

    def arm(self) -> None:
        """Schedule the next completion at the current speed."""
        self.version += 1
        if not self.jobs:
            return
        left = max(min(job.tag for job in self.jobs) - self.vtime, 0.0)
        timer = self.pool.env.timeout(left * self.pool.seconds[len(self.jobs)])
        version = self.version
        timer.callbacks.append(lambda _event: self._complete(version))

    def _complete(self, version: int) -> None:
        if version != self.version:
            return
        now = self.pool.env.now
        self.advance(now)
        finished = [job for job in self.jobs if job.tag <= self.vtime + EPSILON]
        self.jobs = [job for job in self.jobs if job.tag > self.vtime + EPSILON]
        self.arm()
        self.pool.finished(self, finished)


class Pool:
    """A pool's queues and workers, as the autoscaler and the arrivals see it."""

    def __init__(self, env: simpy.Environment, spec: PoolSpec, scenario: Scenario) -> None:
        self.env, self.spec, self.end = env, spec, scenario.duration_s
        self.seconds = [0.0] + [spec.curve.seconds(n) for n in range(1, spec.max_inflight + 1)]
        self.queues: dict[str, deque[Job]] = {cls: deque() for cls in CLASSES}
        self.workers: list[Worker] = []  # starting or ready: the Deployment's replicas
        self.draining: list[Worker] = []
        self.stats = PoolStats()
        self.scraped = 0.0
        self.rng = random.Random(f"{scenario.seed}:work:{spec.name}")
        self._last_change = 0.0
        self._gpu_since = 0.0
        self._held = 0  # jobs in the system (queued + running)
        self._cold_started = 0

    @property
    def replicas(self) -> int:
        """Pods the Deployment counts: starting or ready."""
        return len(self.workers)

    def queued(self) -> int:
        """Jobs waiting in the queues."""
        return sum(len(queue) for queue in self.queues.values())

    def running(self) -> int:
        """Jobs on engines, draining workers included (they are still in RQ's started registry)."""
        return self._held - self.queued()

    def observed_metric(self, trigger: str) -> float:
        """Jobs held as the autoscaler reads them: Prometheus' last scrape, or RQ's list for the redis trigger."""
        if trigger == "redis":
            return float(self.queued())
        return self.scraped if self.spec.scaler.scrape_interval_s > 0 else float(self._held)

    def submit(self, cls: str, done: simpy.Event | None = None) -> None:
        """A job arrives."""
        self._integrate()
        self._held += 1
        self.stats.arrivals += 1
        self.queues[cls].append(Job(self.env.now, cls, self.spec.work.draw(self.rng), done))
        self._dispatch()

    def finished(self, worker: Worker, jobs: list[Job]) -> None:
        """Jobs a worker completed: record them, free the slots, let a drained worker go."""
        self._integrate()
        self._held -= len(jobs)
        for job in jobs:
            job.end = self.env.now
            self.stats.jobs.append(job)
            if job.done is not None:
                job.done.succeed()
        if worker.state == DRAINING and not worker.jobs:
            self._retire(worker)
        self._dispatch()

    def scale_to(self, replicas: int, warm: bool = False) -> None:
        """Set the Deployment's replicas: start workers (cold unless ``warm``), or remove pods as a ReplicaSet does."""
        self._account()
        while len(self.workers) < replicas:
            self._start_worker(warm)
        while len(self.workers) > replicas:
            self._remove(self._victim())

    def _start_worker(self, warm: bool) -> None:
        worker = Worker(self)
        self.workers.append(worker)
        if warm:
            self._ready(worker)
        else:
            recorded = self.spec.cold_starts[self._cold_started:self._cold_started + 1]
            self._cold_started += 1
            delay = recorded[0] if recorded else self.spec.cold_start_s
            self.env.timeout(delay).callbacks.append(lambda _event: self._ready(worker))

    def _ready(self, worker: Worker) -> None:
        if worker.state != STARTING:
            return  # removed while it was still starting
        worker.state, worker.ready_at, worker.last = READY, self.env.now, self.env.now
        self._dispatch()

    def _victim(self) -> Worker:
        starting = [w for w in self.workers if w.state == STARTING]
        # A ReplicaSet deletes not-ready pods first, then the ones ready for the shortest time.
        return starting[-1] if starting else max(self.workers, key=lambda w: w.ready_at)

    def _remove(self, worker: Worker) -> None:
        self.workers.remove(worker)
        if worker.jobs:
            worker.state = DRAINING
            self.draining.append(worker)
        else:
            worker.state = GONE

    def _retire(self, worker: Worker) -> None:
        self._account()
        worker.state = GONE
        self.draining.remove(worker)

    def _dispatch(self) -> None:
        while True:
            queue = next((q for q in self.queues.values() if q), None)
            if queue is None:
                return
            free = [w for w in self.workers if w.state == READY and len(w.jobs) < self.spec.max_inflight]
            if not free:
                return
            min(free, key=lambda w: len(w.jobs)).add(queue.popleft())

    def _integrate(self) -> None:
        now = min(self.env.now, self.end)
        self.stats.job_seconds += self._held * max(now - self._last_change, 0.0)
        self._last_change = max(now, self._last_change)

    def _account(self) -> None:
        """GPU time up to now (within the scenario's duration), before the number of pods changes."""
        now = min(self.env.now, self.end)
        pods = len(self.workers) + len(self.draining)
        self.stats.gpu_seconds += pods * self.spec.gpus_per_worker * max(now - self._gpu_since, 0.0)
        self._gpu_since = max(now, self._gpu_since)

    def close(self) -> None:
        """Settle the time integrals at the end of the arrivals."""
        self._integrate()
        self._account()

    def busy(self) -> bool:
        """Jobs still queued or running."""
        return self._held > 0

    def sample(self) -> None:
        """One point of the replica timeline."""
        ready = sum(1 for w in self.workers if w.state == READY)
        self.stats.samples.append((self.env.now, self.replicas, ready, self.queued(), self.running()))


def _scrape(env: simpy.Environment, pool: Pool) -> Generator[simpy.Event, Any, None]:
    # Prometheus keeps the gauge's last scraped value; the autoscaler sees nothing newer.
    while True:
        pool.scraped = float(pool.queued() + pool.running())
        yield env.timeout(pool.spec.scaler.scrape_interval_s)


def _sampler(env: simpy.Environment, pools: list[Pool], every: float) -> Generator[simpy.Event, Any, None]:
    while True:
        for pool in pools:
            pool.sample()
        yield env.timeout(every)


def simulate(scenario: Scenario) -> dict[str, PoolStats]:
    """Run the scenario: arrivals until ``duration_s``, then until every job ended (at most ``drain_s`` more)."""
    env = simpy.Environment()
    pools = {spec.name: Pool(env, spec, scenario) for spec in scenario.pools}
    first = scenario.pools[0].name
    for pool in pools.values():
        # The replicas there before the scenario starts are warm.
        pool.scale_to(pool.spec.scaler.initial_replicas, warm=True)
        if pool.spec.scaler.scrape_interval_s > 0:
            env.process(_scrape(env, pool))
        autoscale.start(env, pool, pool.spec.scaler)
    for index, spec in enumerate(scenario.arrivals):
        rng = random.Random(f"{scenario.seed}:arrivals:{index}")
        arrivals.start(env, pools[spec.pool or first].submit, spec, scenario.duration_s, rng)
    env.process(_sampler(env, list(pools.values()), scenario.sample_s))
    env.run(until=scenario.duration_s)
    for pool in pools.values():
        pool.close()
    limit = scenario.duration_s + scenario.drain_s
    while env.now < limit and any(pool.busy() for pool in pools.values()):
        env.run(until=min(env.now + 60.0, limit))
    return {name: pool.stats for name, pool in pools.items()}
