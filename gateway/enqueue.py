"""A plan's enqueue: one script for a new job (``enqueue_at_once``), or the one transaction that attaches it to
the identical job in flight or enqueues its job (``enqueue_or_attach``, also for a long video's window and merge
jobs). Both compose the same writes, so coalescing, quotas and idempotency are the same for every request.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.client import Pipeline
from redis.exceptions import WatchError
from redis.typing import EncodableT
from rq.job import Dependency, Job, JobStatus, Retry
from rq.queue import Queue
from starlette.concurrency import run_in_threadpool

from cache.codec import as_bytes, as_text
from gateway import eta, media, metrics, records, webhooks
from gateway.backend import Backend
from gateway.config import GatewaySettings
from gateway.errors import TooManyRequestsError, UnavailableError
from gateway.plans import Plan
from worker import events, merges
from worker.constants import INFER_FUNC, INFLIGHT_PREFIX, TENANT_INFLIGHT_PREFIX
from worker.contract import (
    CONTRACT_VERSION,
    START_META,
    CacheMode,
    InferJob,
    Priority,
    RequestRecord,
    Span,
    StreamEvent,
    start_meta,
)

_PENDING_RQ_STATES = (b"queued", b"started", b"scheduled", b"deferred")


@dataclass(frozen=True)
class Accepted:
    """The request is queued (MISS) or attached to an identical job in flight (COALESCED)."""

    request_id: str
    job_id: str
    x_cache: str
    digests: list[str]
    # Where a new job stood when it was enqueued (None for one attached to a job already in flight).
    standing: eta.Standing | None = None
    # The served model whose pool runs the job.
    model: str | None = None


@dataclass(frozen=True)
class Replayed:
    """An ``Idempotency-Key`` seen before: the request it created."""

    request_id: str
    x_cache: str = "IDEMPOTENT"


@dataclass(frozen=True)
class JustCached:
    """The identical job finished between the first cache lookup and the enqueue transaction."""

    raw: bytes


def enqueue_or_attach(backend: Backend, plan: Plan, phashes: list[str] | None,
                       standing: eta.Standing) -> Accepted | Replayed | JustCached:
    """One optimistic transaction (WATCH/MULTI): attach, or store everything and enqueue. Blocking.

    Watching the in-flight marker, the L1 entry, the idempotency key and the tenant's in-flight set makes
    coalescing, idempotency and the quota exact however many gateway replicas race.
    """
    coalesce = plan.submission.params.cache is not CacheMode.OFF
    inflight_key = INFLIGHT_PREFIX + plan.key
    l1_key = backend.cache.l1_key(plan.key)
    watched = [k for k in (inflight_key if coalesce else None, l1_key if coalesce else None,
                           plan.idem_key, TENANT_INFLIGHT_PREFIX + plan.tenant) if k]
    with backend.redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(*watched)  # type: ignore[no-untyped-call]
                return _attach_or_enqueue(pipe, backend, plan, coalesce, phashes, standing)
            except WatchError:
                continue


@dataclass(frozen=True)
class _Seen:
    """What the transaction decides on, read in one round trip after WATCH (any connection may read: the
    watch is what guards the values until EXEC)."""

    replayed: bytes | None
    cached: bytes | None
    inflight: bytes | None
    tenant_inflight: int


def _read(backend: Backend, plan: Plan, coalesce: bool) -> _Seen:
    with backend.redis.pipeline(transaction=False) as read:
        read.get(plan.idem_key or "")
        read.get(backend.cache.l1_key(plan.key) if coalesce else "")
        read.get(INFLIGHT_PREFIX + plan.key if coalesce else "")
        read.zcard(TENANT_INFLIGHT_PREFIX + plan.tenant)
        replayed, cached, inflight, count = read.execute()
    return _Seen(replayed if plan.idem_key else None, cached if coalesce else None, inflight if coalesce else None,
                 int(count))


def _attach_or_enqueue(pipe: Pipeline, backend: Backend, plan: Plan, coalesce: bool, phashes: list[str] | None,
                       standing: eta.Standing) -> Accepted | Replayed | JustCached:
    seen = _read(backend, plan, coalesce)
    if seen.replayed is not None:
        pipe.reset()
        return Replayed(request_id=as_text(seen.replayed))
    # The worker's finish script fills L1 and clears the in-flight marker atomically, so with both watched
    # this sees the job running (attach), or its answer (serve it), never neither.
    if seen.cached is not None:
        pipe.reset()
        return JustCached(raw=as_bytes(seen.cached))
    existing = _live_job(backend, seen.inflight)
    if existing is not None:
        pipe.multi()
        _record(pipe, backend, plan, existing, "COALESCED")
        records.attach(pipe, existing, plan.request_id)
        _watch_end(pipe, backend, plan, existing)
        pipe.execute()
        metrics.COALESCED.inc()
        return Accepted(request_id=plan.request_id, job_id=existing, x_cache="COALESCED", digests=plan.digests,
                        model=plan.target.model)
    if plan.in_quota:
        _check_quota(pipe, backend, seen.tenant_inflight)
    waiting = _waiting_windows(pipe, backend, plan)
    job_id = _enqueue(pipe, backend, plan, coalesce, phashes, standing, waiting)
    metrics.CACHE_MISSES.inc()
    return Accepted(request_id=plan.request_id, job_id=job_id, x_cache="MISS", digests=plan.digests,
                    standing=standing, model=plan.target.model)


def _check_quota(pipe: Pipeline, backend: Backend, inflight: int) -> None:
    try:
        check_quota(backend, inflight)
    except TooManyRequestsError:
        pipe.reset()
        raise


def backlog_cap(settings: GatewaySettings, priority: Priority) -> int:
    """How many jobs a queue of this priority may hold before new requests are refused (503)."""
    return settings.max_queue_depth if priority is Priority.INTERACTIVE else settings.max_batch_queue_depth


def backlog_full() -> UnavailableError:
    return UnavailableError("backlog_full", "the queue is full; retry later", None, {"Retry-After": "5"})


def check_quota(backend: Backend, inflight: int) -> None:
    """429 if a tenant with ``inflight`` requests in flight may have no more."""
    limit = backend.settings.tenant_max_inflight
    if limit and inflight >= limit:
        raise TooManyRequestsError("inflight_quota", f"this tenant already has {limit} requests in flight",
                                   None, {"Retry-After": "5"})


def _waiting_windows(pipe: Pipeline, backend: Backend, plan: Plan) -> dict[str, Span]:
    """A merge job's windows still pending (job id -> span), read under WATCH: a window that ends before the
    transaction commits aborts it, so the merge job is deferred on exactly the windows that have not ended."""
    jobs = {window.job_id: Span(start_s=window.start_s, end_s=window.end_s)
            for window in plan.windows if window.output is None and window.job_id}
    if not jobs:
        return {}
    pipe.watch(*[Job.key_for(job_id) for job_id in jobs])  # type: ignore[no-untyped-call]
    with backend.redis.pipeline(transaction=False) as read:
        for job_id in jobs:
            read.hget(Job.key_for(job_id), "status")
        statuses = read.execute()
    return {job_id: span for (job_id, span), status in zip(jobs.items(), statuses, strict=True)
            if status in _PENDING_RQ_STATES}


def _live_job(backend: Backend, inflight: bytes | None) -> str | None:
    """The job the in-flight marker names, while RQ still has it pending."""
    if inflight is None:
        return None
    job_id = as_text(inflight)
    status = backend.redis.hget(Job.key_for(job_id), "status")
    return job_id if status in _PENDING_RQ_STATES else None


def _enqueue(pipe: Pipeline, backend: Backend, plan: Plan, coalesce: bool, phashes: list[str] | None,
             standing: eta.Standing, waiting: dict[str, Span]) -> str:
    settings = backend.settings
    job_id = uuid.uuid4().hex
    job = _make_job(backend, plan, job_id, phashes, list(waiting))
    pipe.multi()
    for image in plan.images:
        if image.data is not None:
            media.keep_bytes(pipe, backend.scripts, image.digest, image.data, settings.image_ttl_s)
        else:
            media.touch_bytes(pipe, image.digest, settings.image_ttl_s)
    _job_writes(pipe, backend, plan, job, coalesce, standing)
    if plan.windows:
        merges.register(pipe, job_id, len(plan.windows), waiting, settings.request_ttl_s)
        if len(waiting) < len(plan.windows):
            # Windows answered already (from cache, or ended while the others were enqueued) show at once.
            events.append(backend.scripts, pipe, job_id, [(StreamEvent.PROGRESS, events.dumps(
                {"done": len(plan.windows) - len(waiting), "total": len(plan.windows)}))], settings.request_ttl_s)
    if waiting:
        # RQ's own deferral (what Queue.enqueue does for a job with unfinished dependencies), inside this
        # transaction: the deferred registry, the windows' dependents sets, the job saved as deferred.
        job.set_status(JobStatus.DEFERRED, pipeline=pipe)
        job.register_dependency(pipeline=pipe)
        job.save(pipeline=pipe)
    else:
        backend.queues_of(plan.target.model)[plan.priority].enqueue_job(job, pipeline=pipe)
    pipe.execute()
    return job_id


def _job_writes(pipe: Pipeline, backend: Backend, plan: Plan, job: Job, coalesce: bool,
                standing: eta.Standing) -> None:
    """Queue what a new job's enqueue writes besides its images and RQ's own records: the request's record,
    the job's stream and request set, the webhook, the quota entry, the idempotency key, the in-flight
    marker. Plain commands only: ``enqueue_at_once`` runs them inside its script."""
    settings = backend.settings
    _record(pipe, backend, plan, job.id, "MISS")
    records.first_of_job(pipe, job.id, plan.request_id, settings.request_ttl_s)
    events.add_queued(pipe, job.id, standing.body(), settings.request_ttl_s)
    _watch_end(pipe, backend, plan, job.id)
    if plan.in_quota:
        pipe.zadd(TENANT_INFLIGHT_PREFIX + plan.tenant, {job.id: time.time()})
        pipe.expire(TENANT_INFLIGHT_PREFIX + plan.tenant, settings.request_ttl_s)
    if plan.idem_key is not None:
        pipe.set(plan.idem_key, plan.request_id, ex=settings.request_ttl_s)
    if coalesce:
        pipe.set(INFLIGHT_PREFIX + plan.key, job.id, ex=settings.request_ttl_s)


async def enqueue_at_once(backend: Backend, plan: Plan, phashes: list[str] | None,
                          standing: eta.Standing) -> Accepted | Replayed | JustCached | None:
    """``enqueue_or_attach`` of a request without windows in one round trip on the event loop: one script
    (``worker/lua/enqueue.lua``) makes the same decisions on the same keys and runs the same writes, composed
    here by the same code into a pipeline that is never sent. None when an identical job is in flight:
    attaching to it is ``enqueue_or_attach``'s (the rarer path, left to one implementation)."""
    if plan.windows or plan.span is not None:
        raise ValueError("a long video's jobs are enqueued by enqueue_or_attach")
    settings = backend.settings
    coalesce = plan.submission.params.cache is not CacheMode.OFF
    queue = backend.queues_of(plan.target.model)[plan.priority]
    if not queue.redis_server_version:
        # RQ asks the server once per queue (INFO, blocking) when it first enqueues: not on the loop.
        await run_in_threadpool(queue.get_redis_server_version)
    job = _make_job(backend, plan, uuid.uuid4().hex, phashes, [])
    keys = [plan.idem_key or TENANT_INFLIGHT_PREFIX + plan.tenant, backend.cache.l1_key(plan.key),
            INFLIGHT_PREFIX + plan.key, TENANT_INFLIGHT_PREFIX + plan.tenant, queue.key,
            *[media.blob_key(image.digest) for image in plan.images]]
    args: list[EncodableT] = ["1" if plan.idem_key else "0", "1" if coalesce else "0",
                              settings.tenant_max_inflight if plan.in_quota else 0, Job.redis_job_namespace_prefix,
                              settings.image_ttl_s, backlog_cap(settings, plan.priority),
                              *[image.data if image.data is not None else b"" for image in plan.images],
                              *_composed_writes(backend, plan, queue, job, coalesce, standing)]
    reply = await backend.ascripts.enqueue(keys=keys, args=args)
    outcome = as_text(reply[0])
    if outcome == "replayed":
        return Replayed(request_id=as_text(reply[1]))
    if outcome == "cached":
        return JustCached(raw=as_bytes(reply[1]))
    if outcome == "live":
        return None
    if outcome == "quota":
        check_quota(backend, int(reply[1]))  # raises: the script counted as check_quota does
    if outcome == "backlog":
        raise backlog_full()
    metrics.CACHE_MISSES.inc()
    return Accepted(request_id=plan.request_id, job_id=job.id, x_cache="MISS", digests=plan.digests,
                    standing=standing, model=plan.target.model)


def _composed_writes(backend: Backend, plan: Plan, queue: Queue, job: Job, coalesce: bool,
                     standing: eta.Standing) -> list[bytes | int]:
    """The transaction's writes of a new job besides its images, as the enqueue script's ARGV: recorded into a
    pipeline that is never sent, so RQ's own ``enqueue_job`` says what RQ writes."""
    with backend.redis.pipeline() as composed:
        composed.multi()  # as the transaction's: RQ's enqueue_job asks for one
        _job_writes(composed, backend, plan, job, coalesce, standing)
        queue.enqueue_job(job, pipeline=composed)
        return _flat(backend, [args for args, _ in composed.command_stack])


def _flat(backend: Backend, commands: list[tuple[Any, ...]]) -> list[bytes | int]:
    """Commands as the script's ARGV: each its word count, then its words encoded as redis-py sends them."""
    encode = backend.redis.get_encoder().encode
    flat: list[bytes | int] = []
    for command in commands:
        flat.append(len(command))
        flat.extend(encode(word) for word in command)  # type: ignore[no-untyped-call]
    return flat


def _watch_end(pipe: Pipeline, backend: Backend, plan: Plan, job_id: str) -> None:
    """A request with a webhook is delivered when its job ends (the finish script logs that end)."""
    if plan.webhook_url is not None:
        webhooks.register(pipe, plan.request_id, plan.tenant, plan.webhook_url, job_id,
                          backend.settings.request_ttl_s)


def _make_job(backend: Backend, plan: Plan, job_id: str, phashes: list[str] | None, waiting: list[str]) -> Job:
    settings = backend.settings
    params = plan.submission.params
    now = time.time()
    payload = InferJob(
        v=CONTRACT_VERSION, model=plan.target.model, adapter=plan.target.adapter,
        # A merge job reads its windows' answers, not frames.
        videos=[] if plan.windows else plan.videos, window=plan.span, windows=plan.windows,
        messages=plan.submission.messages,
        images=[image.ref for image in plan.images if image.ref is not None], sampling=plan.submission.sampling,
        task=plan.submission.task.value, response_format=plan.submission.response_format,
        cache_key=plan.key, cache_mode=params.cache,
        near_bucket=plan.bucket if params.cache is not CacheMode.OFF else None, phashes=phashes,
        tenant=plan.tenant, enqueued_at=now, deadline_at=now + params.deadline_s if params.deadline_s else None,
        result_ttl_s=settings.result_ttl_s, cache_ttl_s=settings.l1_ttl_s, priority=params.priority)
    retry = Retry(max=settings.job_retries) if settings.job_retries else None
    # The description is what `rq info` and logs show: the key prefix, never the prompt.
    return backend.queues_of(plan.target.model)[plan.priority].create_job(
        INFER_FUNC, kwargs={"job": payload.model_dump(mode="json", exclude_none=True)}, job_id=job_id,
        timeout=settings.job_timeout_s, result_ttl=settings.result_ttl_s, failure_ttl=settings.result_ttl_s,
        retry=retry, description=f"{'merge' if plan.windows else 'infer'} key={plan.key[:16]}",
        meta=None if plan.windows else {START_META: start_meta(payload)},
        depends_on=Dependency(jobs=waiting, allow_failure=True) if waiting else None)


def _record(pipe: Pipeline, backend: Backend, plan: Plan, job_id: str, x_cache: str) -> None:
    params = plan.submission.params
    record = RequestRecord(tenant=plan.tenant, created_at=time.time(), job_id=job_id, x_cache=x_cache,
                           cache_key=plan.key, cache_mode=params.cache, near_bucket=plan.bucket,
                           model=plan.target.model, has_webhook=plan.webhook_url is not None,
                           deadline_at=time.time() + params.deadline_s if params.deadline_s else None)
    records.write(pipe, plan.request_id, record, backend.settings.request_ttl_s)

