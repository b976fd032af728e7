"""Where a request stands: its queue position (exact, across gateway replicas) and an estimate of when
its answer will be ready.

The estimator: each live worker publishes its in-flight slots and its recent service time S (seconds a
job holds a slot, an exponentially weighted mean; ``worker.capacity``). With C slots in all, R jobs
running and a job at 0-based queue position p, R + p jobs are ahead of it; they leave C at a time, so the
job starts after about floor((R + p) / C) service times and is done one service time later:

    eta_s = S * (1 + floor((R + p) / C))

Before any worker measured S, the configured prior (``VLQ_GATEWAY_ETA_PRIOR_SERVICE_S``) stands in.
With no live worker there is no estimate: ``eta_s`` is null and ``warming`` is true (a worker is expected
to start, e.g. scaling from zero), unless the gateway requires a live worker (then it answers 503).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.backend import Backend
from worker import capacity
from worker.constants import CAPACITY_KEY
from worker.rqjobs import started_key


@dataclass(frozen=True)
class Standing:
    """Position (0 = next) and estimated seconds to the answer; ``warming`` when no worker is up."""

    position: int | None
    eta_s: float | None
    warming: bool

    def body(self) -> dict[str, object]:
        return {"position": self.position, "eta_s": self.eta_s, "warming": self.warming}


def estimate(position: int, running: int, live: capacity.Capacity, prior_s: float) -> Standing:
    """The formula in the module docstring."""
    if live.slots <= 0:
        return Standing(position=position, eta_s=None, warming=True)
    service = live.service_s or prior_s
    return Standing(position=position, eta_s=round(service * (1 + (running + position) // live.slots), 3),
                    warming=False)


async def for_new_job(backend: Backend) -> tuple[int, Standing]:
    """(queue depth, the standing of a job enqueued now at its end), in one round trip."""
    async with backend.aredis.pipeline(transaction=False) as pipe:
        pipe.llen(backend.queue.key)
        pipe.zcard(started_key(backend.queue))
        pipe.hgetall(CAPACITY_KEY)
        depth, running, entries = await pipe.execute()
    live = capacity.parse(entries, time.time())
    return int(depth), estimate(int(depth), int(running), live, backend.settings.eta_prior_service_s)


async def for_job(backend: Backend, job_id: str) -> Standing:
    """The standing of a queued job now (position None if it is no longer in the queue)."""
    async with backend.aredis.pipeline(transaction=False) as pipe:
        pipe.lpos(backend.queue.key, job_id)
        pipe.zcard(started_key(backend.queue))
        pipe.hgetall(CAPACITY_KEY)
        position, running, entries = await pipe.execute()
    if not isinstance(position, int):
        return Standing(position=None, eta_s=None, warming=False)
    live = capacity.parse(entries, time.time())
    return estimate(position, int(running), live, backend.settings.eta_prior_service_s)
