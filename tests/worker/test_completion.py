"""Ending a job on real Redis: the first result wins; cache, markers and quotas are updated with it."""

from __future__ import annotations

import time
from typing import Any

from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import Worker

from tests.conftest import assert_same_timings, redis_shape, redis_timings
from worker.completion import Ended, Ending, _publish, _rq_bookkeeping, end_jobs, publish_result, result_key
from worker.constants import (
    CACHE_PREFIX,
    CANCEL_PREFIX,
    ENDED_STREAM,
    INFER_FUNC,
    INFLIGHT_PREFIX,
    JOB_HOOKS_PREFIX,
    TENANT_INFLIGHT_PREFIX,
)
from worker.contract import (
    CacheMode,
    ErrorCode,
    InferJob,
    InferOutput,
    JobError,
    JobResult,
    JobState,
    Priority,
    SamplingParams,
    Usage,
)
from worker.rqjobs import Slots, claim, open_queues
from worker.scripts import Scripts


def payload(mode: CacheMode = CacheMode.EXACT) -> InferJob:
    return InferJob(model="m", prompt="p", images=[], sampling=SamplingParams(), cache_key="k" * 64,
                    cache_mode=mode, tenant="acme", enqueued_at=time.time(), result_ttl_s=60, cache_ttl_s=30)


def done(text: str) -> JobResult:
    return JobResult(state=JobState.DONE, finished_at=time.time(),
                     result=InferOutput(text=text, finish_reason="stop", usage=Usage(prompt_tokens=1,
                                                                                   completion_tokens=1)))


def test_first_result_wins_and_fills_cache_and_clears_markers(redis_client: Redis) -> None:
    job = payload()
    redis_client.set(INFLIGHT_PREFIX + job.cache_key, "job-1")
    redis_client.zadd(TENANT_INFLIGHT_PREFIX + "acme", {"job-1": 1.0})
    assert publish_result(redis_client, Ending("job-1", done("first"), job)) is True
    assert publish_result(redis_client, Ending("job-1", done("second"), job)) is False
    stored = JobResult.model_validate_json(redis_client.get(result_key("job-1")))
    assert stored.result is not None and stored.result.text == "first"
    cached = JobResult.model_validate_json(redis_client.get(CACHE_PREFIX + job.cache_key))
    assert cached.result is not None and cached.result.text == "first"
    assert 0 < redis_client.ttl(CACHE_PREFIX + job.cache_key) <= 30
    assert redis_client.get(INFLIGHT_PREFIX + job.cache_key) is None
    assert redis_client.zcard(TENANT_INFLIGHT_PREFIX + "acme") == 0


def test_failure_is_not_cached_and_leaves_another_jobs_marker(redis_client: Redis) -> None:
    job = payload()
    redis_client.set(INFLIGHT_PREFIX + job.cache_key, "job-2")  # a newer job now owns the key
    failed = JobResult(state=JobState.FAILED, finished_at=time.time(),
                       error=JobError(code=ErrorCode.ENGINE_OOM, message="out of memory"))
    assert publish_result(redis_client, Ending("job-1", failed, job)) is True
    assert redis_client.get(CACHE_PREFIX + job.cache_key) is None
    assert redis_client.get(INFLIGHT_PREFIX + job.cache_key) == b"job-2"


def test_an_end_is_logged_only_for_a_job_with_webhooks_and_only_by_the_first_writer(redis_client: Redis) -> None:
    job = payload()
    assert publish_result(redis_client, Ending("job-4", done("no hooks"), job)) is True
    assert redis_client.exists(ENDED_STREAM) == 0
    redis_client.sadd(JOB_HOOKS_PREFIX + "job-5", "request-1")
    failed = JobResult(state=JobState.FAILED, finished_at=time.time(),
                       error=JobError(code=ErrorCode.WORKER_LOST, message="lost"))
    assert publish_result(redis_client, Ending("job-5", failed, None)) is True
    assert publish_result(redis_client, Ending("job-5", done("late"), job)) is False
    assert [fields for _id, fields in redis_client.xrange(ENDED_STREAM)] == [{b"job": b"job-5"}]


def test_cache_off_results_are_not_cached(redis_client: Redis) -> None:
    job = payload(CacheMode.OFF)
    assert publish_result(redis_client, Ending("job-3", done("fresh"), job)) is True
    assert redis_client.get(CACHE_PREFIX + job.cache_key) is None


def test_end_job_writes_result_and_rq_records_together(redis_client: Redis) -> None:
    from rq.registry import FinishedJobRegistry, StartedJobRegistry

    from worker.completion import end_job
    from worker.constants import INFER_FUNC
    from worker.contract import Priority
    from worker.rqjobs import Slots, claim, open_queues
    from worker.scripts import Scripts

    QUEUE_NAME = "vlq-infer:some-model"
    pool = open_queues(redis_client, "some-model")
    job = payload()
    pool[Priority.INTERACTIVE].enqueue(INFER_FUNC, job=job.model_dump(mode="json"), job_id="job-9")
    (claimed,) = claim(pool, Scripts(redis_client), "w1", heartbeat_ttl_s=30, block_s=1,
                       slots=Slots(count=1, batch_room=1))
    assert StartedJobRegistry(QUEUE_NAME, connection=redis_client).count == 1
    assert end_job(redis_client, Ending("job-9", done("answer"), job), claimed.job, claimed.execution, "w1")
    assert StartedJobRegistry(QUEUE_NAME, connection=redis_client).count == 0
    assert FinishedJobRegistry(QUEUE_NAME, connection=redis_client).get_job_ids() == ["job-9"]
    assert redis_client.hget("rq:job:job-9", "status") == b"finished"
    assert JobResult.model_validate_json(redis_client.get(result_key("job-9"))).result.text == "answer"
    assert not end_job(redis_client, Ending("job-9", done("late"), job), claimed.job, None, "w2")
    assert JobResult.model_validate_json(redis_client.get(result_key("job-9"))).result.text == "answer"


def _ended_state(redis: Redis, result: JobResult, by_script: bool,
                 canceled: JobResult | None = None, flagged: bool = True) -> tuple[Any, ...]:
    """Claim a job and end it as done, by the finish script's RQ part or by RQ's own objects; what it left
    (every key's shape, timings, the job's and its result's values), then a clean slate. With ``canceled``,
    the client canceled while the engine answered: the script is offered it as the end instead, RQ's objects
    are given it (``flagged``: the cancel flag is set)."""
    pool = open_queues(redis, "m")
    job = payload()
    pool[Priority.INTERACTIVE].enqueue(INFER_FUNC, job=job.model_dump(mode="json"), job_id="j", result_ttl=600)
    (claimed,) = claim(pool, Scripts(redis), "w1", heartbeat_ttl_s=30, block_s=0, slots=Slots(count=1, batch_room=1))
    rq_worker = Worker([pool[Priority.INTERACTIVE]], connection=redis, name="w1", serializer=JSONSerializer)
    if canceled is not None and flagged:
        redis.set(CANCEL_PREFIX + "j", "1")
    if by_script:
        ending = Ending("j", result, job, if_canceled=canceled)
        assert end_jobs(redis, [(ending, claimed.job, claimed.execution)], "w1", rq_worker) == [
            Ended(written=True, canceled=canceled is not None and flagged)]
    else:
        with redis.pipeline() as pipe:
            _publish(pipe, Scripts(redis), Ending("j", canceled or result, job))
            _rq_bookkeeping(pipe, redis, claimed.job, claimed.execution, canceled or result, "w1", rq_worker)
            pipe.execute()
    names = {claimed.execution.id: "<execution>"}
    stored = Job.fetch("j", connection=redis, serializer=JSONSerializer)
    latest = stored.latest_result()
    state = (redis_shape(redis, names), redis_timings(redis, names), stored.get_status(),
             latest and (latest.type, latest.return_value, latest.worker_name),
             redis.hgetall("rq:worker:w1"), redis.get(result_key("j")))
    redis.flushdb()
    return state


def test_the_finish_script_ends_a_success_as_rqs_own_objects_do(redis_client: Redis) -> None:
    result = done("answer")
    by_script = _ended_state(redis_client, result, by_script=True)
    by_rq = _ended_state(redis_client, result, by_script=False)
    assert by_script[0] == by_rq[0]
    assert_same_timings(by_script[1], by_rq[1])
    assert by_script[2:] == by_rq[2:]
    assert by_script[2] == "finished" and by_script[4] == {b"successful_job_count": b"1"}
    assert JobResult.model_validate(by_script[3][1]).result.text == "answer"  # type: ignore[union-attr]
    # Ended everywhere: no execution, nothing started, the job in its finished registry.
    assert not any(key.startswith(("rq:execution:", "rq:wip:")) for key in by_script[0])
    assert by_script[0]["rq:finished:vlq-infer:m"][2] == ["j"]


def test_a_cancel_while_the_engine_answered_ends_the_job_canceled_in_the_same_step(redis_client: Redis) -> None:
    result, canceled = done("answer"), JobResult(state=JobState.CANCELED, finished_at=time.time(),
                                                 error=JobError(code=ErrorCode.CANCELED, message="canceled"))
    by_script = _ended_state(redis_client, result, by_script=True, canceled=canceled)
    by_rq = _ended_state(redis_client, result, by_script=False, canceled=canceled)
    assert by_script[0] == by_rq[0]
    assert_same_timings(by_script[1], by_rq[1])
    assert by_script[2:] == by_rq[2:]
    assert by_script[2] == "canceled" and by_script[4] == {b"failed_job_count": b"1"}
    assert JobResult.model_validate_json(by_script[5]).state is JobState.CANCELED
    # Not cached, the stream's last event is the cancel, the job in its canceled registry.
    assert not any(key.startswith(CACHE_PREFIX) for key in by_script[0])
    assert by_script[0]["rq:canceled:vlq-infer:m"][2] == ["j"]
    # Without the flag, the offered cancel is not taken.
    assert _ended_state(redis_client, result, by_script=True, canceled=canceled, flagged=False)[2] == "finished"
