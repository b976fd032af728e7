"""The worker's main loop: take jobs from RQ and keep up to ``max_inflight`` of them on one engine.

Each job is its own asyncio task streaming from the engine; the engine (vLLM's AsyncLLM) batches every
request in flight into the same forward passes. Streamed text is buffered per job and appended to the
jobs' event streams every ``stream_flush_interval_s``, all jobs in one round trip, so deltas cost the
engine nothing per token. A job's own path (claim, start, end) runs on the event loop with the asyncio Redis
client; the blocking calls that remain (heartbeat, deltas, merges, RQ's rarer paths) run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.worker import Worker

from worker import capacity, endings, events, metrics
from worker.claims import ClaimRule
from worker.completion import Ending, result_key
from worker.config import WorkerSettings
from worker.constants import CANCEL_PREFIX, ENGINE_CALLS, IMAGE_PREFIX, INFER_FUNC, MAX_INFLIGHT_SEEN
from worker.contract import (
    CONTRACT_VERSION,
    START_META,
    ErrorCode,
    InferJob,
    JobResult,
    JobState,
    Priority,
    StreamEvent,
)
from worker.deltas import DeltaBuffer
from worker.engine import Engine, EngineError, EngineOutput, EngineRequest, VideoInput
from worker.finisher import Finisher
from worker.rqjobs import Claimed, Slots, aclaim, heartbeat, open_queues, requeue_unfinished, retry_window
from worker.scripts import AsyncLua, Scripts, source

log = logging.getLogger("vlq.worker")
# How long a slot that batch may not take waits for interactive work before the rule is asked again.
_CAPPED_BLOCK_S = 0.1
# vLLM's priority: lower is scheduled first.
_ENGINE_PRIORITY = {Priority.INTERACTIVE: 0, Priority.BATCH: 1}


@dataclass(frozen=True)
class _Media:
    """A job's image bytes and videos, read from Redis when it starts."""

    images: list[bytes]
    videos: list[VideoInput]


@dataclass(frozen=True)
class _Start:
    """What a claimed job starts with, read with the others claimed in the same round: its payload (or why it
    cannot run), whether it was canceled while queued, and its media (None if one expired)."""

    payload: InferJob | tuple[ErrorCode, str]
    canceled: bool = False
    media: _Media | None = None


class _EngineDiedError(Exception):
    """The engine process is gone; no job should be failed for it."""


class Runner:
    """Feeds RQ jobs to one engine, many at a time, until asked to stop; then drains."""

    def __init__(self, settings: WorkerSettings, engine: Engine, redis: Redis, name: str,
                 rq_worker: Worker | None = None, aredis: AsyncRedis | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis
        # The per-job path (claim, start, end) runs on the event loop with this client; the rest (heartbeat,
        # deltas, merges) stays on the blocking one in threads. Default: ``settings.redis_url``.
        self._owns_aredis = aredis is None
        self.aredis = aredis or AsyncRedis.from_url(settings.redis_url, health_check_interval=30)
        self._claim_script = AsyncLua(self.aredis, source("claim"))
        self.name = name
        self.model = settings.served_model_name
        self.queues = open_queues(redis, self.model)
        self.scripts = Scripts(redis)
        self.rule = ClaimRule(settings.max_inflight, settings.interactive_reserve, settings.batch_every)
        # Interactive claims since the last batch one (the rule's no-starvation turn).
        self._streak = 0
        self._rq_worker = rq_worker
        # Set whenever a job ends: the main loop waits on it while every slot is taken.
        self._freed = asyncio.Event()
        self._inflight: dict[str, Claimed] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self.deltas = DeltaBuffer(self.scripts, settings.stream_flush_interval_s)
        # A result is worth waiting for Redis to come back; only after the lease would the janitor act.
        self.finisher = Finisher(redis, self.aredis, self.scripts, self.deltas, name, rq_worker,
                                 settings.heartbeat_ttl_s * 4)
        # Jobs whose engine call answered (their end checks for a late cancel and counts the call).
        self._answered: set[str] = set()
        self.service = capacity.ServiceTime()
        # Set when the engine died: jobs go back to the queue and the process exits non-zero to be restarted.
        self.engine_died = False

    @property
    def inflight(self) -> int:
        """Jobs claimed and not yet ended."""
        return len(self._inflight)

    def request_stop(self) -> None:
        """Stop taking jobs; jobs in flight are finished (SIGTERM)."""
        self._stop.set()

    async def run(self) -> None:
        """Take and run jobs until stopped, then wait for those in flight."""
        background = [asyncio.create_task(self._heartbeat_loop()),
                      asyncio.create_task(self.deltas.run(self.redis)),
                      asyncio.create_task(self.finisher.run())]
        try:
            while not self._stop.is_set():
                free = self.settings.max_inflight - len(self._inflight)
                if free <= 0:
                    self._freed.clear()
                    await self._freed.wait()
                    continue
                try:
                    await self._take(free)
                except RedisError as exc:
                    # Redis restarting (AOF keeps the queue): wait for it rather than exit.
                    log.warning("cannot reach Redis to take jobs (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(1.0)
        finally:
            await self._drain()
            for task in background:
                task.cancel()
            await asyncio.to_thread(self._withdraw)
            if self._owns_aredis:
                await self.aredis.aclose()

    def _withdraw(self) -> None:
        with contextlib.suppress(RedisError):  # else the entry lapses by itself
            capacity.withdraw(self.redis, self.model, self.name)

    async def _take(self, free: int) -> None:
        """Claim jobs for the ``free`` slots in one go (the claim rule applied slot by slot, in Redis)."""
        batch_inflight = sum(1 for item in self._inflight.values() if item.priority is Priority.BATCH)
        room = max(self.rule.batch_cap - batch_inflight, 0)
        # Capped batch: look again soon, a batch slot may free; else block until interactive work arrives.
        block_s = _CAPPED_BLOCK_S if room <= 0 else float(self.settings.dequeue_timeout_s)
        slots = Slots(count=free, batch_room=room, streak=self._streak, batch_every=self.rule.batch_every)
        claimed = await self._claim_and_start(slots, block_s)
        for item, start in claimed:
            self._streak = 0 if item.priority is Priority.BATCH else self._streak + 1
            self._inflight[item.job.id] = item
            task = asyncio.create_task(self._run_job(item, start))
            self._tasks.add(task)
            task.add_done_callback(self._job_done)

    async def _claim_and_start(self, slots: Slots, block_s: float) -> list[tuple[Claimed, _Start]]:
        """Claim jobs for the free slots and read what each starts with: one round trip for all of them (the
        claim script registers them as started and reads each inference job's cancel flag and media, from
        the gateway's start entry), and one more for the inference jobs it could not start that way."""
        claimed = await aclaim(self.queues, self.aredis, self._claim_script, self.name,
                               self.settings.heartbeat_ttl_s, block_s, slots)
        payloads = [_job_payload(item) for item in claimed]
        starts: dict[str, _Start] = {}
        unread: list[tuple[Claimed, InferJob]] = []
        for item, payload in zip(claimed, payloads, strict=True):
            if not isinstance(payload, InferJob) or payload.windows:
                continue
            begun = item.begun
            # The entry is the gateway's copy of the payload's digests: its reads count only if it says the same.
            if begun is not None and _entry_digests(item) == payload.media_digests():
                starts[item.job.id] = _started(payload, begun.canceled, begun.media)
            else:
                unread.append((item, payload))
        if unread:  # rare (merge jobs need none): on the blocking client
            replies = await asyncio.to_thread(self._read_starts, unread)
            for index, (item, payload) in enumerate(unread):
                canceled, blobs, _ = replies[3 * index:3 * index + 3]
                starts[item.job.id] = _started(payload, bool(canceled), blobs if payload.media_digests() else [])
        return [(item, starts.get(item.job.id) or _Start(payload))
                for item, payload in zip(claimed, payloads, strict=True)]

    def _read_starts(self, unread: list[tuple[Claimed, InferJob]]) -> list[Any]:
        with self.redis.pipeline(transaction=False) as pipe:
            for item, payload in unread:
                _queue_start(pipe, self.scripts, item.job.id, payload)
            return pipe.execute()

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._freed.set()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        log.info("draining %d job(s) in flight", len(self._tasks))
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.drain_timeout_s)
        for task in pending:
            task.cancel()
        for claimed in list(self._inflight.values()):
            # Not finished within the grace period: give it back rather than lose it.
            await asyncio.to_thread(requeue_unfinished, claimed)
            log.warning("job %s handed back to the queue at drain timeout", claimed.job.id)

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._beat)
                await self._abort_canceled()
            except Exception:  # a Redis blip must not stop the heartbeat for good
                log.exception("heartbeat failed")
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    def _beat(self) -> None:
        heartbeat(self.scripts, list(self._inflight.values()), self.settings.heartbeat_ttl_s)
        if not self._stop.is_set():
            capacity.publish(self.redis, self.model, self.name, self.settings.max_inflight, self.service.mean,
                             self.settings.heartbeat_interval_s * 3)

    async def _abort_canceled(self) -> None:
        ids = list(self._inflight)
        if not ids:
            return
        flags = await asyncio.to_thread(self.redis.mget, [CANCEL_PREFIX + job_id for job_id in ids])
        for job_id, flag in zip(ids, flags, strict=True):
            claimed = self._inflight.get(job_id)
            if flag and claimed is not None:
                await self.engine.abort(claimed.execution.composite_key)

    async def _run_job(self, claimed: Claimed, start: _Start) -> None:
        job_id = claimed.job.id
        started = time.time()
        try:
            ending = await self._finish(claimed, await self._execute(claimed, start, started), started)
            if ending.result.state is JobState.DONE:
                self.service.observe(time.time() - started)
        except _EngineDiedError:
            log.error("the engine died; handing job %s back and stopping", job_id)
            self.engine_died = True
            self.request_stop()
            self.deltas.drop(job_id)
            await asyncio.to_thread(requeue_unfinished, claimed)
        except Exception:
            log.exception("job %s could not be finished; the janitor will sweep it", job_id)
        finally:
            self._inflight.pop(job_id, None)
            self._answered.discard(job_id)

    async def _execute(self, claimed: Claimed, start: _Start, started: float) -> Ending:
        job = claimed.job
        payload = start.payload
        if not isinstance(payload, InferJob):
            return endings.failed(job.id, None, payload[0], payload[1], started)
        refusal = self._refuse(payload, job.id, started)
        if refusal is not None:
            return refusal
        if payload.windows:
            return await asyncio.to_thread(self._merge, job.id, payload, started)
        if start.canceled:
            return endings.canceled(job.id, payload, started)
        media = start.media
        if media is None:
            return endings.failed(job.id, payload, ErrorCode.IMAGE_EXPIRED,
                                  "an image or video frame of this request expired before a worker took it", started)
        return await self._generate(claimed, payload, media, started)

    def _refuse(self, payload: InferJob, job_id: str, started: float) -> Ending | None:
        if payload.model != self.settings.served_model_name:
            return endings.failed(job_id, payload, ErrorCode.MODEL_MISMATCH,
                                  f"this worker serves {self.settings.served_model_name!r}", started)
        if payload.adapter is not None and payload.adapter not in self.settings.lora_adapters:
            return endings.failed(job_id, payload, ErrorCode.MODEL_MISMATCH,
                                  f"this worker does not serve the adapter {payload.adapter!r}", started)
        if payload.deadline_at is not None and started > payload.deadline_at:
            return endings.ended(job_id, payload, JobState.EXPIRED, ErrorCode.DEADLINE_EXCEEDED,
                                 "the request's deadline passed before a worker could start it", started)
        return None

    def _merge(self, job_id: str, payload: InferJob, started: float) -> Ending:
        """A merge job: its windows' results, read in one round trip, combined without the engine."""
        waited = [window.job_id for window in payload.windows if window.output is None and window.job_id]
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(CANCEL_PREFIX + job_id)
            pipe.mget([result_key(window_id) for window_id in waited] or [result_key("")])
            canceled, raws = pipe.execute()
        if canceled:
            return endings.canceled(job_id, payload, started)
        found = dict(zip(waited, raws, strict=False))
        ends = [JobResult.model_validate_json(raw) if (raw := found.get(window.job_id or "")) else None
                for window in payload.windows]
        return endings.merged(job_id, payload, ends, started)

    async def _generate(self, claimed: Claimed, payload: InferJob, media: _Media,
                        started: float) -> Ending:
        job_id = claimed.job.id
        request = EngineRequest(request_id=claimed.execution.composite_key, messages=payload.messages,
                                images=media.images, videos=media.videos, sampling=payload.sampling,
                                response_format=payload.response_format,
                                stream=self.settings.stream_deltas, priority=_ENGINE_PRIORITY[payload.priority],
                                adapter=payload.adapter)
        metrics.JOBS_INFLIGHT.inc()
        peak = len(self._inflight)
        engine_start = time.time()
        try:
            output, first_delta_at = await self._stream(job_id, request, payload, claimed.job.timeout)
        except TimeoutError:
            await self.engine.abort(request.request_id)
            return endings.failed(job_id, payload, ErrorCode.TIMEOUT, "the job ran past its timeout", started)
        except EngineError as exc:
            if self.engine.errored:
                raise _EngineDiedError from exc
            if await asyncio.to_thread(self._after_engine, job_id, peak):
                return endings.canceled(job_id, payload, started)
            return endings.failed(job_id, payload, exc.code, exc.message, started)
        finally:
            metrics.JOBS_INFLIGHT.dec()
        self._answered.add(job_id)
        return endings.done(job_id, payload, output, started, engine_start, first_delta_at)

    async def _stream(self, job_id: str, request: EngineRequest, payload: InferJob,
                      limit_s: float | None) -> tuple[EngineOutput, float | None]:
        first_delta_at: float | None = None
        async with asyncio.timeout(limit_s or None):
            async for chunk in self.engine.stream(request):
                if chunk.text:
                    first_delta_at = first_delta_at or time.time()
                    self.deltas.add(job_id, chunk.text, payload.result_ttl_s)
                if chunk.final is not None:
                    return chunk.final, first_delta_at
        raise EngineError(ErrorCode.ENGINE_ERROR, "The engine returned no output.")

    def _after_engine(self, job_id: str, peak: int) -> bool:
        """Count the engine call and check for a cancel, in one round trip. True if canceled."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(CANCEL_PREFIX + job_id)
            pipe.incr(ENGINE_CALLS)
            self.scripts.high_water(keys=[MAX_INFLIGHT_SEEN], args=[peak], client=pipe)
            return bool(pipe.execute()[0])

    async def _finish(self, claimed: Claimed, ending: Ending, started: float) -> Ending:
        """End the job with the finisher's next batch (or retry a failed window); how it ended."""
        if _retried_window(claimed, ending):
            self.deltas.drop(claimed.job.id)
            await asyncio.to_thread(retry_window, claimed)
            log.warning("window job %s failed (%s); retried", claimed.job.id,
                        ending.result.error.code if ending.result.error else ending.result.state.value)
            return ending
        return await self.finisher.end(claimed, ending, claimed.job.id in self._answered, started,
                                       len(self._inflight))


# A window that failed for one of these may answer on a second try (another worker, a calmer engine).
_RETRIED = frozenset({ErrorCode.ENGINE_ERROR.value, ErrorCode.ENGINE_OOM.value, ErrorCode.TIMEOUT.value})


def _retried_window(claimed: Claimed, ending: Ending) -> bool:
    """A failed window job is tried again while it has retries left; the request then waits for it."""
    error = ending.result.error
    return (ending.payload is not None and ending.payload.window is not None and bool(claimed.job.retries_left)
            and ending.result.state is JobState.FAILED and error is not None and error.code in _RETRIED)


def _queue_start(pipe: Pipeline, scripts: Scripts, job_id: str, payload: InferJob) -> None:
    """Queue a job's start (three replies): its cancel flag, its media's bytes, its ``running`` event."""
    pipe.exists(CANCEL_PREFIX + job_id)
    pipe.mget([IMAGE_PREFIX + digest for digest in payload.media_digests()] or [IMAGE_PREFIX])
    events.append(scripts, pipe, job_id, [(StreamEvent.RUNNING, "{}")], payload.result_ttl_s)


def _entry_digests(claimed: Claimed) -> object:
    entry = claimed.job.meta.get(START_META)
    return entry.get("media") if isinstance(entry, dict) else None


def _started(payload: InferJob, canceled: bool, blobs: list[bytes | None]) -> _Start:
    """A job's start: canceled?, and its images and video frames from the bytes of its media digests in order
    (no media if one expired)."""
    found = [blob for blob in blobs if isinstance(blob, bytes)]
    if len(found) != len(payload.media_digests()):
        return _Start(payload, canceled, None)
    images, frames = found[:len(payload.images)], iter(found[len(payload.images):])
    videos = [VideoInput(frames=[next(frames) for _ in clip.frames], times=clip.times, fps=clip.fps)
              for clip in payload.videos]
    return _Start(payload, canceled, _Media(images=images, videos=videos))


def _job_payload(claimed: Claimed) -> InferJob | tuple[ErrorCode, str]:
    """``_payload`` of a claimed job; a job whose data RQ cannot decode is a bad job too (read while its start
    records are queued: an exception there would leave them unwritten)."""
    try:
        func_name, raw = str(claimed.job.func_name), claimed.job.kwargs.get("job")
    except Exception:  # RQ's DeserializationError, or data that is not (func, args, kwargs)
        return ErrorCode.BAD_JOB, "job payload cannot be decoded"
    return _payload(func_name, raw)


def _payload(func_name: str, raw: object) -> InferJob | tuple[ErrorCode, str]:
    """The job's payload, or why it cannot be run (a newer contract is refused, not guessed at)."""
    if func_name != INFER_FUNC:
        return ErrorCode.BAD_JOB, "unknown job function"
    version = raw.get("v", 1) if isinstance(raw, dict) else 1
    if isinstance(version, int) and version > CONTRACT_VERSION:
        return ErrorCode.CONTRACT_VERSION, f"job contract v{version} is newer than this worker's v{CONTRACT_VERSION}"
    try:
        return InferJob.model_validate(raw)
    except (ValidationError, TypeError):
        return ErrorCode.BAD_JOB, "job payload does not match the contract"
