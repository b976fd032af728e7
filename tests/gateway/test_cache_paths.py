"""Cache semantics through the gateway: exact keys, tiers, near mode, coalescing, failures not cached."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from redis import Redis

from tests.gateway.conftest import INTERACTIVE_QUEUE, ThreadWorker
from tests.gateway.test_request_path import post
from worker.constants import CACHE_PREFIX, ENGINE_CALLS
from worker.contract import ErrorCode
from worker.engine import EngineError, EngineRequest, InstantEngine


def result_of(client: TestClient, response) -> dict:
    assert response.status_code == 202, response.text
    done = client.get(response.json()["result_url"] + "&wait=10")
    assert done.status_code == 200, done.text
    return done.json()


def screenshot(image_factory: Callable[..., bytes], digits: str) -> bytes:
    return image_factory((255, 255, 255), size=(320, 80), text=f"INVOICE TOTAL {digits}")


def test_screenshots_differing_by_one_digit_never_share_an_answer(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    worker_factory()
    one, other = screenshot(image_factory, "1,234.56"), screenshot(image_factory, "1,234.58")
    assert one != other
    first = post(client, [one], prompt="What is the total?")
    second = post(client, [other], prompt="What is the total?")
    assert second.headers["x-cache"] == "MISS"
    assert result_of(client, first)["result"]["text"] != result_of(client, second)["result"]["text"]
    assert int(redis_client.get(ENGINE_CALLS)) == 2


def test_near_mode_matches_lookalikes_only_when_asked(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes]) -> None:
    worker_factory()
    one, other = screenshot(image_factory, "1,234.56"), screenshot(image_factory, "1,234.58")
    result_of(client, post(client, [one], cache="near"))
    near = post(client, [other], cache="near")
    assert near.status_code == 200, near.text
    assert near.headers["x-cache-match"] == "near"
    exact = post(client, [other], cache="exact")
    assert exact.status_code == 202
    assert exact.headers["x-cache"] == "MISS"


def test_l2_answers_after_l1_expires_and_is_promoted(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    worker_factory()
    image = image_factory((9, 99, 199))
    accepted = post(client, [image]).json()
    # Nobody polls: L2 is filled because the job ended, not because an answer was handed out.
    l2 = client.app.state.backend.l2
    deadline = time.monotonic() + 10
    while l2.total_bytes == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert l2.total_bytes > 0
    answer = client.get(accepted["result_url"] + "&wait=10").json()
    for key in redis_client.scan_iter(CACHE_PREFIX + "*"):
        redis_client.delete(key)
    from_l2 = post(client, [image])
    assert from_l2.status_code == 200
    assert from_l2.headers["x-cache"] == "HIT-L2"
    assert from_l2.json()["result"] == answer["result"]
    assert post(client, [image]).headers["x-cache"] == "HIT-L1"


def test_cache_off_always_reaches_the_engine(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    worker_factory()
    image = image_factory((5, 5, 5))
    result_of(client, post(client, [image]))
    fresh = post(client, [image], cache="off")
    assert fresh.headers["x-cache"] == "MISS"
    result_of(client, fresh)
    assert int(redis_client.get(ENGINE_CALLS)) == 2


def test_ten_concurrent_identical_posts_make_one_engine_call(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    worker_factory(InstantEngine(delay_s=0.5))
    image = image_factory((77, 88, 99))
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: post(client, [image]), range(10)))
    assert sorted(r.headers["x-cache"] for r in responses).count("MISS") == 1
    assert {r.headers["x-cache"] for r in responses} <= {"MISS", "COALESCED", "HIT-L1"}
    answers = [result_of(client, r)["result"] for r in responses if r.status_code == 202]
    assert len({a["text"] for a in answers}) == 1
    assert int(redis_client.get(ENGINE_CALLS)) == 1
    assert len({r.json()["request_id"] for r in responses}) == 10


class FailingEngine(InstantEngine):
    """Test double whose every call fails like an over-long prompt."""

    async def stream(self, request: EngineRequest):
        self.calls += 1
        raise EngineError(ErrorCode.PROMPT_TOO_LONG, "the prompt is longer than the model accepts")
        yield  # an async generator, as the engine protocol has it


def test_failures_are_reported_and_not_cached(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes]) -> None:
    engine = FailingEngine()
    worker_factory(engine)
    image = image_factory((1, 1, 1))
    failed = result_of(client, post(client, [image]))
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "prompt_too_long"
    again = post(client, [image])
    assert again.status_code == 202
    assert again.headers["x-cache"] == "MISS"
    result_of(client, again)
    assert engine.calls == 2


def test_job_finishing_between_lookup_and_enqueue_is_served_not_rerun(
        client: TestClient, image_factory: Callable[..., bytes], redis_client: Redis) -> None:
    # The race: a request misses L1, then the identical job ends (L1 filled, in-flight marker cleared by one
    # script) before this request's enqueue transaction runs. It must get that answer, not a second job.
    import time

    from cache.keys import image_digest
    from gateway import enqueue, plans
    from gateway.eta import Standing
    from gateway.intake import InferParams, Submission
    from gateway.messages import ImageInput
    from worker.contract import ImagePart, JobResult, JobState, Message, ResponseFormat, Role, SamplingParams, TextPart

    backend = client.app.state.backend
    image = image_factory((31, 41, 59))
    messages = [Message(role=Role.USER, content=[ImagePart(image=0), TextPart(text="q")])]
    submission = Submission(params=InferParams(prompt="q"), sampling=SamplingParams(), messages=messages,
                            images=[ImageInput(param="image[0]", data=image)], response_format=ResponseFormat())
    images = [plans.PlanImage(source=submission.images[0], digest=image_digest(image), data=image)]
    plan = plans.build(backend, submission, "public", images, None)
    answer = JobResult(state=JobState.DONE, finished_at=time.time()).model_dump_json()
    redis_client.set(CACHE_PREFIX + plan.key, answer)
    outcome = enqueue.enqueue_or_attach(backend, plan, None, Standing(0, None, True))
    assert isinstance(outcome, enqueue.JustCached)
    assert outcome.raw == answer.encode()
    assert redis_client.llen(f"rq:queue:{INTERACTIVE_QUEUE}") == 0


def test_an_l1_hit_is_one_round_trip_and_its_request_reads_like_any_other(
        client_factory: Callable[..., TestClient], worker_factory: Callable[..., ThreadWorker],
        image_factory: Callable[..., bytes], redis_client: Redis) -> None:
    from loadtest.rqclient import command_counts

    client = client_factory(janitor_interval_s=3600)
    worker = worker_factory()
    image = image_factory((12, 34, 56))
    files = [("image", ("i.png", image, "image/png"))]
    answer = result_of(client, client.post("/api/infer", data={"prompt": "q"}, files=files))
    # Nothing else talks to Redis while the hit is counted (the fixture closes the worker's loop later).
    assert worker.runner is not None
    worker.loop.call_soon_threadsafe(worker.runner.request_stop)
    worker.thread.join(timeout=15)
    before = command_counts(redis_client)
    hit = client.post("/api/infer", data={"prompt": "q"}, files=files)
    after = command_counts(redis_client)
    assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT-L1"

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    # One round trip, one script: read L1 and write the request's record (no MULTI, no second GET).
    assert (delta("eval"), delta("get"), delta("hset"), delta("multi")) == (1, 1, 1, 0)
    request_id = hit.json()["request_id"]
    polled = client.get(f"/api/result?request_id={request_id}").json()
    assert polled["status"] == "done" and polled["x_cache"] == "HIT-L1"
    assert polled["result"] == answer["result"]
    first = client.post("/api/infer", data={"prompt": "q"}, files=files, headers={"Idempotency-Key": "hit-once"})
    replay = client.post("/api/infer", data={"prompt": "q"}, files=files, headers={"Idempotency-Key": "hit-once"})
    assert first.headers["x-cache"] == "HIT-L1" and replay.headers["x-cache"] == "IDEMPOTENT"
    assert replay.json()["request_id"] == first.json()["request_id"] != request_id
