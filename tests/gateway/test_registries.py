"""After a burst, RQ's registries match the jobs: the worker claims and ends many jobs per round trip
(``worker.rqjobs.claim``, ``worker.finisher``) and still writes every record RQ's own worker would."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from secrets import token_hex

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from cache.keys import image_digest
from tests.conftest import make_image
from tests.gateway.conftest import MODEL, ThreadWorker
from worker import merges
from worker.completion import result_key
from worker.constants import IMAGE_PREFIX, INFER_FUNC
from worker.contract import CacheMode, ErrorCode, ImageRef, InferJob, JobResult, JobState, Priority, SamplingParams
from worker.rqjobs import open_queues


def test_a_burst_ends_with_every_registry_telling_the_truth(
        redis_url: str, redis_client: Redis, worker_factory: Callable[..., ThreadWorker]) -> None:
    queue, jobs = _enqueued(redis_client, 300)
    worker = worker_factory(max_inflight=16)
    _wait_for_results(redis_client, jobs, 60)
    ids = {job.id for job in jobs}
    # Each job's own answer (the instant engine echoes its prompt), recorded as RQ's worker would.
    for index, job in enumerate(jobs):
        result = JobResult.model_validate_json(redis_client.get(result_key(job.id)) or b"")
        assert result.state is JobState.DONE and result.result is not None
        assert f"queue-only probe {index}'" in result.result.text
    assert set(FinishedJobRegistry(queue.name, connection=redis_client).get_job_ids()) == ids
    assert StartedJobRegistry(queue.name, connection=redis_client).get_job_ids() == []
    assert redis_client.llen(queue.key) == 0 and redis_client.llen(queue.intermediate_queue_key) == 0
    stored = [job for job in Job.fetch_many([job.id for job in jobs], connection=redis_client,
                                             serializer=JSONSerializer) if job]
    assert len(stored) == len(jobs) and {job.get_status() for job in stored} == {"finished"}
    for index, job in enumerate(stored):
        # The hash still holds the payload (the end rewrites only status and ended_at), the end is timed,
        # the job expires with its result, and RQ's result API answers what the result document says.
        assert job.kwargs["job"]["prompt"] == f"queue-only probe {index}"
        assert job.started_at is not None and job.ended_at is not None and job.ended_at >= job.started_at
        assert 0 < redis_client.ttl(job.key) <= 600
        latest = job.latest_result()
        assert latest is not None and latest.type is Result.Type.SUCCESSFUL
        assert JobResult.model_validate(latest.return_value) == JobResult.model_validate_json(
            redis_client.get(result_key(job.id)) or b"")
        # No ghost execution: a heartbeat taken while the job ran must not re-add it after it ended.
        assert redis_client.zcard(f"rq:executions:{job.id}") == 0
    assert worker.engine.calls == len(jobs)  # type: ignore[attr-defined]


def _enqueued(redis: Redis, count: int) -> tuple[Queue, list[Job]]:
    """``count`` distinct jobs on the interactive queue, as the gateway would enqueue them, sharing one image."""
    image = make_image((5, 6, 7), (16, 16))
    redis.set(IMAGE_PREFIX + image_digest(image), image, ex=600)
    ref = ImageRef(digest=image_digest(image), media_type="image/png", size=len(image), width=16, height=16)
    queue = open_queues(redis, MODEL)[Priority.INTERACTIVE]
    jobs = [_job(queue, ref, index) for index in range(count)]
    with redis.pipeline() as pipe:
        for job in jobs:
            queue.enqueue_job(job, pipeline=pipe)
        pipe.execute()
    return queue, jobs


def _wait_for_results(redis: Redis, jobs: list[Job], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and redis.exists(*[result_key(job.id) for job in jobs]) < len(jobs):
        time.sleep(0.05)


def _job(queue: Queue, image: ImageRef, index: int) -> Job:
    """What the gateway would enqueue for a distinct request."""
    payload = InferJob(model=MODEL, prompt=f"queue-only probe {index}", images=[image], sampling=SamplingParams(),
                       cache_key=token_hex(32), cache_mode=CacheMode.EXACT, tenant="public", enqueued_at=time.time(),
                       result_ttl_s=600, cache_ttl_s=600)
    return queue.create_job(INFER_FUNC, kwargs={"job": payload.model_dump(mode="json")}, job_id=uuid.uuid4().hex,
                            result_ttl=600, failure_ttl=600)


def test_an_undecodable_job_fails_alone_while_the_jobs_claimed_with_it_run(
        redis_client: Redis, worker_factory: Callable[..., ThreadWorker]) -> None:
    queue, jobs = _enqueued(redis_client, 3)
    # Planted or corrupted in Redis: neither RQ's zlib nor JSON.
    redis_client.hset(jobs[1].key, "data", b"\x00 not zlib, not JSON")
    worker_factory(max_inflight=4)
    _wait_for_results(redis_client, jobs, 30)
    results = [JobResult.model_validate_json(redis_client.get(result_key(job.id)) or b"") for job in jobs]
    assert [result.state for result in results] == [JobState.DONE, JobState.FAILED, JobState.DONE]
    assert results[1].error is not None and results[1].error.code == ErrorCode.BAD_JOB
    assert StartedJobRegistry(queue.name, connection=redis_client).get_job_ids() == []
    assert FailedJobRegistry(queue.name, connection=redis_client).get_job_ids() == [jobs[1].id]
    # Its end must not stop the ends batched with it (the window check read its data and raised).
    planted = Job.fetch_many([jobs[1].id], connection=redis_client, serializer=JSONSerializer)[0]
    assert planted is not None and not merges.is_window(planted)
