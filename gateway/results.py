"""``GET /api/result`` behind the route: where a request stands, waiting for it to end if asked.

State comes from the result document when the job has ended; before that from RQ's own job status, so
``queued``/``running`` mean what ``rq info`` says. A job RQ marked failed without our document (swept by
RQ's own registry cleanup) reads as ``failed`` with ``worker_lost``. The bodies built here are the ones
every interface answers with: polls, long-polls, the stream's terminal event.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from starlette.concurrency import run_in_threadpool

from gateway import eta, records
from gateway.backend import Backend
from gateway.errors import GoneError, NotFoundError
from worker.completion import Ending, end_job, result_key
from worker.constants import CANCEL_PREFIX
from worker.contract import ErrorCode, InferJob, JobError, JobResult, JobState, RequestRecord, Timings, WindowRef

_QUEUED = {b"queued", b"scheduled", b"deferred", b"created"}


@dataclass(frozen=True)
class View:
    """What a client is told about a request."""

    request_id: str
    state: JobState
    result: JobResult | None = None
    standing: eta.Standing | None = None
    x_cache: str = "MISS"
    # The job a pending request waits on (None once it ended): waiting, streaming and canceling act on it.
    job_id: str | None = None
    # Whether the request asked for a webhook (its record says; None: not known, an older record).
    has_webhook: bool | None = None

    @property
    def is_final(self) -> bool:
        return self.result is not None and self.state.is_final

    def body(self) -> dict[str, Any]:
        """The JSON body: the final body once ended, else status with position and estimate."""
        if self.result is not None and self.state.is_final:
            return final_body(self.request_id, self.result, self.x_cache)
        body: dict[str, Any] = {"request_id": self.request_id, "status": self.state.value}
        standing = self.standing or eta.Standing(position=None, eta_s=None, warming=False)
        body.update(standing.body())
        return body


def final_body(request_id: str, result: JobResult, x_cache: str) -> dict[str, Any]:
    """The body of an ended request (``GET /api/result`` 200, the stream's terminal event, a cache hit)."""
    return _final(request_id, result.state.value, x_cache, result.model, result.timings.model_dump(),
                  None if result.result is None else result.result.model_dump(mode="json", by_alias=True),
                  None if result.error is None else {"code": result.error.code, "message": result.error.message})


def _final(request_id: str, state: str, x_cache: str, model: str | None, timings: dict[str, Any],
           result: dict[str, Any] | None, error: dict[str, Any] | None) -> dict[str, Any]:
    """The one shape of a final body, from a result document's parts (read as a model or as stored JSON)."""
    body: dict[str, Any] = {"request_id": request_id, "status": state, "cached": x_cache.startswith("HIT"),
                            "x_cache": x_cache, "model": model, "timings": timings}
    if result is not None:
        body["result"] = result
    if error is not None:
        body["error"] = error
    return body


_RESULT_FIELDS = frozenset(JobResult.model_fields)
_TIMINGS_FIELDS = frozenset(Timings.model_fields)


def final_body_json(request_id: str, raw: bytes, x_cache: str) -> bytes | None:
    """``final_body`` of a cached answer, as JSON, straight from the stored document without building the
    model (a cache hit's answer is already JSON); None unless the document has exactly the fields this
    version writes and is a success, for the caller to take the model path (``final_body``)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if (not isinstance(doc, dict) or doc.keys() != _RESULT_FIELDS or doc["state"] != JobState.DONE.value
            or doc["error"] is not None or not isinstance(doc["timings"], dict)
            or doc["timings"].keys() != _TIMINGS_FIELDS):
        return None
    body = _final(request_id, doc["state"], x_cache, doc["model"], doc["timings"], doc["result"], None)
    # As Starlette's JSONResponse renders a body.
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def view(backend: Backend, request_id: str, tenant: str, with_standing: bool = True) -> View:
    """The request's current state; 404 if unknown (or another tenant's), 410 if its result expired."""
    return await _job_view(backend, await _stored(backend, request_id, tenant), with_standing)


async def _stored(backend: Backend, request_id: str, tenant: str) -> records.Stored:
    stored = await records.read(backend.aredis, request_id)
    if stored is None or stored.record.tenant != tenant:
        raise NotFoundError("request_not_found", "no such request", "request_id")
    return stored


async def _job_view(backend: Backend, stored: records.Stored, with_standing: bool, again: bool = False) -> View:
    """The state of a request whose record was read: from it (a cache hit, a cancel), else from its job.
    ``again``: the record was read earlier, so its cancel flag is read again with the job's state (a record
    changes in nothing else), in the same round trip. The view carries whether the record has a webhook."""
    return replace(await _state(backend, stored, with_standing, again), has_webhook=stored.record.has_webhook)


async def _state(backend: Backend, stored: records.Stored, with_standing: bool, again: bool) -> View:
    record, request_id = stored.record, stored.request_id
    if record.result is not None:
        return View(request_id, record.result.state, record.result, x_cache=record.x_cache)
    if stored.canceled:
        return _ended(request_id, JobState.CANCELED, ErrorCode.CANCELED, "the request was canceled")
    job_id = record.job_id or ""
    async with backend.aredis.pipeline(transaction=False) as pipe:
        pipe.get(result_key(job_id))
        pipe.hget(Job.key_for(job_id), "status")
        if again:
            records.read_canceled(pipe, request_id)
        raw, status, *canceled = await pipe.execute()
    if canceled and canceled[0]:
        return _ended(request_id, JobState.CANCELED, ErrorCode.CANCELED, "the request was canceled")
    if raw is not None:
        result = JobResult.model_validate_json(raw)
        return View(request_id, result.state, result, x_cache=record.x_cache)
    current = await _pending(backend, request_id, job_id, status, record, with_standing)
    if current.state is JobState.QUEUED and time.time() > (record.deadline_at or float("inf")):
        # The worker that pops it will end it expired; the client need not wait for that.
        return _ended(request_id, JobState.EXPIRED, ErrorCode.DEADLINE_EXCEEDED,
                      "the request's deadline passed before a worker could start it")
    return current


async def ended_many(backend: Backend, request_ids: list[str]) -> list[JobResult | None]:
    """The result of each request that ended (None while pending), in two round trips, for the batch driver.

    A request whose record or job is gone counts as ended (failed ``result_expired``): nothing more will come.
    """
    stored = await records.read_many(backend.aredis, request_ids)
    async with backend.aredis.pipeline(transaction=False) as pipe:
        for item in stored:
            job_id = item.record.job_id if item is not None else None
            pipe.get(result_key(job_id or ""))
            pipe.hget(Job.key_for(job_id or ""), "status")
        replies = await pipe.execute()
    return [_ended_result(item, raw, status) for item, raw, status in zip(stored, replies[::2], replies[1::2],
                                                                          strict=True)]


def _ended_result(stored: records.Stored | None, raw: object, status: object) -> JobResult | None:
    if stored is not None and stored.record.result is not None:
        return stored.record.result
    if isinstance(raw, bytes | str):
        return JobResult.model_validate_json(raw)
    if stored is not None and stored.canceled:
        return _ended("", JobState.CANCELED, ErrorCode.CANCELED, "the request was canceled").result
    if stored is None or status is None:
        return _ended("", JobState.FAILED, ErrorCode.RESULT_EXPIRED, "the result expired before it was read").result
    return None


def _ended(request_id: str, state: JobState, code: ErrorCode, message: str) -> View:
    result = JobResult(state=state, error=JobError(code=code, message=message), finished_at=time.time())
    return View(request_id, state, result)


async def cancel(backend: Backend, request_id: str, tenant: str) -> View:
    """Cancel a request. Its job stops (dequeued, or aborted in the engine) once no request needs it."""
    current = await view(backend, request_id, tenant, with_standing=False)
    if current.state.is_final or current.job_id is None:
        return current
    if await records.cancel(backend.aredis, request_id, current.job_id) <= 0:
        payload = await run_in_threadpool(stop_job, backend, current.job_id)
        if payload is not None:
            # A long video's merge job: every window it waits for is withdrawn too.
            await withdraw(backend, payload.windows)
    return await view(backend, request_id, tenant)


async def withdraw(backend: Backend, windows: list[WindowRef]) -> None:
    """Withdraw the internal requests holding these windows; a window no request wants any more stops."""
    for window in windows:
        if (window.job_id is not None and window.request_id is not None
                and await records.cancel(backend.aredis, window.request_id, window.job_id) <= 0):
            await run_in_threadpool(stop_job, backend, window.job_id)


def stop_job(backend: Backend, job_id: str) -> InferJob | None:
    """Stop a job no request wants: dequeued (or, deferred, taken off its dependencies) and ended canceled
    here, or flagged for the worker running it to abort. Returns its payload (None if it is gone). Blocking."""
    redis = backend.redis
    redis.set(CANCEL_PREFIX + job_id, 1, ex=backend.settings.request_ttl_s)
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        payload = InferJob.model_validate(job.kwargs.get("job"))
    except (NoSuchJobError, ValidationError, TypeError):
        return None
    dequeued = any(redis.lrem(queue.key, 1, job_id) for queue in backend.all_queues)
    if not dequeued and job.get_status(refresh=True) != JobStatus.DEFERRED:
        return payload  # already running: the worker sees the flag and aborts the generation
    result = JobResult(state=JobState.CANCELED, finished_at=time.time(), model=payload.model,
                       error=JobError(code=ErrorCode.CANCELED, message="the request was canceled"))
    end_job(redis, Ending(job_id=job_id, result=result, payload=payload), job, None, "gateway",
            scripts=backend.scripts)
    return payload


async def wait_for_end(backend: Backend, request_id: str, tenant: str, wait_s: float) -> View:
    """Like ``view``, but wait up to ``wait_s`` for a pending request to end (no polling loop)."""
    # The record is read once: after it only the job's state and the cancel flag can change. The watch is
    # registered before the first look at the job, so an end between that look and the wait is never missed
    # and needs no second look: 3 round trips for a request that ends while waited on.
    stored = await _stored(backend, request_id, tenant)
    job_id = stored.record.job_id
    if job_id is None or stored.record.result is not None or stored.canceled:
        return await _job_view(backend, stored, with_standing=False)
    deadline = time.monotonic() + wait_s
    async with backend.waiter.watch(job_id) as ended:
        current = await _job_view(backend, stored, with_standing=False)
        while current.job_id is not None and (left := deadline - time.monotonic()) > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), timeout=left)
            # Cleared before the look: an end from here on sets it again (a lost subscription wakes all).
            ended.clear()
            current = await _job_view(backend, stored, with_standing=False, again=True)
    if current.state is JobState.QUEUED and current.job_id is not None:
        return await _job_view(backend, stored, with_standing=True, again=True)
    return current


async def _pending(backend: Backend, request_id: str, job_id: str, status: bytes | None, record: RequestRecord,
                   with_standing: bool) -> View:
    x_cache = record.x_cache
    if status is None:
        raise GoneError("result_expired", "the result of this request has expired", "request_id")
    if status in _QUEUED:
        standing = await eta.for_job(backend, job_id, record.model) if with_standing else None
        return View(request_id, JobState.QUEUED, standing=standing, x_cache=x_cache, job_id=job_id)
    if status == b"started":
        return View(request_id, JobState.RUNNING, x_cache=x_cache, job_id=job_id)
    # RQ ended the job without our result document (its own abandoned-job sweep did it).
    error = JobError(code=ErrorCode.WORKER_LOST, message="the worker running this request was lost")
    return View(request_id, JobState.FAILED, JobResult(state=JobState.FAILED, error=error,
                                                       finished_at=time.time()), x_cache=x_cache)
