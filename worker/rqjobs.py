"""RQ-side bookkeeping for a worker that runs many jobs at once.

RQ's own ``Worker`` performs one job at a time. vlq keeps many jobs in flight on one engine, so it does
what RQ's worker does per job — an ``Execution`` in the started registry and the job's start fields (written
by the claim script, as RQ writes them), its heartbeat, the finished/failed registries (through RQ's own
objects) — for each job separately. ``rq info`` therefore shows the truth: queued jobs in the queue, running
ones as started, ended ones as finished or failed.

The job's function is never called: the payload is JSON, and only the function named
``worker.constants.INFER_FUNC`` is accepted, so a job planted in Redis cannot run arbitrary code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from cache.codec import as_text
from worker.constants import BATCH_QUEUE_NAME, CANCEL_PREFIX, IMAGE_PREFIX, QUEUE_NAME, STREAM_PREFIX
from worker.contract import START_META, Priority
from worker.events import STREAM_MAXLEN
from worker.scripts import AsyncLua, Scripts


def queue_names(model: str) -> dict[Priority, str]:
    """The RQ queue of each priority for one served model (interactive first)."""
    return {Priority.INTERACTIVE: f"{QUEUE_NAME}:{model}", Priority.BATCH: f"{BATCH_QUEUE_NAME}:{model}"}


@dataclass(frozen=True)
class Begun:
    """What the claim script read for a job it started from the gateway's start entry (``START_META``): its
    cancel flag, and the bytes of each of its media digests in order (None where one expired)."""

    canceled: bool
    media: list[bytes | None]


@dataclass
class Claimed:
    """A job this worker took from a queue and registered as started; ``begun`` if the claim also read what it
    starts with and appended its ``running`` event (None: the worker does, with one more read)."""

    job: Job
    execution: Execution
    queue: Queue
    priority: Priority = Priority.INTERACTIVE
    begun: Begun | None = None


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
    """Jobs for up to ``slots.count`` free slots, chosen by the claim rule and registered as started, in one
    round trip however many (``worker/lua/claim.lua``). When every queue is empty, blocks up to ``block_s``
    on the interactive queue for one (then the claim is one more round trip). Blocking: call from a thread;
    the worker itself uses ``aclaim``, the same on its asyncio client.

    The script takes each id from its queue and writes RQ's start records in the same atomic step, so no job
    is ever out of its queue without being started. The blocking wait is RQ's own BLMOVE into the queue's
    intermediate list, so a worker that dies before the claim that follows leaves the id where the janitor
    finds it. RQ's own ``dequeue_any`` pops one job without that list, hence our own.
    """
    request = _Claim(pool, worker_name, heartbeat_ttl_s, slots)
    found = scripts.claim(keys=request.keys, args=request.args(""))
    if found or block_s <= 0:  # took something (even if only ids of deleted jobs): no wait
        return request.read(found)
    interactive = pool[Priority.INTERACTIVE]
    # Block on interactive work: it is what must not wait (batch waits at most block_s).
    # Redis takes a fractional timeout (>= 6.0); redis-py's stub says int.
    raw = interactive.connection.blmove(interactive.key, interactive.intermediate_queue_key,
                                        block_s)  # type: ignore[arg-type]
    if raw is None:
        return []
    return request.read(scripts.claim(keys=request.keys, args=request.args(as_text(raw))))


async def aclaim(pool: dict[Priority, Queue], aredis: AsyncRedis, script: AsyncLua, worker_name: str,
                 heartbeat_ttl_s: int, block_s: float, slots: Slots) -> list[Claimed]:
    """``claim`` on the asyncio client: no thread hop between a job's wake-up and its start. ``pool``'s
    queues (on the blocking client) name the keys and hold the claimed jobs; ``script`` is ``claim.lua``."""
    request = _Claim(pool, worker_name, heartbeat_ttl_s, slots)
    found = await script(keys=request.keys, args=request.args(""))
    if found or block_s <= 0:  # took something (even if only ids of deleted jobs): no wait
        return request.read(found)
    interactive = pool[Priority.INTERACTIVE]
    raw = await aredis.blmove(interactive.key, interactive.intermediate_queue_key, block_s)  # type: ignore[arg-type]
    if raw is None:
        return []
    return request.read(await script(keys=request.keys, args=request.args(as_text(raw))))


class _Claim:
    """One claim's keys and arguments for ``claim.lua``, and the jobs read from its reply."""

    def __init__(self, pool: dict[Priority, Queue], worker_name: str, heartbeat_ttl_s: int, slots: Slots) -> None:
        self.pool = pool
        self.worker_name = worker_name
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.slots = slots
        interactive, batch = pool[Priority.INTERACTIVE], pool[Priority.BATCH]
        self.keys = [interactive.key, interactive.intermediate_queue_key, started_key(interactive),
                     batch.key, batch.intermediate_queue_key, started_key(batch)]
        self.started = now()

    def args(self, popped: str) -> list[str | int | float]:
        """The script's arguments; ``popped``: an id the blocking wait moved ('' if none)."""
        # Each call is its own start: the blocking wait may have lasted a while.
        self.started = now()
        slots, started = self.slots, self.started
        return [slots.count, slots.batch_room, slots.streak, slots.batch_every, Job.redis_job_namespace_prefix,
                self.worker_name, started.timestamp(), utcformat(started), self.heartbeat_ttl_s, popped, START_META,
                CANCEL_PREFIX, IMAGE_PREFIX, STREAM_PREFIX, STREAM_MAXLEN,
                *(uuid4().hex for _ in range(slots.count))]

    def read(self, found: list[Any]) -> list[Claimed]:
        """The jobs the script started, as RQ's objects (a job deleted while queued is dropped, as RQ drops
        it)."""
        connection = self.pool[Priority.INTERACTIVE].connection
        claimed: list[Claimed] = []
        for i in range(0, len(found), 7):
            queue, job_id, flat, execution_id, begun, canceled, media = found[i:i + 7]
            if not flat:
                continue
            priority = Priority.INTERACTIVE if int(queue) == 1 else Priority.BATCH
            job = Job(as_text(job_id), connection=connection, serializer=JSONSerializer)
            job.restore(dict(zip(flat[::2], flat[1::2], strict=True)))
            execution = Execution(id=as_text(execution_id), job_id=job.id, connection=connection,
                                  worker_name=self.worker_name)
            execution.created_at = execution.last_heartbeat = self.started
            claimed.append(Claimed(job=job, execution=execution, queue=self.pool[priority], priority=priority,
                                   begun=Begun(bool(canceled), list(media)) if int(begun) else None))
        return claimed


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
