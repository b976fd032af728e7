"""Queue-only client: enqueue inference jobs on RQ the way the gateway does, and wait for their results.

It skips HTTP, multipart parsing, image validation and the cache lookups, so the difference between its
latency and the gateway's is the HTTP side's cost, and its drain rate is what one worker can do.
Completion is learnt the way the gateway's long-poll learns it: from the job id published on
``EVENTS_CHANNEL``, then the result document.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import suppress
from secrets import token_hex

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq.job import Job, Retry

from cache.keys import image_digest
from worker.completion import result_key
from worker.constants import EVENTS_CHANNEL, IMAGE_PREFIX, INFER_FUNC
from worker.contract import (
    START_META,
    CacheMode,
    ImageRef,
    InferJob,
    JobResult,
    JobState,
    Priority,
    SamplingParams,
    start_meta,
)
from worker.rqjobs import open_queues


def command_counts(redis: Redis) -> dict[str, int]:
    """Commands Redis has executed so far, by name (``INFO commandstats``; script and MULTI bodies included)."""
    stats = redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


class JobFailedError(RuntimeError):
    """A job ended other than ``done``."""


class QueueClient:
    """Enqueues jobs for ``model`` on the Redis at ``redis_url``; ``await start()`` before use."""

    def __init__(self, redis_url: str, model: str) -> None:
        self.redis = Redis.from_url(redis_url)
        self.aredis = AsyncRedis.from_url(redis_url)
        self.queue = open_queues(self.redis, model)[Priority.INTERACTIVE]
        self.model = model
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._image: ImageRef | None = None

    async def start(self, image: bytes, size: tuple[int, int]) -> None:
        """Store the image every job refers to, and subscribe to end events."""
        digest = image_digest(image)
        self.redis.set(IMAGE_PREFIX + digest, image, ex=3600)
        self._image = ImageRef(digest=digest, media_type="image/png", size=len(image), width=size[0],
                               height=size[1])
        subscribed = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(subscribed))
        await subscribed.wait()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with suppress(asyncio.CancelledError):
                await self._listener
        await self.aredis.aclose()
        self.redis.close()

    async def _listen(self, subscribed: asyncio.Event) -> None:
        async with self.aredis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(EVENTS_CHANNEL)
            subscribed.set()
            async for message in pubsub.listen():
                future = self._waiting.pop(message["data"].decode(), None)
                if future is not None and not future.done():
                    future.set_result(None)

    def make_job(self, index: int = 0) -> Job:
        """A job whose payload is what the gateway would enqueue for a distinct request (cache ``exact``)."""
        assert self._image is not None, "call start() first"
        now = time.time()
        payload = InferJob(model=self.model, prompt=f"queue-only probe {index}", images=[self._image],
                           sampling=SamplingParams(max_tokens=16), cache_key=token_hex(32),
                           cache_mode=CacheMode.EXACT, near_bucket=token_hex(32), tenant="public",
                           enqueued_at=now, result_ttl_s=3600, cache_ttl_s=600)
        return self.queue.create_job(INFER_FUNC, kwargs={"job": payload.model_dump(mode="json")},
                                     job_id=uuid.uuid4().hex, timeout=600, result_ttl=3600, failure_ttl=3600,
                                     retry=Retry(max=2), description="queue-only probe",
                                     meta={START_META: start_meta(payload)})

    def expect(self, job_ids: list[str]) -> list[asyncio.Future[None]]:
        """Futures that complete when each job's end event arrives; call before enqueueing."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in job_ids]
        self._waiting.update(zip(job_ids, futures, strict=True))
        return futures

    def enqueue(self, jobs: list[Job]) -> None:
        """Enqueue in one pipeline (blocking; one round trip)."""
        with self.redis.pipeline() as pipe:
            for job in jobs:
                self.queue.enqueue_job(job, pipeline=pipe)
            pipe.execute()

    async def result(self, job_id: str) -> JobResult:
        """The job's result document; raises ``JobFailedError`` unless it ended ``done``."""
        raw = await self.aredis.get(result_key(job_id))
        if raw is None:
            raise JobFailedError(f"job {job_id} ended without a result document")
        result = JobResult.model_validate_json(raw)
        if result.state is not JobState.DONE:
            raise JobFailedError(f"job {job_id} ended {result.state.value}")
        return result

    async def submit_and_wait(self, index: int, timeout_s: float = 60.0) -> float:
        """Enqueue one job, wait for its end and read its result; returns the latency in seconds."""
        job = self.make_job(index)
        started = time.perf_counter()
        (done,) = self.expect([job.id])
        self.enqueue([job])
        await asyncio.wait_for(done, timeout_s)
        await self.result(job.id)
        return time.perf_counter() - started
