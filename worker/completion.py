"""Ending a job: the result document, the L1 cache fill and RQ's own bookkeeping.

Used by the worker when a job ends and by the gateway's janitor when a worker vanished. The first writer
of a job's result wins (a Lua script checks and writes atomically), so a client never sees two different
results for one request even when a presumed-dead worker finishes late. Import-light: the gateway uses it.
"""

from __future__ import annotations

import time
from base64 import b64encode
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, DeferredJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.utils import now, utcformat
from rq.worker import Worker

from cache.tiers import near_member
from worker import merges
from worker.constants import (
    CACHE_PREFIX,
    CACHED_CHANNEL,
    CANCEL_PREFIX,
    ENDED_STREAM,
    EVENTS_CHANNEL,
    INFLIGHT_PREFIX,
    JOB_HOOKS_PREFIX,
    NEAR_PREFIX,
    RESULT_PREFIX,
    TENANT_INFLIGHT_PREFIX,
)
from worker.contract import CacheMode, InferJob, JobResult, JobState
from worker.events import STREAM_MAXLEN, dumps, stream_key
from worker.scripts import Scripts

# A result document for a job whose payload could not be read lives this long.
_DEFAULT_RESULT_TTL_S = 3600
# How long RQ keeps a finished job and its result when the job names no result TTL (RQ's own default).
_RQ_RESULT_TTL_S = 3600
_FLAGS = ("0", "1")
# The ended log is trimmed to about this many entries. Gateways read it within seconds; only a backlog
# this deep with every gateway down for long could trim an end before it was delivered.
ENDED_MAXLEN = 100_000


@dataclass(frozen=True)
class Ending:
    """How a job ended, and what to remember of it; ``tail`` is streamed text not yet appended."""

    job_id: str
    result: JobResult
    payload: InferJob | None
    tail: str = ""
    # The result to end with instead if the client canceled meanwhile: checked in the end's own atomic step
    # (only for a success that this worker records in RQ, the case of an engine that answered).
    if_canceled: JobResult | None = None


@dataclass(frozen=True)
class Ended:
    """What one end did: ``written`` if its result was the first; ``canceled`` if it ended with
    ``Ending.if_canceled`` instead."""

    written: bool
    canceled: bool = False

    def result_of(self, ending: Ending) -> JobResult:
        """How ``ending`` (the one this end was given) ended."""
        return ending.if_canceled if self.canceled and ending.if_canceled is not None else ending.result


def result_key(job_id: str) -> str:
    return RESULT_PREFIX + job_id


def publish_result(redis: Redis, ending: Ending) -> bool:
    """Write the result document (and the cache entry for a success) unless one exists. True if written."""
    return bool(_publish(redis, Scripts(redis), ending))


def end_job(redis: Redis, ending: Ending, job: Job, execution: Execution | None, worker_name: str,
            rq_worker: Worker | None = None, scripts: Scripts | None = None) -> bool:
    """Publish the result and do RQ's bookkeeping in one MULTI, so no client ever reads a result that
    ``rq info`` still shows running. True if this call wrote the result (the first writer wins)."""
    return end_jobs(redis, [(ending, job, execution)], worker_name, rq_worker, scripts)[0].written


def end_jobs(redis: Redis, ended: Sequence[tuple[Ending, Job, Execution | None]], worker_name: str,
             rq_worker: Worker | None = None, scripts: Scripts | None = None) -> list[Ended]:
    """``end_job`` of many jobs in one round trip (one MULTI: each job's finish script and its RQ records).
    For each, what its end did."""
    scripts = scripts or Scripts(redis)
    with redis.pipeline() as pipe:
        firsts = queue_ends(pipe, redis, ended, worker_name, rq_worker, scripts)
        outcomes = read_ends(pipe.execute(), firsts)
    after_ends(redis, scripts, ended, outcomes)
    return outcomes


def queue_ends(pipe: Pipeline, redis: Redis, ended: Sequence[tuple[Ending, Job, Execution | None]], worker_name: str,
               rq_worker: Worker | None, scripts: Scripts) -> list[int]:
    """Queue each end's finish script and RQ records on ``pipe`` (a pipeline only queues them: redis-py's
    asyncio pipeline does as well as this one); the index of each end's finish-script reply."""
    firsts: list[int] = []
    for ending, job, execution in ended:
        firsts.append(len(pipe))
        if execution is not None and ending.result.state is JobState.DONE:
            # The common end: RQ's records written by the finish script itself, no commands composed here.
            _publish(pipe, scripts, ending, _Success(job, execution, worker_name, rq_worker))
        else:
            _publish(pipe, scripts, ending)
            _rq_bookkeeping(pipe, redis, job, execution, ending.result, worker_name, rq_worker)
    return firsts


def read_ends(replies: Sequence[Any], firsts: list[int]) -> list[Ended]:
    """What each end did, from the replies of the pipeline ``queue_ends`` filled."""
    return [Ended(written=bool(int(replies[index]) & 1), canceled=bool(int(replies[index]) & 2))
            for index in firsts]


def after_ends(redis: Redis, scripts: Scripts, ended: Sequence[tuple[Ending, Job, Execution | None]],
               outcomes: list[Ended]) -> None:
    """What follows the ends: a window job's end counts towards its merge jobs. Blocking (one round trip per
    window job, none otherwise)."""
    for (ending, job, _), outcome in zip(ended, outcomes, strict=True):
        _after_end(redis, scripts, job, outcome.result_of(ending))


def any_window(ended: Sequence[tuple[Ending, Job, Execution | None]]) -> bool:
    """Whether ``after_ends`` has anything to do for these ends."""
    return any(merges.is_window(job) for _, job, _ in ended)


def record_in_rq(redis: Redis, job: Job, execution: Execution | None, result: JobResult,
                 worker_name: str) -> None:
    """Only RQ's bookkeeping, for a job whose result was already written."""
    with redis.pipeline() as pipe:
        _rq_bookkeeping(pipe, redis, job, execution, result, worker_name, None)
        pipe.execute()
    _after_end(redis, Scripts(redis), job, result)


def _after_end(redis: Redis, scripts: Scripts, job: Job, result: JobResult) -> None:
    """A window job's end counts towards the merge jobs waiting for it (after RQ recorded it ended, which
    is what their release reads)."""
    if merges.is_window(job):
        merges.window_ended(redis, scripts, job.id, result.state.value)


@dataclass(frozen=True)
class _Success:
    """A job that succeeded in this worker: the finish script writes RQ's records of its end too."""

    job: Job
    execution: Execution
    worker_name: str
    rq_worker: Worker | None

    def script_part(self, result_json: str,
                    if_canceled: JobResult | None) -> tuple[list[str], list[str | int | float]]:
        """``finish.lua``'s KEYS[9:] and ARGV[18:]: what ``Execution.delete``, ``_finished`` and the worker's
        count write through RQ's objects, or for a cancel ``_rq_bookkeeping``'s canceled records (a test holds
        the two to the same records)."""
        job, execution = self.job, self.execution
        job.ended_at = ended = now()
        keys = [job.key, execution.key, StartedJobRegistry.key_template.format(job.origin),
                ExecutionRegistry.key_template.format(job.id), f"rq:results:{job.id}",  # Result.get_key (untyped)
                FinishedJobRegistry.key_template.format(job.origin), job.dependents_key, job.dependencies_key,
                self.rq_worker.key if self.rq_worker is not None else "", CANCEL_PREFIX + job.id,
                DeferredJobRegistry.key_template.format(job.origin),
                CanceledJobRegistry.key_template.format(job.origin)]
        args: list[str | int | float] = [
            "1", execution.composite_key, execution.id, utcformat(ended), int(ended.timestamp()),
            job.result_ttl or _RQ_RESULT_TTL_S, self.worker_name,
            b64encode(result_json.encode()).decode(), _FLAGS[self.rq_worker is not None],
            if_canceled.model_dump_json() if if_canceled is not None else ""]
        return keys, args


def _publish(client: Redis | Pipeline, scripts: Scripts, ending: Ending, success: _Success | None = None) -> Any:
    payload = ending.payload
    cache_key = payload.cache_key if payload else ""
    cacheable = (payload is not None and ending.result.state is JobState.DONE
                 and payload.cache_mode is not CacheMode.OFF)
    result_json = ending.result.model_dump_json()
    phashes = payload.phashes if payload else None
    near = bool(cacheable and payload is not None and payload.near_bucket and phashes)
    bucket = payload.near_bucket if payload else None
    keys = [result_key(ending.job_id), INFLIGHT_PREFIX + cache_key, CACHE_PREFIX + cache_key,
            NEAR_PREFIX + (bucket or ""), TENANT_INFLIGHT_PREFIX + (payload.tenant if payload else ""),
            stream_key(ending.job_id), JOB_HOOKS_PREFIX + ending.job_id, ENDED_STREAM]
    args: list[str | int | float] = [
        ending.job_id, result_json, payload.result_ttl_s if payload else _DEFAULT_RESULT_TTL_S,
        ending.result.state.value, _FLAGS[cacheable], payload.cache_ttl_s if payload else 1,
        _FLAGS[near], near_member(cache_key, phashes or []) if near else "-",
        _FLAGS[bool(ending.tail)], dumps({"text": ending.tail}), STREAM_MAXLEN, time.time(),
        EVENTS_CHANNEL, ending.job_id, CACHED_CHANNEL,
        dumps({"k": cache_key, "b": bucket, "p": phashes, "r": result_json}) if cacheable else "-",
        ENDED_MAXLEN]
    if success is None:
        args.append(_FLAGS[False])
    else:
        rq_keys, rq_args = success.script_part(result_json, ending.if_canceled)
        keys += rq_keys
        args += rq_args
    return scripts.finish(keys=keys, args=args, client=client)


def _rq_bookkeeping(pipe: Pipeline, redis: Redis, job: Job, execution: Execution | None, result: JobResult,
                    worker_name: str, rq_worker: Worker | None) -> None:
    """Queue what RQ's own worker does when a job ends: finished/failed/canceled registry, status, counts."""
    if rq_worker is not None:
        if result.state is JobState.DONE:
            rq_worker.increment_successful_job_count(pipeline=pipe)
        else:
            rq_worker.increment_failed_job_count(pipeline=pipe)
    if execution is not None:
        execution.delete(job, pipeline=pipe)
    else:
        job.started_job_registry.remove_executions(job, pipeline=pipe)
    job.ended_at = now()
    if result.state is JobState.DONE:
        _finished(pipe, job, result, worker_name)
    elif result.state is JobState.CANCELED:
        job.set_status(JobStatus.CANCELED, pipeline=pipe)
        # A merge job canceled while it waited for its windows leaves the deferred registry too.
        DeferredJobRegistry(job.origin, connection=redis).remove(job, pipeline=pipe)
        CanceledJobRegistry(job.origin, connection=redis).add(job, pipeline=pipe)
    else:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        message = result.error.message if result.error else result.state.value
        code = result.error.code if result.error else result.state.value
        job._handle_failure(f"{code}: {message}", pipeline=pipe, worker_name=worker_name)


def _finished(pipe: Pipeline, job: Job, result: JobResult, worker_name: str) -> None:
    """What RQ's ``Job._handle_success`` writes (status, end time, a successful ``Result``, the finished
    registry) and ``cleanup``'s expiry, but not its ``job.save``: that rewrote every field of the job hash,
    re-serialising and re-compressing the payload, when an end changes only the status and ``ended_at``
    (``prepare_for_execution`` wrote the start fields). It was the largest RQ cost of the worker per job."""
    ttl = job.result_ttl or _RQ_RESULT_TTL_S
    job.set_status(JobStatus.FINISHED, pipeline=pipe)
    pipe.hset(job.key, "ended_at", utcformat(job.ended_at or now()))
    Result.create(job, Result.Type.SUCCESSFUL, ttl, return_value=result.model_dump(mode="json"),
                  worker_name=worker_name, pipeline=pipe)
    job.finished_job_registry.add(job, ttl, pipe)
    job.cleanup(ttl, pipeline=pipe, remove_from_queue=False)
