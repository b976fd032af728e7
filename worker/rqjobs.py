"""RQ-side bookkeeping for a worker that runs many jobs at once.

RQ's own ``Worker`` performs one job at a time. vlq keeps many jobs in flight on one engine, so it does
what RQ's worker does per job — the intermediate queue, an ``Execution`` in the started registry, its
heartbeat, the finished/failed registries — for each job separately, through RQ's own objects. ``rq info``
therefore shows the truth: queued jobs in the queue, running ones as started, ended ones as finished or
failed.

The job's function is never called: the payload is JSON, and only the function named
``worker.constants.INFER_FUNC`` is accepted, so a job planted in Redis cannot run arbitrary code.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from worker.constants import QUEUE_NAME


@dataclass
class Claimed:
    """A job this worker took from the queue and registered as started."""

    job: Job
    execution: Execution


def open_queue(redis: Redis, name: str = QUEUE_NAME) -> Queue:
    """The inference queue, with JSON (never pickle) job payloads."""
    return Queue(name, connection=redis, serializer=JSONSerializer)


def started_key(queue: Queue) -> str:
    """RQ's started registry of a queue (a sorted set of ``job_id:execution_id``)."""
    return str(queue.started_job_registry.key)


def claim_next(queue: Queue, worker_name: str, heartbeat_ttl_s: int, timeout_s: int) -> Claimed | None:
    """Block up to ``timeout_s`` for a job; register it as started. Blocking: call from a thread.

    RQ moves the id atomically from the queue to its intermediate list (BLMOVE), so a worker that dies
    between the pop and the registration leaves the id where the janitor finds it.
    """
    try:
        popped = Queue.dequeue_any([queue], timeout=timeout_s, connection=queue.connection,
                                   serializer=JSONSerializer)
    except DequeueTimeout:
        return None
    if popped is None:
        return None
    job = popped[0]
    with queue.connection.pipeline() as pipe:
        execution = Execution.create(job, ttl=heartbeat_ttl_s, pipeline=pipe, worker_name=worker_name)
        job.prepare_for_execution(worker_name, pipeline=pipe)
        pipe.lrem(queue.intermediate_queue_key, 1, job.id)
        pipe.execute()
    return Claimed(job=job, execution=execution)


def heartbeat(redis: Redis, claimed: list[Claimed], ttl_s: int) -> None:
    """Extend the started-registry lease of every job still in flight. Blocking: call from a thread."""
    if not claimed:
        return
    with redis.pipeline() as pipe:
        for item in claimed:
            item.execution.heartbeat(item.job.started_job_registry, ttl_s, pipeline=pipe)
        pipe.execute()


def requeue_unfinished(queue: Queue, claimed: Claimed) -> None:
    """Hand a job that this worker will not finish back to the front of the queue (drain timeout)."""
    job = claimed.job
    with queue.connection.pipeline() as pipe:
        claimed.execution.delete(job, pipeline=pipe)
        queue._enqueue_job(job, pipeline=pipe, at_front=True)
        pipe.execute()
