"""``POST /api/infer`` behind the route: cache tiers, validation on a miss, then claim-or-attach.

Order matters for cost and for safety:
1. cheap checks (size, magic bytes) and a hash of the uploaded bytes — no decode;
2. exact lookups, L1 (Redis) then L2 (SQLite, promoted to L1 on a hit): a repeat costs no decode, and
   only images that were validated and answered before can be in the cache;
3. full validation (decode, pixel cap, animation, corruption) — a refused request writes nothing;
4. for ``cache=near``, pHashes and a near-duplicate lookup;
5. one Redis transaction that either attaches to the job already queued/running for this key (coalescing)
   or stores the images, the request record, the in-flight marker and the RQ job together.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass

from redis.client import Pipeline
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT
from rq.job import Job, Retry
from starlette.concurrency import run_in_threadpool

from cache import near
from cache.codec import as_bytes, as_text
from cache.keys import cache_key, image_digest, near_bucket
from gateway import metrics
from gateway.backend import Backend
from gateway.errors import TooManyRequestsError, UnavailableError
from gateway.images import ImageInfo, inspect, sniff
from gateway.intake import Submission
from worker.constants import (
    CACHE_PREFIX,
    IDEMPOTENCY_PREFIX,
    IMAGE_PREFIX,
    INFER_FUNC,
    INFLIGHT_PREFIX,
    JOB_REFS_PREFIX,
    NEAR_PREFIX,
    REQUEST_PREFIX,
    TENANT_INFLIGHT_PREFIX,
)
from worker.contract import CacheMode, ImageRef, InferJob, JobResult

_PENDING_RQ_STATES = (b"queued", b"started", b"scheduled", b"deferred")


@dataclass(frozen=True)
class Answered:
    """The request was answered from cache."""

    request_id: str
    result: JobResult
    x_cache: str
    digests: list[str]
    near_match: bool = False


@dataclass(frozen=True)
class Accepted:
    """The request is queued (MISS) or attached to an identical job in flight (COALESCED)."""

    request_id: str
    job_id: str
    x_cache: str
    digests: list[str]


@dataclass(frozen=True)
class Replayed:
    """An ``Idempotency-Key`` seen before: the request it created."""

    request_id: str
    x_cache: str = "IDEMPOTENT"


@dataclass(frozen=True)
class _Plan:
    request_id: str
    tenant: str
    key: str
    digests: list[str]
    submission: Submission
    bucket: str | None
    idem_key: str | None


def idempotency_key(tenant: str, header: str) -> str:
    """Redis key of a client's Idempotency-Key, scoped to its tenant and hashed (keys are arbitrary text)."""
    return f"{IDEMPOTENCY_PREFIX}{tenant}:{hashlib.sha256(header.encode()).hexdigest()}"


def new_request_id() -> str:
    """Random and unguessable (128 bits): knowing one request id tells nothing about another."""
    return secrets.token_urlsafe(16)


async def submit(backend: Backend, submission: Submission, tenant: str,
                 idem_key: str | None = None) -> Answered | Accepted | Replayed:
    """Answer from cache, attach to an identical job in flight, or enqueue a new job."""
    if idem_key is not None and (seen := await backend.aredis.get(idem_key)) is not None:
        return Replayed(request_id=as_text(seen))
    limits = backend.image_limits
    for index, data in enumerate(submission.images):
        sniff(data, limits, _param(submission, index))
    digests = await _digests(submission.images)
    plan = _plan(backend, submission, tenant, digests, idem_key)
    mode = submission.params.cache
    if mode is not CacheMode.OFF:
        hit = await _lookup_exact(backend, plan)
        if hit is not None:
            return hit
    infos = await run_in_threadpool(_inspect_all, submission, backend)
    if mode is CacheMode.NEAR:
        hit = await _lookup_near(backend, plan)
        if hit is not None:
            return hit
    await _check_backlog(backend)
    outcome = await run_in_threadpool(_enqueue_or_attach, backend, plan, infos)
    if isinstance(outcome, _JustCached):
        return await _answer(backend, plan, outcome.raw, "HIT-L1", near_match=False)
    return outcome


# BLAKE3 hashes about 10 MB/ms here: below this many bytes a thread-pool hop costs more than the hash.
_INLINE_HASH_BYTES = 1 << 20


async def _digests(images: list[bytes]) -> list[str]:
    if sum(len(data) for data in images) <= _INLINE_HASH_BYTES:
        return [image_digest(data) for data in images]
    return await run_in_threadpool(lambda: [image_digest(data) for data in images])


def _param(submission: Submission, index: int) -> str:
    return f"{submission.image_field}[{index}]"


def _plan(backend: Backend, submission: Submission, tenant: str, digests: list[str],
          idem_key: str | None) -> _Plan:
    settings = backend.settings
    scope = "shared" if settings.shared_cache else f"tenant:{tenant}"
    common = {"scope": scope, "model": settings.model, "prompt": submission.params.prompt,
              "sampling": submission.sampling}
    key = cache_key(image_digests=digests, **common)  # type: ignore[arg-type]
    bucket = near_bucket(image_count=len(digests), **common)  # type: ignore[arg-type]
    return _Plan(request_id=new_request_id(), tenant=tenant, key=key, digests=digests,
                 submission=submission, bucket=bucket, idem_key=idem_key)


def _inspect_all(submission: Submission, backend: Backend) -> list[ImageInfo]:
    return [inspect(data, backend.image_limits, _param(submission, index))
            for index, data in enumerate(submission.images)]


async def _lookup_exact(backend: Backend, plan: _Plan) -> Answered | None:
    raw = await backend.aredis.get(CACHE_PREFIX + plan.key)
    tier = "HIT-L1"
    if raw is None:
        raw = await run_in_threadpool(backend.l2.get, plan.key)
        tier = "HIT-L2"
        if raw is not None:
            await backend.aredis.set(CACHE_PREFIX + plan.key, raw, ex=backend.settings.l1_ttl_s)
    if raw is None:
        return None
    return await _answer(backend, plan, as_bytes(raw), tier, near_match=False)


async def _lookup_near(backend: Backend, plan: _Plan) -> Answered | None:
    phashes = await run_in_threadpool(lambda: [near.phash_hex(data) for data in plan.submission.images])
    limit = backend.settings.near_max_distance
    members = await backend.aredis.zrevrange(NEAR_PREFIX + str(plan.bucket), 0, 255)
    for member in members:
        entry = json.loads(as_text(member))
        if near.within(entry["p"], phashes, limit):
            raw = await backend.aredis.get(CACHE_PREFIX + entry["k"])
            if raw is not None:
                return await _answer(backend, plan, as_bytes(raw), "HIT-L1", near_match=True)
    found = await run_in_threadpool(backend.l2.near, str(plan.bucket), phashes, limit)
    if found is None:
        return None
    return await _answer(backend, plan, found[1], "HIT-L2", near_match=True)


async def _answer(backend: Backend, plan: _Plan, raw: bytes, tier: str, near_match: bool) -> Answered:
    result = JobResult.model_validate_json(raw)
    # The request id of a cache hit can be polled like any other.
    record: dict[FieldT, EncodableT] = {"tenant": plan.tenant, "created_at": time.time(), "result": raw,
                                        "x_cache": tier}
    key = REQUEST_PREFIX + plan.request_id
    async with backend.aredis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=record)
        pipe.expire(key, backend.settings.result_ttl_s)
        if plan.idem_key is not None:
            pipe.set(plan.idem_key, plan.request_id, nx=True, ex=backend.settings.result_ttl_s)
        await pipe.execute()
    metrics.CACHE_HITS.labels(tier="near" if near_match else tier.removeprefix("HIT-").lower()).inc()
    return Answered(request_id=plan.request_id, result=result, x_cache=tier, digests=plan.digests,
                    near_match=near_match)


async def _check_backlog(backend: Backend) -> None:
    depth = await backend.aredis.llen(backend.queue.key)
    if depth >= backend.settings.max_queue_depth:
        raise UnavailableError("backlog_full", "the queue is full; retry later", None, {"Retry-After": "5"})


@dataclass(frozen=True)
class _JustCached:
    """The identical job finished between the first cache lookup and the enqueue transaction."""

    raw: bytes


def _enqueue_or_attach(backend: Backend, plan: _Plan, infos: list[ImageInfo]) -> Accepted | Replayed | _JustCached:
    """One optimistic transaction (WATCH/MULTI): attach, or store everything and enqueue. Blocking.

    Watching the in-flight marker, the L1 entry, the idempotency key and the tenant's in-flight set makes
    coalescing, idempotency and the quota exact however many gateway replicas race.
    """
    coalesce = plan.submission.params.cache is not CacheMode.OFF
    inflight_key = INFLIGHT_PREFIX + plan.key
    watched = [k for k in (inflight_key if coalesce else None, CACHE_PREFIX + plan.key if coalesce else None,
                           plan.idem_key, TENANT_INFLIGHT_PREFIX + plan.tenant) if k]
    with backend.redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(*watched)  # type: ignore[no-untyped-call]
                return _attach_or_enqueue(pipe, backend, plan, infos, coalesce)
            except WatchError:
                continue


def _attach_or_enqueue(pipe: Pipeline, backend: Backend, plan: _Plan, infos: list[ImageInfo],
                       coalesce: bool) -> Accepted | Replayed | _JustCached:
    if plan.idem_key is not None and (seen := pipe.get(plan.idem_key)) is not None:
        pipe.reset()
        return Replayed(request_id=as_text(seen))
    # The worker's finish script fills L1 and clears the in-flight marker atomically, so with both watched
    # this sees the job running (attach), or its answer (serve it), never neither.
    if coalesce and (cached := pipe.get(CACHE_PREFIX + plan.key)) is not None:
        pipe.reset()
        return _JustCached(raw=as_bytes(cached))
    existing = _live_job(pipe, INFLIGHT_PREFIX + plan.key) if coalesce else None
    if existing is not None:
        pipe.multi()
        _record(pipe, backend, plan, existing)
        pipe.incr(JOB_REFS_PREFIX + existing)
        pipe.execute()
        metrics.COALESCED.inc()
        return Accepted(request_id=plan.request_id, job_id=existing, x_cache="COALESCED", digests=plan.digests)
    _check_quota(pipe, backend, plan.tenant)
    job_id = _enqueue(pipe, backend, plan, infos, coalesce)
    metrics.CACHE_MISSES.inc()
    return Accepted(request_id=plan.request_id, job_id=job_id, x_cache="MISS", digests=plan.digests)


def _check_quota(pipe: Pipeline, backend: Backend, tenant: str) -> None:
    limit = backend.settings.tenant_max_inflight
    if limit and int(pipe.zcard(TENANT_INFLIGHT_PREFIX + tenant)) >= limit:
        pipe.reset()
        raise TooManyRequestsError("inflight_quota", f"this tenant already has {limit} requests in flight",
                                   None, {"Retry-After": "5"})


def _live_job(pipe: Pipeline, inflight_key: str) -> str | None:
    raw = pipe.get(inflight_key)
    if raw is None:
        return None
    job_id = as_text(raw)
    status = pipe.hget(Job.key_for(job_id), "status")
    return job_id if status in _PENDING_RQ_STATES else None


def _enqueue(pipe: Pipeline, backend: Backend, plan: _Plan, infos: list[ImageInfo], coalesce: bool) -> str:
    settings = backend.settings
    job_id = uuid.uuid4().hex
    with backend.redis.pipeline(transaction=False) as probe:
        for digest in plan.digests:
            probe.exists(IMAGE_PREFIX + digest)
        stored = [bool(count) for count in probe.execute()]
    job = _make_job(backend, plan, infos, job_id)
    pipe.multi()
    for digest, data, present in zip(plan.digests, plan.submission.images, stored, strict=True):
        if present:
            pipe.expire(IMAGE_PREFIX + digest, settings.image_ttl_s)
        else:
            pipe.set(IMAGE_PREFIX + digest, data, ex=settings.image_ttl_s)
    _record(pipe, backend, plan, job_id)
    pipe.set(JOB_REFS_PREFIX + job_id, 1, ex=settings.request_ttl_s)
    pipe.zadd(TENANT_INFLIGHT_PREFIX + plan.tenant, {job_id: time.time()})
    pipe.expire(TENANT_INFLIGHT_PREFIX + plan.tenant, settings.request_ttl_s)
    if plan.idem_key is not None:
        pipe.set(plan.idem_key, plan.request_id, ex=settings.request_ttl_s)
    if coalesce:
        pipe.set(INFLIGHT_PREFIX + plan.key, job_id, ex=settings.request_ttl_s)
    backend.queue.enqueue_job(job, pipeline=pipe)
    pipe.execute()
    return job_id


def _make_job(backend: Backend, plan: _Plan, infos: list[ImageInfo], job_id: str) -> Job:
    settings = backend.settings
    params = plan.submission.params
    now = time.time()
    payload = InferJob(
        model=settings.model, prompt=params.prompt, sampling=plan.submission.sampling,
        images=[ImageRef(digest=digest, media_type=info.media_type, size=len(data), width=info.width,
                         height=info.height)
                for digest, info, data in zip(plan.digests, infos, plan.submission.images, strict=True)],
        cache_key=plan.key, cache_mode=params.cache,
        near_bucket=plan.bucket if params.cache is not CacheMode.OFF else None, tenant=plan.tenant,
        enqueued_at=now, deadline_at=now + params.deadline_s if params.deadline_s else None,
        result_ttl_s=settings.result_ttl_s, cache_ttl_s=settings.l1_ttl_s)
    retry = Retry(max=settings.job_retries) if settings.job_retries else None
    # The description is what `rq info` and logs show: the key prefix, never the prompt.
    return backend.queue.create_job(
        INFER_FUNC, kwargs={"job": payload.model_dump(mode="json")}, job_id=job_id,
        timeout=settings.job_timeout_s, result_ttl=settings.result_ttl_s, failure_ttl=settings.result_ttl_s,
        retry=retry, description=f"infer key={plan.key[:16]}")


def _record(pipe: Pipeline, backend: Backend, plan: _Plan, job_id: str) -> None:
    key = REQUEST_PREFIX + plan.request_id
    mapping: dict[FieldT, EncodableT] = {
        "tenant": plan.tenant, "job_id": job_id, "created_at": time.time(), "cache_key": plan.key,
        "cache_mode": plan.submission.params.cache.value, "near_bucket": plan.bucket or ""}
    if plan.submission.params.deadline_s:
        mapping["deadline_at"] = time.time() + plan.submission.params.deadline_s
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, backend.settings.request_ttl_s)
