"""Ending the worker's jobs together: every job that ended since the last round trip is finished in the next.

One job's end is a cancel check, its result (finish script) and RQ's end records: done one by one, each in
its own round trip under the stream lock, ends were the worker's ceiling (about 350 jobs a second with the
instant engine, every slot waiting its turn). Here a job that ends joins a batch; one task takes the whole
batch under the lock that orders streamed text: one MULTI with the engine-call counters and every job's
finish script, which writes its RQ records too and checks, in the same step, whether the client canceled
while the engine answered. "First result wins" is unchanged: each job's finish script still checks for an
earlier result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.executions import Execution
from rq.job import Job
from rq.worker import Worker

from worker import endings, metrics
from worker.completion import Ended, Ending, after_ends, any_window, queue_ends, read_ends
from worker.constants import ENGINE_CALLS, MAX_INFLIGHT_SEEN
from worker.contract import JobState
from worker.deltas import DeltaBuffer
from worker.rqjobs import Claimed
from worker.scripts import Scripts

log = logging.getLogger("vlq.worker")


@dataclass
class _Pending:
    claimed: Claimed
    ending: Ending
    # The engine answered: count the call, and end it canceled if the client canceled meanwhile.
    engine_called: bool
    started: float
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Finisher:
    """Batches job ends into as few round trips as the engine's pace allows."""

    def __init__(self, redis: Redis, aredis: AsyncRedis, scripts: Scripts, deltas: DeltaBuffer, worker_name: str,
                 rq_worker: Worker | None, patience_s: float) -> None:
        self.redis = redis
        # The ends go out on the event loop: a thread hop per batch cost more than the batch's own commands.
        self.aredis = aredis
        self.scripts = scripts
        self.deltas = deltas
        self.worker_name = worker_name
        self.rq_worker = rq_worker
        # How long a result is worth waiting for Redis to come back (after that the janitor acts).
        self.patience_s = patience_s
        self._pending: list[_Pending] = []
        self._ready = asyncio.Event()
        # The most jobs in flight at any end since the last batch (the max-inflight statistic).
        self._peak = 0

    async def end(self, claimed: Claimed, ending: Ending, engine_called: bool, started: float,
                  inflight: int) -> Ending:
        """End one job with the next batch; returns how it ended (canceled if the client canceled while the
        engine answered)."""
        item = _Pending(claimed, ending, engine_called, started)
        self._pending.append(item)
        self._peak = max(self._peak, inflight)
        self._ready.set()
        await item.done
        return item.ending

    async def run(self) -> None:
        """Finish whatever ended, batch after batch, until cancelled."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            peak, self._peak = self._peak, 0
            try:
                async with self.deltas.lock:
                    tails = [self.deltas.take(item.claimed.job.id) for item in batch]
                    await self._finish(batch, tails, peak)
            except Exception as exc:  # the janitor sweeps what could not be ended
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            for item in batch:
                metrics.observe_ending(item.ending.result)
                if not item.done.done():
                    item.done.set_result(None)

    async def _finish(self, batch: list[_Pending], tails: list[str], peak: int) -> None:
        deadline = time.monotonic() + self.patience_s
        ended = [(self._ending(item, tail), item.claimed.job, item.claimed.execution)
                 for item, tail in zip(batch, tails, strict=True)]
        while True:
            try:
                outcomes = await self._end(ended, sum(1 for item in batch if item.engine_called), peak)
                break
            except RedisError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("cannot reach Redis to finish %d job(s) (%s); retrying", len(batch),
                            type(exc).__name__)
                await asyncio.sleep(1.0)
        if any_window(ended):
            await asyncio.to_thread(after_ends, self.redis, self.scripts, ended, outcomes)
        for item, (ending, _, _), outcome in zip(batch, ended, outcomes, strict=True):
            if outcome.canceled:
                item.ending = Ending(ending.job_id, outcome.result_of(ending), ending.payload)

    async def _end(self, ended: list[tuple[Ending, Job, Execution]], answered: int, peak: int) -> list[Ended]:
        """One MULTI: the engine-call statistics, then every job's end (``completion.queue_ends``)."""
        async with self.aredis.pipeline(transaction=True) as pipe:
            # Commands are only queued on it, as on a blocking pipeline (see completion.queue_ends).
            queued = cast(Pipeline, pipe)
            if answered:
                queued.incrby(ENGINE_CALLS, answered)
                self.scripts.high_water(keys=[MAX_INFLIGHT_SEEN], args=[peak], client=queued)
            firsts = queue_ends(queued, self.redis, ended, self.worker_name, self.rq_worker, self.scripts)
            return read_ends(await pipe.execute(), firsts)

    @staticmethod
    def _ending(item: _Pending, tail: str) -> Ending:
        """The end to write: a success carries its streamed tail, and the canceled end it becomes if the client
        canceled while the engine answered (the finish script checks, in the end's own step)."""
        ending, payload = item.ending, item.ending.payload
        if ending.result.state is not JobState.DONE:
            return ending
        if_canceled = None
        if item.engine_called and payload is not None:
            if_canceled = endings.canceled(ending.job_id, payload, item.started).result
        return Ending(ending.job_id, ending.result, payload, tail=tail, if_canceled=if_canceled)
