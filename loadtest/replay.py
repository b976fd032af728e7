"""The live side of the planner's validation (``loadtest.validate``): an arrival trace replayed through the gateway,
and a small local scaler that starts and stops worker processes by the autoscaler's own rule.

It speaks only the gateway's HTTP API (``POST /api/infer``, ``GET /api/result``, ``GET /metrics``) and starts and
stops processes, so it does not depend on how the queues are named in Redis. Each request has its own text: no
cache hit, no coalescing. A job's wait is the worker's ``timings.queue_wait_s`` (enqueue -> claimed).

The scaler is ``loadtest.autoscale.Hpa``, the planner's model of the HPA, driven by a clock instead of SimPy. The
pool is a ``WorkerSet``: processes starting (until their /healthz answers 200), ready, and draining after a
SIGTERM (the worker stops taking jobs and finishes those it holds); a Deployment removes a starting pod first,
then the most recently ready one, and the set does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from loadtest.autoscale import Hpa
from loadtest.stack import LocalStack

ENDED = ("done", "failed", "expired", "canceled")
# The gauges the chart's autoscaler adds up (queued + running), whatever labels they carry.
HELD_METRICS = ("vlq_queue_depth", "vlq_queue_started_jobs")


class ReplayError(RuntimeError):
    """A request of the replay did not end ``done``."""


@dataclass(frozen=True)
class Answer:
    """One replayed request: when the trace asked for it, how late it went out, and what the worker measured."""

    at: float
    lag_s: float
    wait_s: float
    started_at: float  # wall clock, the worker's: enqueued_at + queue wait


def held_jobs(exposition: str, names: Sequence[str] = HELD_METRICS) -> float:
    """The sum of every sample of the named metrics in a Prometheus text exposition (queued + running)."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        metric = line.split("{", 1)[0].split(" ", 1)[0]
        if metric in names:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def submit(client: httpx.AsyncClient, text: str) -> tuple[str, float]:
    """``POST /api/infer``; returns the request id and when it was enqueued (wall clock, within a few ms)."""
    sent = time.time()
    posted = await client.post("/api/infer", json={"messages": [{"role": "user", "content": text}],
                                                   "max_tokens": 8})
    posted.raise_for_status()
    return str(posted.json()["request_id"]), (sent + time.time()) / 2


async def queue_wait(client: httpx.AsyncClient, request_id: str) -> float:
    """Long-poll ``GET /api/result`` until the request ends; its ``timings.queue_wait_s``."""
    failures = 0
    while True:
        try:
            body = (await client.get("/api/result", params={"request_id": request_id, "wait": 30})).json()
        except httpx.TransportError:
            failures += 1  # a poll is idempotent: ask again
            if failures > 3:
                raise
            continue
        if body.get("status") in ENDED:
            break
    if body["status"] != "done":
        raise ReplayError(f"request {request_id} ended {body['status']}")
    return float(body["timings"]["queue_wait_s"])


async def _one(client: httpx.AsyncClient, at: float, t0: float, label: str, index: int) -> Answer:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(t0 + at - loop.time(), 0.0))
    lag = loop.time() - t0 - at
    request_id, enqueued = await submit(client, f"validate {label} {index} {uuid.uuid4().hex}")
    wait = await queue_wait(client, request_id)
    return Answer(at=at, lag_s=lag, wait_s=wait, started_at=enqueued + wait)


async def replay(client: httpx.AsyncClient, times: Sequence[float], label: str,
                 t0: float | None = None) -> list[Answer]:
    """Send one request at each trace time (seconds after ``t0``, the loop's clock; default now), wait for all."""
    start = asyncio.get_running_loop().time() if t0 is None else t0
    return list(await asyncio.gather(*(_one(client, at, start, label, i) for i, at in enumerate(times))))


async def burst(client: httpx.AsyncClient, count: int, label: str) -> list[Answer]:
    """``count`` requests posted one after another as fast as the gateway takes them, then waited for."""
    ids = [await submit(client, f"validate {label} {index} {uuid.uuid4().hex}") for index in range(count)]
    waits = await asyncio.gather(*(queue_wait(client, request_id) for request_id, _ in ids))
    return [Answer(at=0.0, lag_s=0.0, wait_s=wait, started_at=enqueued + wait)
            for (_, enqueued), wait in zip(ids, waits, strict=True)]


def new_client(base_url: str) -> httpx.AsyncClient:
    """An HTTP client with room for every long-poll of a backlog at once.

    Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout closes them from its side:
    a request sent on a connection the server is closing fails with a ReadError.
    """
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=400, keepalive_expiry=2.0)
    return httpx.AsyncClient(base_url=base_url, timeout=90, limits=limits)


@dataclass
class LiveWorker:
    """One worker process of the set."""

    proc: subprocess.Popen[bytes]
    healthz: str
    spawned: float  # time.monotonic()
    ready: float | None = None

    @property
    def cold_start_s(self) -> float | None:
        """Process start -> /healthz 200 (the engine loaded; the job loop starts then)."""
        return None if self.ready is None else self.ready - self.spawned


@dataclass
class WorkerSet:
    """Worker processes as a Deployment holds pods; every change of state lands on ``timeline``."""

    stack: LocalStack
    t0: float = field(default_factory=time.monotonic)
    workers: list[LiveWorker] = field(default_factory=list)  # starting or ready: the replicas
    draining: list[LiveWorker] = field(default_factory=list)
    retired: list[LiveWorker] = field(default_factory=list)
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # t, replicas, ready
    _count: int = 0

    @property
    def replicas(self) -> int:
        return len(self.workers)

    @property
    def ready(self) -> int:
        return sum(1 for w in self.workers if w.ready is not None)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def restart_clock(self) -> None:
        """Time zero of the timeline is now."""
        self.t0 = time.monotonic()
        self.timeline = [(0.0, self.replicas, self.ready)]

    def scale_to(self, replicas: int) -> None:
        """Start workers, or stop them (a starting one first, then the one ready for the shortest time)."""
        while self.replicas < replicas:
            self._count += 1
            proc, healthz = self.stack.spawn_worker(f"worker-{self._count}")
            self.workers.append(LiveWorker(proc, healthz, time.monotonic()))
        while self.replicas > replicas:
            starting = [w for w in self.workers if w.ready is None]
            victim = starting[-1] if starting else max(self.workers, key=lambda w: w.ready or 0.0)
            self.workers.remove(victim)
            victim.proc.terminate()  # SIGTERM: the worker drains
            self.draining.append(victim)
        self._mark()

    def _mark(self) -> None:
        point = (self.now(), self.replicas, self.ready)
        if not self.timeline or self.timeline[-1][1:] != point[1:]:
            self.timeline.append(point)

    async def watch(self, client: httpx.AsyncClient, every_s: float = 0.05) -> None:
        """Forever: note when starting workers answer /healthz and when draining ones have exited."""
        while True:
            for worker in [w for w in self.workers if w.ready is None]:
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"worker {worker.proc.pid} exited with {worker.proc.returncode} at start")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(worker.healthz, timeout=1)).status_code == 200:
                        worker.ready = time.monotonic()
            for worker in [w for w in self.draining if w.proc.poll() is not None]:
                self.draining.remove(worker)
                self.retired.append(worker)
            self._mark()
            await asyncio.sleep(every_s)

    async def settle(self, timeout_s: float = 60.0) -> None:
        """Wait until every replica is ready and every draining worker has exited."""
        deadline = time.monotonic() + timeout_s
        while self.draining or self.ready < self.replicas:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not settle")
            await asyncio.sleep(0.05)


async def scale_loop(client: httpx.AsyncClient, workers: WorkerSet, hpa: Hpa, sync_s: float) -> None:
    """Forever, every ``sync_s`` from the set's time zero: read jobs held from /metrics, apply the HPA."""
    tick = 0
    while True:
        exposition = (await client.get("/metrics")).text
        current = workers.replicas
        desired = hpa.reconcile(workers.now(), current, held_jobs(exposition))
        if desired != current:
            workers.scale_to(desired)
        tick += 1
        await asyncio.sleep(max(tick * sync_s - workers.now(), 0.0))
