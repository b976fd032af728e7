"""``POST /api/infer`` behind the route: cache tiers, validation on a miss, then claim-or-attach.

Order matters for cost and for safety:
1. cheap checks (size, magic bytes) and a hash of each inline image's bytes — no decode; media ids are
   resolved (tenant-bound, TTL refreshed) to the digest and metadata checked at upload;
2. exact lookups, L1 (Redis) then L2 (SQLite, promoted to L1 on a hit): a repeat costs no decode, and
   only images that were validated and answered before can be in the cache;
3. full validation of inline images (decode, pixel cap, animation, corruption) — a refused request
   writes nothing;
4. for ``cache=near``, pHashes (taken once, here, and carried in the job) and a near-duplicate lookup;
5. one Redis transaction that either attaches to the job already queued/running for this key (coalescing)
   or stores the images, the request record, the job's first stream event, the in-flight marker and the RQ
   job together.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.client import Pipeline
from redis.exceptions import WatchError
from rq.job import Job, Retry
from starlette.concurrency import run_in_threadpool

from cache import near
from cache.codec import as_bytes, as_text
from cache.keys import cache_key, image_digest, near_bucket
from cache.tiers import Hit
from gateway import clips, eta, media, metrics, models, records, webhooks
from gateway.backend import Backend
from gateway.errors import BadRequestError, TooManyRequestsError, UnavailableError
from gateway.images import inspect, sniff
from gateway.intake import Submission, VideoParams
from gateway.limits import check_rate
from gateway.messages import ImageInput
from gateway.results import final_body
from worker import events
from worker.constants import IDEMPOTENCY_PREFIX, INFER_FUNC, INFLIGHT_PREFIX, TENANT_INFLIGHT_PREFIX
from worker.contract import (
    CONTRACT_VERSION,
    CacheMode,
    ImagePart,
    ImageRef,
    InferJob,
    JobResult,
    Priority,
    RequestRecord,
    TextPart,
    VideoClip,
    VideoPart,
)

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
    # Where a new job stood when it was enqueued (None for one attached to a job already in flight).
    standing: eta.Standing | None = None
    # The served model whose pool runs the job.
    model: str | None = None


@dataclass(frozen=True)
class Replayed:
    """An ``Idempotency-Key`` seen before: the request it created."""

    request_id: str
    x_cache: str = "IDEMPOTENT"


@dataclass
class _Image:
    """One image of the request once its digest is known; ``ref`` once its metadata is."""

    source: ImageInput
    digest: str
    data: bytes | None = None
    ref: ImageRef | None = None


@dataclass(frozen=True)
class _Plan:
    request_id: str
    tenant: str
    key: str
    bucket: str
    images: list[_Image]
    submission: Submission
    idem_key: str | None
    target: models.Target
    videos: list[VideoClip]
    # False for Batch API lines: the batch driver meters them (batch_max_open_lines) instead of the
    # tenant's interactive in-flight quota, which a batch of thousands would otherwise fill.
    in_quota: bool = True

    @property
    def webhook_url(self) -> str | None:
        return self.submission.params.webhook_url

    @property
    def priority(self) -> Priority:
        return self.submission.params.priority

    @property
    def digests(self) -> list[str]:
        return [image.digest for image in self.images]


def idempotency_key(tenant: str, header: str) -> str:
    """Redis key of a client's Idempotency-Key, scoped to its tenant and hashed (keys are arbitrary text)."""
    return f"{IDEMPOTENCY_PREFIX}{tenant}:{hashlib.sha256(header.encode()).hexdigest()}"


def idempotency_of(header: str | None, tenant: str) -> str | None:
    """The Redis key of an ``Idempotency-Key`` header (None without one); 400 for a malformed header."""
    if header is None:
        return None
    if not 1 <= len(header) <= 255 or not header.isascii() or not header.isprintable():
        raise BadRequestError("invalid_idempotency_key", "Idempotency-Key is 1-255 printable ASCII characters",
                              "Idempotency-Key")
    return idempotency_key(tenant, header)


async def admit(backend: Backend, tenant: str) -> None:
    """Admission before a body is read: the tenant's rate limit (a live worker is required in ``submit``,
    once the body says which model)."""
    await check_rate(backend.aredis, tenant, backend.settings.rate_limit_per_minute)


def new_request_id() -> str:
    """Random and unguessable (128 bits): knowing one request id tells nothing about another."""
    return secrets.token_urlsafe(16)


async def submit(backend: Backend, submission: Submission, tenant: str, idem_key: str | None = None,
                 in_quota: bool = True) -> Answered | Accepted | Replayed:
    """Answer from cache, attach to an identical job in flight, or enqueue a new job."""
    if idem_key is not None and (seen := await backend.aredis.get(idem_key)) is not None:
        return Replayed(request_id=as_text(seen))
    target = models.resolve(backend.settings, submission.params.model)
    if backend.settings.require_live_worker:
        await backend.presence.require(backend.aredis, target.model)
    if submission.params.webhook_url is not None:
        await webhooks.check_target(backend.settings, submission.params.webhook_url, "webhook_url", tenant)
    images = await _images(backend, submission, tenant)
    clips = await _clips(backend, submission, tenant)
    plan = _plan(backend, submission, tenant, images, idem_key, target, in_quota, clips)
    mode = submission.params.cache
    if mode is not CacheMode.OFF and (hit := await backend.cache.lookup(plan.key)) is not None:
        return await _answer(backend, plan, hit)
    await run_in_threadpool(_inspect_inline, plan, backend)
    phashes = None
    if mode is CacheMode.NEAR:
        phashes = await _phashes(backend, plan)
        hit = await backend.cache.lookup_near(plan.bucket, phashes, backend.settings.near_max_distance)
        if hit is not None:
            return await _answer(backend, plan, hit)
    depth, standing = await eta.for_new_job(backend, target.model, plan.priority)
    cap = (backend.settings.max_queue_depth if plan.priority is Priority.INTERACTIVE
           else backend.settings.max_batch_queue_depth)
    if depth >= cap:
        raise UnavailableError("backlog_full", "the queue is full; retry later", None, {"Retry-After": "5"})
    outcome = await run_in_threadpool(_enqueue_or_attach, backend, plan, phashes, standing)
    if isinstance(outcome, _JustCached):
        return await _answer(backend, plan, Hit(outcome.raw, "HIT-L1"))
    return outcome


async def _images(backend: Backend, submission: Submission, tenant: str) -> list[_Image]:
    """Digests of inline images (after their cheap checks) and resolved media ids, in order."""
    found: list[_Image] = []
    for source in submission.images:
        if source.data is not None:
            sniff(source.data, backend.image_limits, source.param)
            found.append(_Image(source=source, digest="", data=source.data))
        else:
            item = await media.resolve(backend, tenant, str(source.media_id), source.param)
            found.append(_Image(source=source, digest=item.record.digest, ref=item.image_ref()))
    inline = [image for image in found if image.data is not None]
    # BLAKE3 hashes about 10 MB/ms here: below a megabyte a thread-pool hop costs more than the hash.
    if sum(len(image.data or b"") for image in inline) <= 1 << 20:
        digests = [image_digest(image.data or b"") for image in inline]
    else:
        digests = await run_in_threadpool(lambda: [image_digest(image.data or b"") for image in inline])
    for image, digest in zip(inline, digests, strict=True):
        image.digest = digest
    return found


async def _clips(backend: Backend, submission: Submission, tenant: str) -> list[VideoClip]:
    """The clip of each video part: its media resolved (tenant-bound, TTL refreshed) and its frames chosen."""
    video = submission.params.video or VideoParams()
    found = []
    for source in submission.videos:
        item = await media.resolve(backend, tenant, source.media_id, source.param, kind="video")
        found.append(clips.clip(item.record, video.fps, video.window_s, source.param))
    return found


def _key_part(part: TextPart | ImagePart | VideoPart, images: list[_Image], videos: list[VideoClip]) -> dict[str, Any]:
    """A part as the cache key sees it: images by digest, videos by their frames' digests and times."""
    if isinstance(part, ImagePart):
        return {"type": "image", "digest": images[part.image].digest}
    if isinstance(part, VideoPart):
        chosen = videos[part.video]
        return {"type": "video", "frames": chosen.frames, "times": chosen.times}
    return {"type": "text", "text": part.text}


def _plan(backend: Backend, submission: Submission, tenant: str, images: list[_Image],
          idem_key: str | None, target: models.Target | None = None, in_quota: bool = True,
          videos: list[VideoClip] | None = None) -> _Plan:
    settings = backend.settings
    target = target or models.resolve(settings, submission.params.model)
    videos = videos or []
    conversation = [{"role": message.role.value,
                     "content": [_key_part(part, images, videos) for part in message.content]}
                    for message in submission.messages]
    common: dict[str, Any] = {
        "scope": "shared" if settings.shared_cache else f"tenant:{tenant}", "model": target.name,
        "conversation": conversation, "task": submission.task.value,
        "response_format": submission.response_format.model_dump(mode="json"),
        "sampling": submission.sampling.model_dump(mode="json")}
    return _Plan(request_id=new_request_id(), tenant=tenant, key=cache_key(**common), bucket=near_bucket(**common),
                 images=images, submission=submission, idem_key=idem_key, target=target, in_quota=in_quota,
                 videos=videos)


def _inspect_inline(plan: _Plan, backend: Backend) -> None:
    """Decode every inline image fully (media were checked at upload). Blocking: run in a thread."""
    for image in plan.images:
        if image.data is not None and image.ref is None:
            info = inspect(image.data, backend.image_limits, image.source.param)
            image.ref = ImageRef(digest=image.digest, media_type=info.media_type, size=len(image.data),
                                 width=info.width, height=info.height)


async def _phashes(backend: Backend, plan: _Plan) -> list[str]:
    datas = []
    for image in plan.images:
        data = image.data
        if data is None:
            data = as_bytes(await backend.aredis.get(media.blob_key(image.digest)) or b"")
        datas.append(data)
    return await run_in_threadpool(lambda: [near.phash_hex(data) for data in datas])


async def _answer(backend: Backend, plan: _Plan, hit: Hit) -> Answered:
    result = JobResult.model_validate_json(hit.raw)
    # The request id of a cache hit can be polled (and streamed) like any other.
    record = RequestRecord(tenant=plan.tenant, created_at=time.time(), x_cache=hit.tier, result=result,
                           cache_key=plan.key, cache_mode=plan.submission.params.cache)
    async with backend.aredis.pipeline(transaction=True) as pipe:
        records.write(pipe, plan.request_id, record, backend.settings.result_ttl_s)
        if plan.idem_key is not None:
            pipe.set(plan.idem_key, plan.request_id, nx=True, ex=backend.settings.result_ttl_s)
        if plan.webhook_url is not None:
            webhooks.register(pipe, plan.request_id, plan.tenant, plan.webhook_url, None,
                              backend.settings.result_ttl_s)
        await pipe.execute()
    if plan.webhook_url is not None:
        # Answered now: nothing will end later, so the delivery is queued here.
        await webhooks.enqueue_delivery(backend, plan.request_id, plan.tenant, plan.webhook_url,
                                        final_body(plan.request_id, result, hit.tier))
    metrics.CACHE_HITS.labels(tier="near" if hit.near else hit.tier.removeprefix("HIT-").lower()).inc()
    return Answered(request_id=plan.request_id, result=result, x_cache=hit.tier, digests=plan.digests,
                    near_match=hit.near)


@dataclass(frozen=True)
class _JustCached:
    """The identical job finished between the first cache lookup and the enqueue transaction."""

    raw: bytes


def _enqueue_or_attach(backend: Backend, plan: _Plan, phashes: list[str] | None,
                       standing: eta.Standing) -> Accepted | Replayed | _JustCached:
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


def _attach_or_enqueue(pipe: Pipeline, backend: Backend, plan: _Plan, coalesce: bool, phashes: list[str] | None,
                       standing: eta.Standing) -> Accepted | Replayed | _JustCached:
    if plan.idem_key is not None and (seen := pipe.get(plan.idem_key)) is not None:
        pipe.reset()
        return Replayed(request_id=as_text(seen))
    # The worker's finish script fills L1 and clears the in-flight marker atomically, so with both watched
    # this sees the job running (attach), or its answer (serve it), never neither.
    if coalesce and (cached := pipe.get(backend.cache.l1_key(plan.key))) is not None:
        pipe.reset()
        return _JustCached(raw=as_bytes(cached))
    existing = _live_job(pipe, INFLIGHT_PREFIX + plan.key) if coalesce else None
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
        _check_quota(pipe, backend, plan.tenant)
    job_id = _enqueue(pipe, backend, plan, coalesce, phashes, standing)
    metrics.CACHE_MISSES.inc()
    return Accepted(request_id=plan.request_id, job_id=job_id, x_cache="MISS", digests=plan.digests,
                    standing=standing, model=plan.target.model)


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


def _enqueue(pipe: Pipeline, backend: Backend, plan: _Plan, coalesce: bool, phashes: list[str] | None,
             standing: eta.Standing) -> str:
    settings = backend.settings
    job_id = uuid.uuid4().hex
    job = _make_job(backend, plan, job_id, phashes)
    pipe.multi()
    for image in plan.images:
        if image.data is not None:
            media.keep_bytes(pipe, backend.scripts, image.digest, image.data, settings.image_ttl_s)
        else:
            media.touch_bytes(pipe, image.digest, settings.image_ttl_s)
    _record(pipe, backend, plan, job_id, "MISS")
    records.first_of_job(pipe, job_id, plan.request_id, settings.request_ttl_s)
    events.add_queued(pipe, job_id, standing.body(), settings.request_ttl_s)
    _watch_end(pipe, backend, plan, job_id)
    if plan.in_quota:
        pipe.zadd(TENANT_INFLIGHT_PREFIX + plan.tenant, {job_id: time.time()})
        pipe.expire(TENANT_INFLIGHT_PREFIX + plan.tenant, settings.request_ttl_s)
    if plan.idem_key is not None:
        pipe.set(plan.idem_key, plan.request_id, ex=settings.request_ttl_s)
    if coalesce:
        pipe.set(INFLIGHT_PREFIX + plan.key, job_id, ex=settings.request_ttl_s)
    backend.queues_of(plan.target.model)[plan.priority].enqueue_job(job, pipeline=pipe)
    pipe.execute()
    return job_id


def _watch_end(pipe: Pipeline, backend: Backend, plan: _Plan, job_id: str) -> None:
    """A request with a webhook is delivered when its job ends (the finish script logs that end)."""
    if plan.webhook_url is not None:
        webhooks.register(pipe, plan.request_id, plan.tenant, plan.webhook_url, job_id,
                          backend.settings.request_ttl_s)


def _make_job(backend: Backend, plan: _Plan, job_id: str, phashes: list[str] | None) -> Job:
    settings = backend.settings
    params = plan.submission.params
    now = time.time()
    payload = InferJob(
        v=CONTRACT_VERSION, model=plan.target.model, adapter=plan.target.adapter, videos=plan.videos,
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
        retry=retry, description=f"infer key={plan.key[:16]}")


def _record(pipe: Pipeline, backend: Backend, plan: _Plan, job_id: str, x_cache: str) -> None:
    params = plan.submission.params
    record = RequestRecord(tenant=plan.tenant, created_at=time.time(), job_id=job_id, x_cache=x_cache,
                           cache_key=plan.key, cache_mode=params.cache, near_bucket=plan.bucket,
                           model=plan.target.model,
                           deadline_at=time.time() + params.deadline_s if params.deadline_s else None)
    records.write(pipe, plan.request_id, record, backend.settings.request_ttl_s)
