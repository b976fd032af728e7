"""Long videos as windows across workers: one job per window, then one merge job for the request.

A video longer than ``video.window_s`` is answered window by window. Each window is an ordinary job with its
own exact cache key (its frames' digests and times, the prompt, the parameters), so a second question about
the same stretch is answered from cache and identical windows coalesce; any worker of the model may take any
window, so an hour is answered by as many workers as there are. The request's own job is a merge job that
RQ keeps deferred until its windows have ended (``Dependency(allow_failure=True)``; ``worker.merges``
releases it), then a worker combines the answers without the engine into ``result.segments`` and a timeline.

Each window job is held by an internal request (its own record, counted in the job's refs like any
coalesced request), so cancelling the request reaches every window no other request still wants.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from starlette.concurrency import run_in_threadpool

from gateway import clips, enqueue, eta, plans, results
from gateway.backend import Backend
from gateway.enqueue import Accepted, JustCached, Replayed
from gateway.errors import UnprocessableError
from gateway.intake import Submission, VideoParams
from gateway.plans import Plan
from worker.constants import TENANT_INFLIGHT_PREFIX
from worker.contract import CacheMode, JobResult, Span, VideoClip, WindowRef

_FAN_OUT_CONCURRENCY = 8


@dataclass(frozen=True)
class Piece:
    """One window of the request's long video: which video part, the stretch, and its frames."""

    video: int
    span: Span
    clip: VideoClip


def split(backend: Backend, submission: Submission, sourced: list[tuple[VideoClip, float]]) -> list[Piece]:
    """The windows of the request's video longer than one window (none if every video fits one); a 422 if
    more than one video is that long, or if it has too many windows."""
    window_s = (submission.params.video or VideoParams()).window_s
    long = [index for index, (_, duration) in enumerate(sourced) if duration > window_s]
    if not long:
        return []
    if len(long) > 1:
        raise UnprocessableError("video_too_long", f"{len(long)} videos of this request are longer than one "
                                 f"window ({window_s:g} s); at most one may be answered as windows",
                                 "video.window_s")
    clip, duration = sourced[long[0]]
    return [Piece(long[0], span, part) for span, part in
            clips.windows(clip, duration, window_s, backend.settings.video_max_windows, "video.window_s")]


async def fan_out(backend: Backend, whole: Plan, pieces: list[Piece],
                  standing: eta.Standing) -> Accepted | Replayed | JustCached:
    """Enqueue (or find answered, or attach to) each window's job, then the merge job over them."""
    await _check_quota(backend, whole)
    # Windows are enqueued a few at a time (each is its own transaction on its own keys): an hour of
    # windows is accepted in tens of milliseconds without taking every thread of the pool.
    limit = asyncio.Semaphore(_FAN_OUT_CONCURRENCY)

    async def one(piece: Piece) -> WindowRef:
        async with limit:
            return await _window(backend, whole, piece, standing)

    found = await asyncio.gather(*(one(piece) for piece in pieces), return_exceptions=True)
    refs = [ref for ref in found if isinstance(ref, WindowRef)]
    try:
        failure = next((item for item in found if isinstance(item, BaseException)), None)
        if failure is not None:
            raise failure
        outcome = await run_in_threadpool(enqueue.enqueue_or_attach, backend, replace(whole, windows=refs), None,
                                          standing)
    except BaseException:
        await results.withdraw(backend, refs)
        raise
    if not isinstance(outcome, Accepted) or outcome.x_cache != "MISS":
        # Another request's merge job answers this one (or already did): it holds its own windows.
        await results.withdraw(backend, refs)
    return outcome


async def _window(backend: Backend, whole: Plan, piece: Piece, standing: eta.Standing) -> WindowRef:
    videos = list(whole.videos)
    videos[piece.video] = piece.clip
    plan = plans.build(backend, whole.submission, whole.tenant, whole.images, None, whole.target, in_quota=False,
                       videos=videos, span=piece.span)
    span = {"start_s": piece.span.start_s, "end_s": piece.span.end_s}
    if whole.submission.params.cache is not CacheMode.OFF and (hit := await backend.cache.lookup(plan.key)):
        return WindowRef(**span, output=JobResult.model_validate_json(hit.raw).result)
    outcome = await run_in_threadpool(enqueue.enqueue_or_attach, backend, plan, None, standing)
    if isinstance(outcome, JustCached):
        return WindowRef(**span, output=JobResult.model_validate_json(outcome.raw).result)
    if isinstance(outcome, Replayed):  # a window plan has no idempotency key
        raise RuntimeError("a window job was replayed")
    return WindowRef(**span, job_id=outcome.job_id, request_id=plan.request_id)


async def _check_quota(backend: Backend, whole: Plan) -> None:
    """The tenant's in-flight quota, before any window is enqueued (the merge job's transaction checks it
    exactly again; if that refuses, the windows are given back)."""
    if whole.in_quota and backend.settings.tenant_max_inflight:
        enqueue.check_quota(backend, await backend.aredis.zcard(TENANT_INFLIGHT_PREFIX + whole.tenant))
