"""``GET /api/result`` behind the route: where a request stands, waiting for it to end if asked.

State comes from our result document when the job has ended; before that from RQ's own job status, so
``queued``/``running`` mean what ``rq info`` says. A job RQ marked failed without our document (swept by
RQ's own registry cleanup) reads as ``failed`` with ``worker_lost``.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from rq.job import Job
from rq.serializers import JSONSerializer
from starlette.concurrency import run_in_threadpool

from cache.codec import as_text
from gateway.backend import Backend
from gateway.errors import GoneError, NotFoundError
from worker.completion import Ending, end_job, result_key
from worker.constants import CANCEL_PREFIX, JOB_REFS_PREFIX, REQUEST_PREFIX
from worker.contract import CacheMode, ErrorCode, InferJob, JobError, JobResult, JobState

_QUEUED = {b"queued", b"scheduled", b"deferred", b"created"}


@dataclass(frozen=True)
class View:
    """What a client is told about a request."""

    request_id: str
    state: JobState
    result: JobResult | None = None
    position: int | None = None
    x_cache: str | None = None
    # The job a pending request waits on (None once it ended): waiting and canceling act on it.
    job_id: str | None = None


async def view(backend: Backend, request_id: str, tenant: str) -> View:
    """The request's current state; 404 if unknown (or another tenant's), 410 if its result expired."""
    record = await backend.aredis.hgetall(REQUEST_PREFIX + request_id)
    if not record or as_text(record.get(b"tenant")) != tenant:
        raise NotFoundError("request_not_found", "no such request", "request_id")
    if b"result" in record:
        result = JobResult.model_validate_json(record[b"result"])
        return View(request_id, result.state, result, x_cache=as_text(record.get(b"x_cache")))
    if b"canceled" in record:
        return _ended(request_id, JobState.CANCELED, ErrorCode.CANCELED, "the request was canceled")
    job_id = as_text(record.get(b"job_id"))
    async with backend.aredis.pipeline(transaction=False) as pipe:
        pipe.get(result_key(job_id))
        pipe.hget(Job.key_for(job_id), "status")
        raw, status = await pipe.execute()
    if raw is not None:
        result = JobResult.model_validate_json(raw)
        await _fill_l2(backend, request_id, record, raw, result)
        return View(request_id, result.state, result, x_cache="MISS")
    current = await _pending(backend, request_id, job_id, status)
    deadline = float(as_text(record.get(b"deadline_at")) or "inf")
    if current.state is JobState.QUEUED and time.time() > deadline:
        # The worker that pops it will end it expired; the client need not wait for that.
        return _ended(request_id, JobState.EXPIRED, ErrorCode.DEADLINE_EXCEEDED,
                      "the request's deadline passed before a worker could start it")
    return current


def _ended(request_id: str, state: JobState, code: ErrorCode, message: str) -> View:
    result = JobResult(state=state, error=JobError(code=code, message=message), finished_at=time.time())
    return View(request_id, state, result)


async def cancel(backend: Backend, request_id: str, tenant: str) -> View:
    """Cancel a request. Its job stops (dequeued, or aborted in the engine) once no request needs it."""
    current = await view(backend, request_id, tenant)
    if current.state.is_final or current.job_id is None:
        return current
    job_id = current.job_id
    async with backend.aredis.pipeline(transaction=True) as pipe:
        pipe.hset(REQUEST_PREFIX + request_id, "canceled", 1)
        pipe.decr(JOB_REFS_PREFIX + job_id)
        _, refs = await pipe.execute()
    if int(refs) <= 0:
        await run_in_threadpool(_stop_job, backend, job_id)
    return await view(backend, request_id, tenant)


def _stop_job(backend: Backend, job_id: str) -> None:
    redis = backend.redis
    redis.set(CANCEL_PREFIX + job_id, 1, ex=backend.settings.request_ttl_s)
    if not redis.lrem(backend.queue.key, 1, job_id):
        return  # already running: the worker sees the flag and aborts the generation
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    payload = InferJob.model_validate(job.kwargs.get("job"))
    result = JobResult(state=JobState.CANCELED, finished_at=time.time(), model=payload.model,
                       error=JobError(code=ErrorCode.CANCELED, message="the request was canceled"))
    end_job(redis, Ending(job_id=job_id, result=result, payload=payload), job, None, "gateway")


async def wait_for_end(backend: Backend, request_id: str, tenant: str, wait_s: float) -> View:
    """Like ``view``, but wait up to ``wait_s`` for a pending request to end (no polling loop)."""
    current = await view(backend, request_id, tenant)
    deadline = time.monotonic() + wait_s
    while current.job_id is not None and (left := deadline - time.monotonic()) > 0:
        async with backend.waiter.watch(current.job_id) as ended:
            current = await view(backend, request_id, tenant)
            if current.state.is_final:
                break
            with suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), timeout=left)
        current = await view(backend, request_id, tenant)
    return current


async def _pending(backend: Backend, request_id: str, job_id: str, status: bytes | None) -> View:
    if status is None:
        raise GoneError("result_expired", "the result of this request has expired", "request_id")
    if status in _QUEUED:
        position = await backend.aredis.lpos(backend.queue.key, job_id)
        return View(request_id, JobState.QUEUED, position=position if isinstance(position, int) else None,
                    job_id=job_id)
    if status == b"started":
        return View(request_id, JobState.RUNNING, job_id=job_id)
    # RQ ended the job without our result document (its own abandoned-job sweep did it).
    error = JobError(code=ErrorCode.WORKER_LOST, message="the worker running this request was lost")
    return View(request_id, JobState.FAILED, JobResult(state=JobState.FAILED, error=error,
                                                       finished_at=time.time()))


async def _fill_l2(backend: Backend, request_id: str, record: dict[Any, Any], raw: bytes,
                   result: JobResult) -> None:
    # Workers cannot reach a gateway's local SQLite; the gateway that hands out a fresh answer keeps it.
    if result.state is not JobState.DONE or as_text(record.get(b"cache_mode")) in ("", CacheMode.OFF.value):
        return
    key = as_text(record.get(b"cache_key"))
    # Once per request, not on every poll of it.
    if await backend.aredis.hsetnx(REQUEST_PREFIX + request_id, "l2_filled", 1):
        bucket = as_text(record.get(b"near_bucket")) or None
        await run_in_threadpool(backend.l2.put, key, raw, bucket, result.phashes)
