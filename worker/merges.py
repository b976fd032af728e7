"""Merge jobs of long videos: their progress record (``MERGE_PREFIX``, its one owner) and their release.

A merge job waits, deferred through RQ's own dependencies (``rq:job:<window>:dependents``, the deferred
registry), for the window jobs it combines. Whoever ends a window job (the worker, the janitor, a cancel)
calls ``window_ended``: it appends ``progress`` to each waiting merge job's stream and enqueues every merge job
whose windows have now all ended. RQ's own ``enqueue_dependents`` is not used for that: it enqueues a
dependent only when every dependency *succeeded* or failed (a canceled window would hold the merge forever), and
two windows ending at once on two workers could both enqueue it. Here the release reads the merge job's status
under WATCH and enqueues it only while it is still deferred. Import-light: the gateway uses it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import DeferredJobRegistry
from rq.serializers import JSONSerializer

from cache.codec import as_text
from worker.constants import MERGE_PREFIX
from worker.contract import Span
from worker.events import STREAM_MAXLEN, stream_key
from worker.scripts import Scripts

# RQ statuses of a job that will not run again: a merge job waits for nothing else.
_ENDED = frozenset({JobStatus.FINISHED.value, JobStatus.FAILED.value, JobStatus.CANCELED.value,
                    JobStatus.STOPPED.value})


def merge_key(merge_id: str) -> str:
    return MERGE_PREFIX + merge_id


def register(pipe: Pipeline, merge_id: str, total: int, waiting: dict[str, Span], ttl_s: int) -> None:
    """Queue: the merge job combines ``total`` windows, of which those in ``waiting`` (job id -> span) have not
    ended yet."""
    key = merge_key(merge_id)
    fields: dict[FieldT, EncodableT] = {"total": total, "done": total - len(waiting)}
    fields.update({f"w:{job_id}": json.dumps({"start_s": span.start_s, "end_s": span.end_s})
                   for job_id, span in waiting.items()})
    pipe.hset(key, mapping=fields)
    pipe.expire(key, ttl_s)


def is_window(job: Job) -> bool:
    """Whether a job is a window of a long video (its payload says so; read without validating it). A job
    whose data cannot be decoded is not: it ended ``bad_job``, and raising here would skip the ends of the
    jobs finished with it."""
    try:
        kwargs = job.kwargs
    except Exception:  # RQ's DeserializationError, or data that is not (func, args, kwargs)
        return False
    raw = kwargs.get("job") if isinstance(kwargs, dict) else None
    return isinstance(raw, dict) and raw.get("window") is not None


def window_ended(redis: Redis, scripts: Scripts, job_id: str, state: str) -> list[str]:
    """A window job ended (``state``): progress on each merge job waiting for it, and the release of those
    that now wait for nothing. Returns the merge jobs enqueued. Blocking: call from a thread."""
    waiting = [as_text(raw) for raw in redis.smembers(Job.dependents_key_for(job_id))]
    if not waiting:
        return []
    with redis.pipeline(transaction=False) as pipe:
        for merge_id in waiting:
            scripts.window_done(keys=[merge_key(merge_id), stream_key(merge_id)],
                                args=[job_id, state, STREAM_MAXLEN], client=pipe)
        pipe.execute()
    return release(redis, job_id)


def release_orphans(redis: Redis, queue: Queue) -> list[str]:
    """Enqueue the merge jobs deferred on ``queue`` that wait for nothing any more: a window whose job was
    deleted before it ended (its hash gone) has no end to release them. The janitor's safety net."""
    deferred = [as_text(raw) for raw in redis.zrange(DeferredJobRegistry(queue.name, connection=redis,
                                                                        serializer=JSONSerializer).key, 0, -1)]
    released = []
    for merge_id in deferred:
        with redis.pipeline() as pipe:
            try:
                pipe.watch(Job.key_for(merge_id))  # type: ignore[no-untyped-call]
                job = Job.fetch_many([merge_id], connection=redis, serializer=JSONSerializer)[0]
                if job is None or not _ready(redis, job):
                    pipe.reset()
                    continue
                pipe.multi()
                _enqueue(pipe, redis, [job])
                pipe.execute()
                released.append(merge_id)
            except WatchError:
                continue  # it changed (released, canceled): the next sweep looks again
    return released


def release(redis: Redis, job_id: str) -> list[str]:
    """Enqueue each job deferred on ``job_id`` whose dependencies have all ended (and forget those no longer
    deferred); the ids enqueued."""
    dependents_key = Job.dependents_key_for(job_id)
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(dependents_key)  # type: ignore[no-untyped-call]
                ids = [as_text(raw) for raw in pipe.smembers(dependents_key)]
                if not ids:
                    pipe.reset()
                    return []
                pipe.watch(*[Job.key_for(dependent) for dependent in ids])  # type: ignore[no-untyped-call]
                jobs = Job.fetch_many(ids, connection=redis, serializer=JSONSerializer)
                deferred = [job for job, status in zip(jobs, _statuses(redis, ids), strict=True)
                            if job is not None and status is not None and as_text(status) == JobStatus.DEFERRED]
                ready = [job for job in deferred if _waits_for_nothing(redis, job)]
                # Gone, no longer deferred, or released now: none of these waits on this job any more.
                done_with = set(ids) - {job.id for job in deferred} | {job.id for job in ready}
                pipe.multi()
                _enqueue(pipe, redis, ready)
                if done_with:
                    pipe.srem(dependents_key, *done_with)
                pipe.execute()
                return [job.id for job in ready]
            except WatchError:
                continue


def _status(redis: Redis, job_id: str) -> str:
    return as_text(redis.hget(Job.key_for(job_id), "status"))


def _ready(redis: Redis, job: Job) -> bool:
    """Still deferred, and every job it depends on has ended."""
    return _status(redis, job.id) == JobStatus.DEFERRED and _waits_for_nothing(redis, job)


def _waits_for_nothing(redis: Redis, job: Job) -> bool:
    """Every job it depends on has ended (or is gone: nothing more will come of it)."""
    statuses = _statuses(redis, [as_text(raw) for raw in redis.smembers(job.dependencies_key)])
    return all(status is None or as_text(status) in _ENDED for status in statuses)


def _statuses(redis: Redis, ids: Iterable[str]) -> list[Any]:
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "status")
        return list(pipe.execute())


def _enqueue(pipe: Pipeline, redis: Redis, jobs: list[Job]) -> None:
    for job in jobs:
        DeferredJobRegistry(job.origin, connection=redis, serializer=JSONSerializer).remove(job, pipeline=pipe)
        Queue(job.origin, connection=redis, serializer=JSONSerializer)._enqueue_job(job, pipeline=pipe)
