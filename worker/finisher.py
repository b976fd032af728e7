"""Ending the worker's jobs together: every job that ended since the last round trip is finished in the next.

One job's end is a cancel check, its result (finish script) and RQ's end records: done one by one, each in
its own round trip under the stream lock, ends were the worker's ceiling (about 350 jobs a second with the
instant engine, every slot waiting its turn). Here a job that ends joins a batch; one task takes the whole
batch under the lock that orders streamed text: one pipelined read of the cancel flags (and the engine-call
counters), then one MULTI with every job's finish script and RQ records. "First result wins" is unchanged:
each job's finish script still checks for an earlier result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError
from rq.worker import Worker

from worker import endings, metrics
from worker.completion import Ending, end_jobs
from worker.constants import CANCEL_PREFIX, ENGINE_CALLS, MAX_INFLIGHT_SEEN
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

    def __init__(self, redis: Redis, scripts: Scripts, deltas: DeltaBuffer, worker_name: str,
                 rq_worker: Worker | None, patience_s: float) -> None:
        self.redis = redis
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
                    await asyncio.to_thread(self._finish, batch, tails, peak)
            except Exception as exc:  # the janitor sweeps what could not be ended
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            for item in batch:
                metrics.observe_ending(item.ending.result)
                if not item.done.done():
                    item.done.set_result(None)

    def _finish(self, batch: list[_Pending], tails: list[str], peak: int) -> None:
        deadline = time.monotonic() + self.patience_s
        while True:
            try:
                self._check_cancels(batch, peak)
                ended = [(Ending(item.ending.job_id, item.ending.result, item.ending.payload,
                                 tail=tail if item.ending.result.state is JobState.DONE else ""),
                          item.claimed.job, item.claimed.execution) for item, tail in zip(batch, tails, strict=True)]
                end_jobs(self.redis, ended, self.worker_name, self.rq_worker, self.scripts)
                return
            except RedisError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("cannot reach Redis to finish %d job(s) (%s); retrying", len(batch),
                            type(exc).__name__)
                time.sleep(1.0)

    def _check_cancels(self, batch: list[_Pending], peak: int) -> None:
        """One round trip: the cancel flag of every job the engine answered, and the engine-call stats."""
        answered = [item for item in batch if item.engine_called]
        if not answered:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.incrby(ENGINE_CALLS, len(answered))
            self.scripts.high_water(keys=[MAX_INFLIGHT_SEEN], args=[peak], client=pipe)
            for item in answered:
                pipe.exists(CANCEL_PREFIX + item.ending.job_id)
            flags = pipe.execute()[2:]
        for item, flag in zip(answered, flags, strict=True):
            payload = item.ending.payload
            if flag and payload is not None and item.ending.result.state is JobState.DONE:
                item.ending = endings.canceled(item.ending.job_id, payload, item.started)
