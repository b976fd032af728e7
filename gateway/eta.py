"""Where a request stands: its queue position (exact, across gateway replicas) and an estimate of when
its answer will be ready.

The estimator: each live worker publishes its in-flight slots and its recent service time S (seconds a
job holds a slot, an exponentially weighted mean; ``worker.capacity``). With C slots in all, R jobs
running and a job at 0-based queue position p, R + p jobs are ahead of it; they leave C at a time, so the
job starts after about floor((R + p) / C) service times and is done one service time later:

    eta_s = S * (1 + floor((R + p) / C))

Before any worker measured S, the configured prior (``VLQ_GATEWAY_ETA_PRIOR_SERVICE_S``) stands in.
With no live worker there is no estimate: ``eta_s`` is null and ``warming`` is true (a worker is expected
to start, e.g. scaling from zero), unless the gateway requires a live worker (then it answers 503); then
``cold_start_s`` says how long a worker takes to start: the last one measured (process start to ready,
kept in Redis by each worker), or ``VLQ_GATEWAY_COLD_START_PRIOR_S`` before any was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio.client import Pipeline as AsyncPipeline

from gateway.backend import Backend
from worker import capacity
from worker.rqjobs import started_key


@dataclass(frozen=True)
class Standing:
    """Position (0 = next) and estimated seconds to the answer; ``warming`` when no worker is up."""

    position: int | None
    eta_s: float | None
    warming: bool
    # While warming: how long a worker takes to start (last measured, or the configured prior).
    cold_start_s: float | None = None

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"position": self.position, "eta_s": self.eta_s, "warming": self.warming}
        if self.warming:
            body["cold_start_s"] = self.cold_start_s
        return body


def estimate(position: int, running: int, live: capacity.Capacity, prior_s: float,
             cold_start_s: float | None = None) -> Standing:
    """The formula in the module docstring."""
    if live.slots <= 0:
        return Standing(position=position, eta_s=None, warming=True, cold_start_s=cold_start_s)
    service = live.service_s or prior_s
    return Standing(position=position, eta_s=round(service * (1 + (running + position) // live.slots), 3),
                    warming=False)


async def for_new_job(backend: Backend) -> tuple[int, Standing]:
    """(queue depth, the standing of a job enqueued now at its end), in one round trip."""
    depth, standing = await _standing(backend, lambda pipe: pipe.llen(backend.queue.key))
    return depth, standing or Standing(position=depth, eta_s=None, warming=False)


async def for_job(backend: Backend, job_id: str) -> Standing:
    """The standing of a queued job now (position None if it is no longer in the queue)."""
    _, standing = await _standing(backend, lambda pipe: pipe.lpos(backend.queue.key, job_id))
    return standing or Standing(position=None, eta_s=None, warming=False)


async def _standing(backend: Backend, position_of: Callable[[AsyncPipeline], object]) -> tuple[int, Standing | None]:
    """The position ``position_of`` reads, and the standing there (None without a position)."""
    async with backend.aredis.pipeline(transaction=False) as pipe:
        position_of(pipe)
        pipe.zcard(started_key(backend.queue))
        capacity.queue_reads(pipe)
        position, running, entries, cold = await pipe.execute()
    if not isinstance(position, int):
        return 0, None
    live, measured = capacity.from_replies(entries, cold)
    cold_start = round(measured if measured is not None else backend.settings.cold_start_prior_s, 1)
    return position, estimate(position, int(running), live, backend.settings.eta_prior_service_s, cold_start)
