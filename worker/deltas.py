"""Streamed text on its way to the jobs' event streams, batched by time.

The engine yields text every few tokens for every job in flight; appending each piece would cost a Redis
round trip per piece. Instead pieces collect here per job, and one task appends whatever collected every
``interval_s`` for all jobs in one pipelined round trip. A job's end takes its remaining text under the
same lock (``take``), so the last delta and the terminal event follow every earlier append in order.
"""

from __future__ import annotations

import asyncio
import logging

from redis import Redis
from redis.exceptions import RedisError

from worker import events
from worker.contract import StreamEvent
from worker.scripts import Scripts

log = logging.getLogger("vlq.worker")


class DeltaBuffer:
    """Per-job pending text, flushed to the event streams together."""

    def __init__(self, scripts: Scripts, interval_s: float) -> None:
        self.scripts = scripts
        self.interval_s = interval_s
        self.lock = asyncio.Lock()
        self._pending: dict[str, list[str]] = {}
        self._ttl: dict[str, int] = {}
        self._ready = asyncio.Event()

    def add(self, job_id: str, text: str, ttl_s: int) -> None:
        self._pending.setdefault(job_id, []).append(text)
        self._ttl[job_id] = ttl_s
        self._ready.set()

    def take(self, job_id: str) -> str:
        """The job's text not yet appended (call under ``lock``)."""
        self._ttl.pop(job_id, None)
        return "".join(self._pending.pop(job_id, ()))

    def drop(self, job_id: str) -> None:
        self._pending.pop(job_id, None)
        self._ttl.pop(job_id, None)

    async def run(self, redis: Redis) -> None:
        """Flush every ``interval_s`` while there is text; idle otherwise."""
        while True:
            await self._ready.wait()
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush(redis)
            except RedisError as exc:
                log.warning("could not append streamed text (%s); it goes with the result", type(exc).__name__)

    async def flush(self, redis: Redis) -> None:
        async with self.lock:
            self._ready.clear()
            taken, self._pending = self._pending, {}
            batch = {job_id: ("".join(parts), self._ttl.get(job_id, 3600)) for job_id, parts in taken.items()}
            if not batch:
                return
            try:
                await asyncio.to_thread(self._append, redis, batch)
            except RedisError:
                # Kept, ahead of what arrived meanwhile: the next flush or the job's end appends it.
                for job_id, parts in taken.items():
                    self._pending[job_id] = parts + self._pending.get(job_id, [])
                raise

    def _append(self, redis: Redis, batch: dict[str, tuple[str, int]]) -> None:
        with redis.pipeline(transaction=False) as pipe:
            for job_id, (text, ttl_s) in batch.items():
                events.append(self.scripts, pipe, job_id, [(StreamEvent.DELTA, events.dumps({"text": text}))],
                              ttl_s)
            pipe.execute()

