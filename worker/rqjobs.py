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

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from cache.codec import as_text
from worker.constants import BATCH_QUEUE_NAME, QUEUE_NAME
from worker.contract import Priority
from worker.scripts import Scripts


def queue_names(model: str) -> dict[Priority, str]:
    """The RQ queue of each priority for one served model (interactive first)."""
    return {Priority.INTERACTIVE: f"{QUEUE_NAME}:{model}", Priority.BATCH: f"{BATCH_QUEUE_NAME}:{model}"}


@dataclass
class Claimed:
    """A job this worker took from a queue and registered as started."""

    job: Job
    execution: Execution
    queue: Queue
    priority: Priority = Priority.INTERACTIVE


def open_queue(redis: Redis, name: str) -> Queue:
    """An inference queue, with JSON (never pickle) job payloads."""
    return Queue(name, connection=redis, serializer=JSONSerializer)


def open_queues(redis: Redis, model: str) -> dict[Priority, Queue]:
    """A served model's inference queues, by priority (interactive first)."""
    return {priority: open_queue(redis, name) for priority, name in queue_names(model).items()}


def started_key(queue: Queue) -> str:
    """RQ's started registry of a queue (a sorted set of ``job_id:execution_id``)."""
    return str(queue.started_job_registry.key)


@dataclass(frozen=True)
class Slots:
    """What a claim may take: ``count`` free slots, of which batch may take ``batch_room``; ``streak`` is the
    interactive claims since the last batch one and ``batch_every`` the rule's turn (``worker.claims``)."""

    count: int
    batch_room: int
    streak: int = 0
    batch_every: int = 8


def claim(pool: dict[Priority, Queue], scripts: Scripts, worker_name: str, heartbeat_ttl_s: int,
          block_s: float, slots: Slots) -> list[Claimed]:
    """Jobs for up to ``slots.count`` free slots, chosen by the claim rule and registered as started
    (``claim_and_start`` without further commands). Blocking: call from a thread."""
    return claim_and_start(pool, scripts, worker_name, heartbeat_ttl_s, block_s, slots)[0]


def claim_and_start(pool: dict[Priority, Queue], scripts: Scripts, worker_name: str, heartbeat_ttl_s: int,
                    block_s: float, slots: Slots,
                    then: Callable[[Pipeline, list[Claimed]], None] | None = None) -> tuple[list[Claimed], list[Any]]:
    """Jobs for up to ``slots.count`` free slots, chosen by the claim rule and registered as started, in two
    round trips however many: the claim script (which returns the jobs' hashes too), then one MULTI with their
    start records (Execution, started registry, status) followed by what ``then`` queues for them; returns the
    claimed jobs and the replies to ``then``'s commands. When every queue is empty, blocks up to ``block_s`` on
    the interactive queue for one (then the job's hash is one more round trip). Blocking: call from a thread.

    Each id moves atomically from its queue to the queue's intermediate list (the claim script, or BLMOVE
    as RQ does), so a worker that dies between the pop and the registration leaves the id where the
    janitor finds it. RQ's own ``dequeue_any`` pops one job without that list, hence our own.
    """
    popped = _pop(pool, scripts, block_s, slots)
    if not popped:
        return [], []
    connection = pool[Priority.INTERACTIVE].connection
    claimed: list[Claimed] = []
    with connection.pipeline() as pipe:
        for priority, job_id, job in popped:
            queue = pool[priority]
            if job is None:
                # Deleted while queued (its TTL, a cleanup): drop the id as RQ does.
                pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                continue
            execution = Execution.create(job, ttl=heartbeat_ttl_s, pipeline=pipe, worker_name=worker_name)
            job.prepare_for_execution(worker_name, pipeline=pipe)
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            claimed.append(Claimed(job=job, execution=execution, queue=queue, priority=priority))
        records = len(pipe)
        if then is not None and claimed:
            then(pipe, claimed)
        replies = pipe.execute()
    return claimed, replies[records:]


def _pop(pool: dict[Priority, Queue], scripts: Scripts, block_s: float,
         slots: Slots) -> list[tuple[Priority, str, Job | None]]:
    interactive, batch = pool[Priority.INTERACTIVE], pool[Priority.BATCH]
    connection = interactive.connection
    found = scripts.claim(keys=[interactive.key, interactive.intermediate_queue_key, batch.key,
                                batch.intermediate_queue_key],
                          args=[slots.count, slots.batch_room, slots.streak, slots.batch_every,
                                Job.redis_job_namespace_prefix])
    if found:
        return [(Priority.INTERACTIVE if int(found[i]) == 1 else Priority.BATCH, as_text(found[i + 1]),
                 _restored(connection, as_text(found[i + 1]), found[i + 2])) for i in range(0, len(found), 3)]
    if block_s <= 0:
        return []
    # Block on interactive work: it is what must not wait (batch waits at most block_s).
    # Redis takes a fractional timeout (>= 6.0); redis-py's stub says int.
    raw = connection.blmove(interactive.key, interactive.intermediate_queue_key, block_s)  # type: ignore[arg-type]
    if raw is None:
        return []
    job_id = as_text(raw)
    return [(Priority.INTERACTIVE, job_id, Job.fetch_many([job_id], connection=connection,
                                                          serializer=JSONSerializer)[0])]


def _restored(connection: Redis, job_id: str, flat: list[bytes]) -> Job | None:
    """The job from the hash the claim script read (as ``Job.fetch_many`` builds it); None if it is gone."""
    if not flat:
        return None
    job = Job(job_id, connection=connection, serializer=JSONSerializer)
    job.restore(dict(zip(flat[::2], flat[1::2], strict=True)))
    return job


def heartbeat(scripts: Scripts, claimed: list[Claimed], ttl_s: int) -> int:
    """Extend the started-registry lease of every job still in flight, in one script that skips a job whose
    execution already ended (``worker/lua/heartbeat.lua`` says why). Returns how many were extended.
    Blocking: call from a thread."""
    if not claimed:
        return 0
    keys: list[str] = []
    args: list[str | int | float] = [time.time(), ttl_s]
    for item in claimed:
        execution = item.execution
        keys += [execution.key, started_key(item.queue), ExecutionRegistry.key_template.format(item.job.id)]
        args += [execution.composite_key, execution.id]
    return int(scripts.heartbeat(keys=keys, args=args))


def requeue_unfinished(claimed: Claimed) -> None:
    """Hand a job that this worker will not finish back to the front of its queue (drain timeout)."""
    job, queue = claimed.job, claimed.queue
    with queue.connection.pipeline() as pipe:
        claimed.execution.delete(job, pipeline=pipe)
        queue._enqueue_job(job, pipeline=pipe, at_front=True)
        pipe.execute()


def retry_window(claimed: Claimed) -> None:
    """Put a failed window job back on its queue, one retry fewer (RQ's ``Job.retry``), instead of ending it."""
    job, queue = claimed.job, claimed.queue
    with queue.connection.pipeline() as pipe:
        claimed.execution.delete(job, pipeline=pipe)
        job.retry(queue, pipe)
        pipe.execute()
