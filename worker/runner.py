"""The worker's main loop: take jobs from RQ and keep up to ``max_inflight`` of them on one engine.

Each job is its own asyncio task awaiting ``engine.generate``; the engine (vLLM's AsyncLLM) batches every
request in flight into the same forward passes. Redis calls are blocking (redis-py, RQ), so they run in
threads; the event loop only waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pydantic import ValidationError
from redis import Redis
from redis.exceptions import RedisError
from rq.worker import Worker

from cache.near import phash_hex
from worker import metrics
from worker.completion import Ending, end_job
from worker.config import WorkerSettings
from worker.constants import CANCEL_PREFIX, ENGINE_CALLS, IMAGE_PREFIX, INFER_FUNC, MAX_INFLIGHT_SEEN
from worker.contract import (
    ErrorCode,
    InferJob,
    InferOutput,
    JobError,
    JobResult,
    JobState,
    Timings,
    Usage,
)
from worker.engine import Engine, EngineError, EngineOutput, EngineRequest
from worker.rqjobs import Claimed, claim_next, heartbeat, open_queue, requeue_unfinished

log = logging.getLogger("vlq.worker")

# Raise a stored high-water mark only if the new value is higher.
_MAX_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class _EngineDiedError(Exception):
    """The engine process is gone; no job should be failed for it."""


class Runner:
    """Feeds RQ jobs to one engine, many at a time, until asked to stop; then drains."""

    def __init__(self, settings: WorkerSettings, engine: Engine, redis: Redis, name: str,
                 phash: Callable[[bytes], str] | None = phash_hex, rq_worker: Worker | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis
        self.name = name
        self.queue = open_queue(redis)
        self._phash = phash
        self._rq_worker = rq_worker
        self._slots = asyncio.Semaphore(settings.max_inflight)
        self._inflight: dict[str, Claimed] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
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
        beat = asyncio.create_task(self._heartbeat_loop())
        try:
            while not self._stop.is_set():
                await self._slots.acquire()
                try:
                    took = await self._take_one()
                except RedisError as exc:
                    # Redis restarting (AOF keeps the queue): wait for it rather than exit.
                    log.warning("cannot reach Redis to take jobs (%s); retrying", type(exc).__name__)
                    took = False
                    await asyncio.sleep(1.0)
                if not took:
                    self._slots.release()
        finally:
            await self._drain()
            beat.cancel()

    async def _take_one(self) -> bool:
        if self._stop.is_set():
            return False
        claimed = await asyncio.to_thread(
            claim_next, self.queue, self.name, self.settings.heartbeat_ttl_s, self.settings.dequeue_timeout_s)
        if claimed is None:
            return False
        self._inflight[claimed.job.id] = claimed
        task = asyncio.create_task(self._run_job(claimed))
        self._tasks.add(task)
        task.add_done_callback(self._job_done)
        return True

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        log.info("draining %d job(s) in flight", len(self._tasks))
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.drain_timeout_s)
        for task in pending:
            task.cancel()
        for claimed in list(self._inflight.values()):
            # Not finished within the grace period: give it back rather than lose it.
            await asyncio.to_thread(requeue_unfinished, self.queue, claimed)
            log.warning("job %s handed back to the queue at drain timeout", claimed.job.id)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                await asyncio.to_thread(heartbeat, self.redis, list(self._inflight.values()),
                                        self.settings.heartbeat_ttl_s)
                await self._abort_canceled()
            except Exception:  # a Redis blip must not stop the heartbeat for good
                log.exception("heartbeat failed")

    async def _abort_canceled(self) -> None:
        ids = list(self._inflight)
        if not ids:
            return
        flags = await asyncio.to_thread(self.redis.mget, [CANCEL_PREFIX + job_id for job_id in ids])
        for job_id, flag in zip(ids, flags, strict=True):
            claimed = self._inflight.get(job_id)
            if flag and claimed is not None:
                await self.engine.abort(claimed.execution.composite_key)

    async def _run_job(self, claimed: Claimed) -> None:
        job_id = claimed.job.id
        started = time.time()
        try:
            ending = await self._execute(claimed, started)
            await asyncio.to_thread(self._finish, claimed, ending)
        except _EngineDiedError:
            log.error("the engine died; handing job %s back and stopping", job_id)
            self.engine_died = True
            self.request_stop()
            await asyncio.to_thread(requeue_unfinished, self.queue, claimed)
        except Exception:
            log.exception("job %s could not be finished; the janitor will sweep it", job_id)
        finally:
            self._inflight.pop(job_id, None)

    async def _execute(self, claimed: Claimed, started: float) -> Ending:
        job = claimed.job
        if job.func_name != INFER_FUNC:
            return _failed(job.id, None, ErrorCode.BAD_JOB, "unknown job function", started)
        try:
            payload = InferJob.model_validate(job.kwargs.get("job"))
        except (ValidationError, TypeError):
            return _failed(job.id, None, ErrorCode.BAD_JOB, "job payload does not match the contract", started)
        refusal = self._refuse(payload, job.id, started)
        if refusal is not None:
            return refusal
        canceled, images = await asyncio.to_thread(self._fetch_inputs, job.id, payload)
        if canceled:
            return _ended(job.id, payload, JobState.CANCELED, ErrorCode.CANCELED, "the request was canceled",
                          started)
        if images is None:
            return _failed(job.id, payload, ErrorCode.IMAGE_EXPIRED,
                           "an image of this request expired before a worker took it", started)
        return await self._generate(claimed, payload, images, started)

    def _refuse(self, payload: InferJob, job_id: str, started: float) -> Ending | None:
        if payload.model != self.settings.served_model_name:
            return _failed(job_id, payload, ErrorCode.MODEL_MISMATCH,
                           f"this worker serves {self.settings.served_model_name!r}", started)
        if payload.deadline_at is not None and started > payload.deadline_at:
            return _ended(job_id, payload, JobState.EXPIRED, ErrorCode.DEADLINE_EXCEEDED,
                          "the request's deadline passed before a worker could start it", started)
        return None

    def _fetch_inputs(self, job_id: str, payload: InferJob) -> tuple[bool, list[bytes] | None]:
        """(canceled?, the images or None if one expired), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(CANCEL_PREFIX + job_id)
            pipe.mget([IMAGE_PREFIX + ref.digest for ref in payload.images] or [IMAGE_PREFIX])
            canceled, blobs = pipe.execute()
        if not payload.images:
            return bool(canceled), []
        images = [blob for blob in blobs if isinstance(blob, bytes)]
        return bool(canceled), images if len(images) == len(blobs) else None

    async def _generate(self, claimed: Claimed, payload: InferJob, images: list[bytes],
                        started: float) -> Ending:
        request = EngineRequest(request_id=claimed.execution.composite_key, prompt=payload.prompt,
                                images=images, sampling=payload.sampling)
        metrics.JOBS_INFLIGHT.inc()
        peak = len(self._inflight)
        engine_start = time.time()
        try:
            output = await asyncio.wait_for(self.engine.generate(request),
                                            timeout=claimed.job.timeout or None)
        except TimeoutError:
            await self.engine.abort(request.request_id)
            return _failed(claimed.job.id, payload, ErrorCode.TIMEOUT, "the job ran past its timeout", started)
        except EngineError as exc:
            if self.engine.errored:
                raise _EngineDiedError from exc
            canceled, _ = await asyncio.to_thread(self._after_engine, claimed.job.id, None, images, peak)
            if canceled:
                return _ended(claimed.job.id, payload, JobState.CANCELED, ErrorCode.CANCELED,
                              "the request was canceled", started)
            return _failed(claimed.job.id, payload, exc.code, exc.message, started)
        finally:
            metrics.JOBS_INFLIGHT.dec()
        canceled, phashes = await asyncio.to_thread(self._after_engine, claimed.job.id, payload, images, peak)
        if canceled:
            return _ended(claimed.job.id, payload, JobState.CANCELED, ErrorCode.CANCELED,
                          "the request was canceled", started)
        return _done(claimed.job.id, payload, output, started, engine_start, phashes)

    def _after_engine(self, job_id: str, payload: InferJob | None, images: list[bytes],
                      peak: int) -> tuple[bool, list[str] | None]:
        """Count the engine call, check for a cancel and take pHashes, in one thread hop and round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(CANCEL_PREFIX + job_id)
            pipe.incr(ENGINE_CALLS)
            pipe.eval(_MAX_LUA, 1, MAX_INFLIGHT_SEEN, peak)
            canceled = bool(pipe.execute()[0])
        if canceled or payload is None:
            return canceled, None
        return False, self._phashes(payload, images)

    def _phashes(self, payload: InferJob, images: list[bytes]) -> list[str] | None:
        if self._phash is None or payload.near_bucket is None:
            return None
        try:
            return [self._phash(image) for image in images]
        except Exception:  # a pHash is an optional extra; the answer stands without it
            return None

    def _finish(self, claimed: Claimed, ending: Ending) -> None:
        # A result is worth waiting for Redis to come back; only after the lease would the janitor act.
        deadline = time.monotonic() + self.settings.heartbeat_ttl_s * 4
        while True:
            try:
                end_job(self.redis, ending, claimed.job, claimed.execution, self.name, self._rq_worker)
                break
            except RedisError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("cannot reach Redis to finish job %s (%s); retrying", claimed.job.id,
                            type(exc).__name__)
                time.sleep(1.0)
        metrics.observe_ending(ending.result)


def _done(job_id: str, payload: InferJob, output: EngineOutput, started: float, engine_start: float,
          phashes: list[str] | None) -> Ending:
    now = time.time()
    result = JobResult(
        state=JobState.DONE, model=payload.model, finished_at=now,
        result=InferOutput(text=output.text, finish_reason=output.finish_reason,
                           usage=Usage(prompt_tokens=output.prompt_tokens,
                                       completion_tokens=output.completion_tokens)),
        timings=Timings(queue_wait_s=round(started - payload.enqueued_at, 4),
                        engine_s=round(now - engine_start, 4), total_s=round(now - payload.enqueued_at, 4)),
        phashes=phashes)
    return Ending(job_id=job_id, result=result, payload=payload, phashes=phashes)


def _ended(job_id: str, payload: InferJob | None, state: JobState, code: ErrorCode, message: str,
           started: float) -> Ending:
    now = time.time()
    timings = Timings(queue_wait_s=round(started - payload.enqueued_at, 4) if payload else None,
                      total_s=round(now - payload.enqueued_at, 4) if payload else None)
    result = JobResult(state=state, error=JobError(code=code, message=message), finished_at=now,
                       model=payload.model if payload else None, timings=timings)
    return Ending(job_id=job_id, result=result, payload=payload)


def _failed(job_id: str, payload: InferJob | None, code: ErrorCode, message: str, started: float) -> Ending:
    return _ended(job_id, payload, JobState.FAILED, code, message, started)
