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
from worker.contract import Priority
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


# Interactive jobs are taken first (worker/claims.py), so a batch job's position counts the interactive
# queue ahead of its own; an interactive job's does not count batch jobs.


async def for_new_job(backend: Backend, model: str,
                      priority: Priority = Priority.INTERACTIVE) -> tuple[int, Standing]:
    """(depth of the job's queue, the standing of a job enqueued now at its end), in one round trip."""
    queues = backend.queues_of(model)
    interactive, batch = queues[Priority.INTERACTIVE].key, queues[Priority.BATCH].key

    def depth_of(pipe: AsyncPipeline) -> None:
        pipe.llen(interactive)
        pipe.llen(batch)

    def position(replies: list[object]) -> tuple[int, int]:
        ahead, own = int(str(replies[0])), int(str(replies[1]))
        return (ahead, ahead) if priority is Priority.INTERACTIVE else (own, ahead + own)

    depth, standing = await _standing(backend, model, depth_of, 2, position)
    return depth, standing or Standing(position=depth, eta_s=None, warming=False)


async def for_job(backend: Backend, job_id: str, model: str | None) -> Standing:
    """The standing of a queued job of ``model`` now (position None if it is no longer in a queue)."""
    queues = backend.queues_of(model)
    interactive, batch = queues[Priority.INTERACTIVE].key, queues[Priority.BATCH].key

    def position_of(pipe: AsyncPipeline) -> None:
        pipe.lpos(interactive, job_id)
        pipe.lpos(batch, job_id)
        pipe.llen(interactive)

    def position(replies: list[object]) -> tuple[int, int] | None:
        own, in_batch, ahead = replies
        if isinstance(own, int):
            return 0, own
        return (0, int(str(ahead)) + in_batch) if isinstance(in_batch, int) else None

    _, standing = await _standing(backend, model, position_of, 3, position)
    return standing or Standing(position=None, eta_s=None, warming=False)


async def _standing(backend: Backend, model: str | None, reads: Callable[[AsyncPipeline], None], count: int,
                    position_of: Callable[[list[object]], tuple[int, int] | None]) -> tuple[int, Standing | None]:
    """(depth, the standing at the position ``position_of`` finds in the replies to ``reads``), on the
    model's own pool."""
    queues = list(backend.queues_of(model).values())
    async with backend.aredis.pipeline(transaction=False) as pipe:
        reads(pipe)
        for queue in queues:
            pipe.zcard(started_key(queue))
        capacity.queue_reads(pipe, model or backend.settings.model)
        replies = await pipe.execute()
    found = position_of(replies[:count])
    running = sum(int(n) for n in replies[count:count + len(queues)])
    entries, cold = replies[count + len(queues):]
    if found is None:
        return 0, None
    depth, position = found
    live, measured = capacity.from_replies(entries, cold)
    cold_start = round(measured if measured is not None else backend.settings.cold_start_prior_s, 1)
    return depth, estimate(position, running, live, backend.settings.eta_prior_service_s, cold_start)
