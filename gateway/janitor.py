"""The janitor: ends or retries jobs whose worker vanished, even when no worker is alive.

It runs in every gateway process but sweeps in one at a time (a Redis lock). Each sweep:
- started jobs whose execution lease expired (the worker stopped heart-beating): if a result was already
  written, only RQ's bookkeeping is finished; else the job is retried while it has retries left, and
  otherwise ends ``failed`` with ``worker_lost``;
- jobs a worker popped but never registered (it died in between) go back to the front of the queue;
- merge jobs of long videos deferred on windows that can no longer end are released;
- queue gauges for metrics and autoscaling.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from redis import Redis
from redis.exceptions import RedisError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import str_to_date

from cache.codec import as_text
from gateway import metrics
from worker import capacity, merges
from worker.completion import Ending, end_job, record_in_rq, result_key
from worker.constants import JANITOR_LOCK
from worker.contract import ErrorCode, InferJob, JobError, JobResult, JobState, Priority
from worker.scripts import Scripts

log = logging.getLogger("vlq.gateway.janitor")

class Janitor:
    """Sweeps the inference queues; ``sweep`` blocks (call it from a thread), ``run`` loops it from asyncio."""

    def __init__(self, redis: Redis, queues: Mapping[str, Mapping[Priority, Queue]], stale_after_s: int,
                 interval_s: float) -> None:
        self.redis = redis
        # Each served model's queues, interactive first.
        self.pools = {model: list(by_priority.values()) for model, by_priority in queues.items()}
        self.queues = [queue for pool in self.pools.values() for queue in pool]
        self.stale_after_s = stale_after_s
        self.interval_s = interval_s
        # (queue, job id) -> when an id was first seen popped but not started.
        self._seen_popped: dict[tuple[str, str], float] = {}
        self.scripts = Scripts(redis)

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sweep_if_leader)
            except RedisError as exc:
                log.warning("janitor sweep skipped: %s", type(exc).__name__)
            except Exception:
                log.exception("janitor sweep failed")
            await asyncio.sleep(self.interval_s)

    def sweep_if_leader(self) -> None:
        lock_ttl = max(int(self.interval_s * 2), 2)
        if self.redis.set(JANITOR_LOCK, "1", nx=True, ex=lock_ttl):
            self.sweep()
        self.update_gauges()

    def sweep(self) -> int:
        """One pass over every queue; returns how many jobs it ended, retried or requeued."""
        for model in self.pools:
            capacity.forget_lapsed(self.redis, model)
        return sum(self.sweep_expired(queue) + self.sweep_popped(queue) + self.sweep_deferred(queue)
                   for queue in self.queues)

    def sweep_deferred(self, queue: Queue) -> int:
        """Merge jobs of long videos that wait for windows which can no longer end (their job deleted): released,
        so the merge ends the request (the lost windows named) instead of leaving it queued forever."""
        released = merges.release_orphans(self.redis, queue)
        for merge_id in released:
            log.warning("merge job %s waited for windows that are gone; released", merge_id)
        return len(released)

    def sweep_expired(self, queue: Queue) -> int:
        now = time.time()
        key = _started(queue).key
        entries = self.redis.zrangebyscore(key, 0, now)
        for entry in entries:
            job_id, execution_id = as_text(entry).split(":", 1)
            self._recover(queue, job_id, execution_id)
            self.redis.zrem(key, as_text(entry))
        return len(entries)

    def _recover(self, queue: Queue, job_id: str, execution_id: str) -> None:
        try:
            job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
        except Exception:  # the job hash expired or is unreadable: nothing left to end
            return
        execution = Execution(execution_id, job_id, connection=self.redis)
        raw = self.redis.get(result_key(job_id))
        if raw is not None:
            record_in_rq(self.redis, job, execution, JobResult.model_validate_json(raw), "janitor")
        elif job.retries_left:
            with self.redis.pipeline() as pipe:
                execution.delete(job, pipeline=pipe)
                job.retry(queue, pipe)
                pipe.execute()
            metrics.JANITOR.labels(action="retried").inc()
            log.warning("job %s lost its worker; retried (%s retries left)", job_id, job.retries_left)
        else:
            self._fail_lost(job, execution)

    def _fail_lost(self, job: Job, execution: Execution) -> None:
        try:
            payload: InferJob | None = InferJob.model_validate(job.kwargs.get("job"))
        except Exception:
            payload = None
        error = JobError(code=ErrorCode.WORKER_LOST,
                         message="the worker running this request was lost and no retries are left")
        result = JobResult(state=JobState.FAILED, error=error, finished_at=time.time(),
                           model=payload.model if payload else None)
        end_job(self.redis, Ending(job_id=job.id, result=result, payload=payload), job, execution, "janitor",
                scripts=self.scripts)
        metrics.JANITOR.labels(action="failed").inc()
        log.warning("job %s lost its worker; failed (no retries left)", job.id)

    def sweep_popped(self, queue: Queue) -> int:
        started = {as_text(entry).split(":", 1)[0] for entry in
                   self.redis.zrange(_started(queue).key, 0, -1)}
        now = time.monotonic()
        requeued = 0
        popped = [as_text(raw) for raw in self.redis.lrange(queue.intermediate_queue_key, 0, -1)]
        for job_id in popped:
            if job_id in started:
                continue
            first = self._seen_popped.setdefault((queue.name, job_id), now)
            if now - first >= self.stale_after_s:
                requeued += int(self.scripts.requeue_popped(
                    keys=[queue.intermediate_queue_key, queue.key], args=[job_id]))
                self._seen_popped.pop((queue.name, job_id), None)
        self._seen_popped = {(name, job_id): seen for (name, job_id), seen in self._seen_popped.items()
                             if name != queue.name or job_id in popped}
        return requeued

    def update_gauges(self) -> None:
        """Per model: depth and started jobs of its queues together (what its pool's autoscaler adds up), and
        the age of its interactive queue's head (batch work is expected to wait)."""
        for model, pool in self.pools.items():
            with self.redis.pipeline(transaction=False) as pipe:
                for queue in pool:
                    pipe.llen(queue.key)
                    pipe.zcard(_started(queue).key)
                pipe.lindex(pool[0].key, 0)
                *counts, head = pipe.execute()
            metrics.QUEUE_DEPTH.labels(model=model).set(sum(counts[0::2]))
            metrics.QUEUE_STARTED.labels(model=model).set(sum(counts[1::2]))
            metrics.QUEUE_OLDEST_AGE.labels(model=model).set(self._age(head))

    def _age(self, head: object) -> float:
        if head is None:
            return 0.0
        enqueued = self.redis.hget(Job.key_for(as_text(head)), "enqueued_at")
        return max(time.time() - str_to_date(enqueued).timestamp(), 0.0) if enqueued else 0.0


def _started(queue: Queue) -> StartedJobRegistry:
    return StartedJobRegistry(queue.name, connection=queue.connection, serializer=JSONSerializer)
