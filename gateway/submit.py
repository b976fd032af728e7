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

import asyncio
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from cache import near
from cache.codec import as_bytes, as_text
from cache.keys import image_digest
from cache.tiers import Hit
from gateway import clips, enqueue, eta, media, metrics, models, plans, records, webhooks, windows
from gateway.backend import Backend
from gateway.enqueue import Accepted, JustCached, Replayed, enqueue_at_once, enqueue_or_attach
from gateway.errors import BadRequestError
from gateway.images import inspect, sniff
from gateway.intake import Submission, VideoParams
from gateway.limits import check_rate
from gateway.plans import Plan, PlanImage
from gateway.results import final_body
from worker.constants import IDEMPOTENCY_PREFIX
from worker.contract import CacheMode, ImageRef, JobResult, RequestRecord, VideoClip

__all__ = ["Accepted", "Answered", "Replayed", "admit", "idempotency_key", "idempotency_of", "submit"]


@dataclass(frozen=True)
class Answered:
    """The request was answered from cache: ``raw`` is the result document as cached."""

    request_id: str
    raw: bytes
    x_cache: str
    digests: list[str]
    near_match: bool = False

    @functools.cached_property
    def result(self) -> JobResult:
        """The result document read (``/api/infer`` answers an L1 hit from ``raw`` without it)."""
        return JobResult.model_validate_json(self.raw)


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
    sourced = await _clips(backend, submission, tenant)
    pieces = windows.split(backend, submission, sourced)
    window_s = (submission.params.video or VideoParams()).window_s
    plan = plans.build(backend, submission, tenant, images, idem_key, target, in_quota,
                       [clip for clip, _ in sourced], windowed=(pieces[0].video, window_s) if pieces else None)
    mode = submission.params.cache
    if mode is not CacheMode.OFF and (hit := await backend.cache.lookup(plan.key, _recording(backend, plan))):
        return await _answer(backend, plan, hit, recorded=hit.tier == "HIT-L1" and plan.webhook_url is None)
    # The queue's depth is read while the images decode in a thread: one wait instead of two.
    standing_read = asyncio.create_task(eta.for_new_job(backend, target.model, plan.priority))
    try:
        answered, phashes = await _miss_checks(backend, plan)
    except BaseException:
        _detach(standing_read)
        raise
    if answered is not None:
        _detach(standing_read)
        return answered
    depth, standing = await standing_read
    # Refused early on the depth just read; the enqueue script checks again, exactly.
    if depth + len(pieces) >= enqueue.backlog_cap(backend.settings, plan.priority):
        raise enqueue.backlog_full()
    outcome = await _queue_up(backend, plan, pieces, phashes, standing)
    if isinstance(outcome, JustCached):
        return await _answer(backend, plan, Hit(outcome.raw, "HIT-L1"))
    return outcome


async def _queue_up(backend: Backend, plan: Plan, pieces: list[windows.Piece], phashes: list[str] | None,
                    standing: eta.Standing) -> Accepted | Replayed | JustCached:
    """Enqueue the request's job (or a long video's window and merge jobs), or attach it to the identical job
    in flight."""
    if pieces:
        return await windows.fan_out(backend, plan, pieces, standing)
    outcome = await enqueue_at_once(backend, plan, phashes, standing)
    if outcome is None:  # an identical job is in flight: attach to it
        return await run_in_threadpool(enqueue_or_attach, backend, plan, phashes, standing)
    return outcome


def _detach(task: asyncio.Task[object]) -> None:
    """Let a read no longer needed finish on its own (cancelling a Redis command mid-reply would cost the
    connection), its outcome retrieved so that nothing is logged for it."""
    task.add_done_callback(lambda done: None if done.cancelled() else done.exception())


async def _miss_checks(backend: Backend, plan: Plan) -> tuple[Answered | None, list[str] | None]:
    """Full validation of the inline images, then for ``cache=near`` the pHashes and a near-duplicate lookup:
    (its answer if one was found, the pHashes)."""
    await run_in_threadpool(_inspect_inline, plan, backend)
    if plan.submission.params.cache is not CacheMode.NEAR:
        return None, None
    phashes = await _phashes(backend, plan)
    hit = await backend.cache.lookup_near(plan.bucket, phashes, backend.settings.near_max_distance)
    return (await _answer(backend, plan, hit) if hit is not None else None), phashes


async def _images(backend: Backend, submission: Submission, tenant: str) -> list[PlanImage]:
    """Digests of inline images (after their cheap checks) and resolved media ids, in order."""
    found: list[PlanImage] = []
    for source in submission.images:
        if source.data is not None:
            sniff(source.data, backend.image_limits, source.param)
            found.append(PlanImage(source=source, digest=source.digest or "", data=source.data))
        else:
            item = await media.resolve(backend, tenant, str(source.media_id), source.param)
            found.append(PlanImage(source=source, digest=item.record.digest, ref=item.image_ref()))
    inline = [image for image in found if image.data is not None and not image.digest]
    # BLAKE3 hashes about 10 MB/ms here: below a megabyte a thread-pool hop costs more than the hash.
    if sum(len(image.data or b"") for image in inline) <= 1 << 20:
        digests = [image_digest(image.data or b"") for image in inline]
    else:
        digests = await run_in_threadpool(lambda: [image_digest(image.data or b"") for image in inline])
    for image, digest in zip(inline, digests, strict=True):
        image.digest = digest
    return found


async def _clips(backend: Backend, submission: Submission, tenant: str) -> list[tuple[VideoClip, float]]:
    """The clip of each video part and how long the video lasts: its media resolved (tenant-bound, TTL
    refreshed) and its frames chosen."""
    video = submission.params.video or VideoParams()
    found = []
    for source in submission.videos:
        item = await media.resolve(backend, tenant, source.media_id, source.param, kind="video")
        found.append((clips.clip(item.record, video.fps, source.param), clips.duration_of(item.record)))
    return found


def _inspect_inline(plan: Plan, backend: Backend) -> None:
    """Decode every inline image fully (media were checked at upload). Blocking: run in a thread."""
    for image in plan.images:
        if image.data is not None and image.ref is None:
            info = inspect(image.data, backend.image_limits, image.source.param)
            image.ref = ImageRef(digest=image.digest, media_type=info.media_type, size=len(image.data),
                                 width=info.width, height=info.height)


async def _phashes(backend: Backend, plan: Plan) -> list[str]:
    datas = []
    for image in plan.images:
        data = image.data
        if data is None:
            data = as_bytes(await backend.aredis.get(media.blob_key(image.digest)) or b"")
        datas.append(data)
    return await run_in_threadpool(lambda: [near.phash_hex(data) for data in datas])


def _hit_record(plan: Plan, tier: str, result: JobResult | None) -> RequestRecord:
    # The request id of a cache hit can be polled (and streamed) like any other.
    return RequestRecord(tenant=plan.tenant, created_at=time.time(), x_cache=tier, result=result,
                         cache_key=plan.key, cache_mode=plan.submission.params.cache,
                         has_webhook=plan.webhook_url is not None)


def _recording(backend: Backend, plan: Plan) -> Callable[[str], Awaitable[bytes | None]] | None:
    """How the L1 entry is read: with the request's record written in the same round trip (a request with a
    webhook takes the longer path, which also queues the delivery)."""
    if plan.webhook_url is not None:
        return None

    async def read(l1_key: str) -> bytes | None:
        return await records.write_if_cached(backend.ascripts, plan.request_id, _hit_record(plan, "HIT-L1", None),
                                             l1_key, backend.settings.result_ttl_s, plan.idem_key)

    return read


async def _answer(backend: Backend, plan: Plan, hit: Hit, recorded: bool = False) -> Answered:
    """The answer of a cache hit; its record written here unless the L1 read already did (``recorded``)."""
    answered = Answered(request_id=plan.request_id, raw=hit.raw, x_cache=hit.tier, digests=plan.digests,
                        near_match=hit.near)
    if recorded:
        metrics.CACHE_HITS.labels(tier="l1").inc()
        return answered
    result = answered.result
    record = _hit_record(plan, hit.tier, result)
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
    return answered


