"""Long videos as windows: one job per window on any worker, a merge job released through RQ's dependencies,
progress on the stream, cancel reaching every window, a failed window retried then named (instant engine; a
real window on vLLM is tests/worker/test_vllm_engine.py's video test, whose clip already has absolute times)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job
from rq.registry import DeferredJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

from gateway.clips import windows
from gateway.errors import UnprocessableError
from tests.conftest import parse_sse
from tests.gateway.conftest import MODEL, ThreadWorker, job_of, redis_keys
from tests.gateway.test_video_requests import ask, upload
from tests.gateway.videos import make_video
from worker.contract import ErrorCode, Priority, VideoClip
from worker.engine import Chunk, EngineError, EngineRequest, InstantEngine
from worker.rqjobs import Slots, claim, open_queues, queue_names
from worker.scripts import Scripts


class FlakyEngine(InstantEngine):
    """The instant engine, but a window starting at one of ``failing`` seconds fails (engine_error)."""

    def __init__(self, failing: set[float], delay_s: float = 0.0) -> None:
        super().__init__(delay_s)
        self.failing = failing
        self.tries: dict[float, int] = {}

    async def stream(self, request: EngineRequest) -> AsyncIterator[Chunk]:
        start = request.videos[0].times[0] if request.videos else -1.0
        self.tries[start] = self.tries.get(start, 0) + 1
        if start in self.failing:
            raise EngineError(ErrorCode.ENGINE_ERROR, "the engine failed on this window")
        async for chunk in super().stream(request):
            yield chunk


def stream_of(client: TestClient, request_id: str) -> list[tuple[int | None, str, Any]]:
    with client.stream("GET", f"/api/stream?request_id={request_id}") as response:
        assert response.status_code == 200
        return parse_sse(response.iter_lines())


def final(client: TestClient, request_id: str) -> dict[str, Any]:
    body = client.get(f"/api/result?request_id={request_id}&wait=20").json()
    assert body["status"] in ("done", "failed", "canceled"), body
    return dict(body)


def test_windows_split_a_clip_at_exact_boundaries() -> None:
    digests = [f"{index:064x}" for index in range(20)]
    clip = VideoClip(frames=digests, times=[index / 2 for index in range(20)], fps=2)
    found = windows(clip, 9.96, 4.0, 10, "video.window_s")
    assert [(span.start_s, span.end_s) for span, _ in found] == [(0.0, 4.0), (4.0, 8.0), (8.0, 9.96)]
    # A frame exactly on a boundary (4.0 s) opens the next window; times stay the video's own.
    assert [part.times for _, part in found] == [[0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5], [4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5],
                                                 [8, 8.5, 9, 9.5]]
    assert found[1][1].frames == digests[8:16]
    with pytest.raises(UnprocessableError) as refused:
        windows(clip, 9.96, 1.0, 9, "video.window_s")
    assert (refused.value.code, refused.value.param) == ("video_too_long", "video.window_s")


def test_more_windows_than_a_request_may_have_is_refused_and_nothing_is_written(
        client_factory: Callable[..., TestClient], redis_client: Redis) -> None:
    client = client_factory(video_max_windows=3)
    media_id = upload(client, seconds=4, fps="2")
    before = redis_keys(redis_client)
    response = ask(client, media_id, video={"window_s": 1})
    assert response.status_code == 422, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("video_too_long", "video.window_s")
    assert redis_keys(redis_client) == before
    assert ask(client, media_id, video={"window_s": 2}).status_code == 202


def test_a_long_video_is_answered_window_by_window(client: TestClient, redis_client: Redis,
                                                   worker_factory: Callable[..., ThreadWorker]) -> None:
    media_id = upload(client, seconds=10, fps="2")
    response = ask(client, media_id, video={"window_s": 2})
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    # Started after the request, so that every window ends after the merge job waits for it.
    worker_factory(max_inflight=2)
    events = stream_of(client, request_id)
    progress = [data for _, kind, data in events if kind == "progress"]
    assert [(item["done"], item["total"]) for item in progress] == [(k, 5) for k in range(1, 6)]
    assert sorted((item["window"]["start_s"], item["window"]["end_s"]) for item in progress) == [
        (0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    kind, body = events[-1][1], events[-1][2]
    assert kind == "done" and body["status"] == "done", body
    segments = body["result"]["segments"]
    assert [(s["start_s"], s["end_s"]) for s in segments] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    for segment in segments:
        # Each window saw its own four frames (2 fps) at the video's absolute times.
        start = segment["start_s"]
        assert re.search(rf"video=4f@{start:.1f}-{start + 1.5:.1f}s", segment["text"]), segment
    lines = body["result"]["text"].splitlines()
    assert lines[0].startswith("[00:00-00:02] instant-engine") and lines[4].startswith("[00:08-00:10] ")
    assert body["result"]["partial"] is False
    # RQ's registries tell the truth: five window jobs and the merge job finished, nothing left deferred.
    merge_id = job_of(redis_client, request_id)
    queue = queue_names(MODEL)
    interactive = next(iter(queue.values()))
    finished = set(FinishedJobRegistry(interactive, connection=redis_client).get_job_ids())
    assert merge_id in finished and len(finished) == 6
    assert DeferredJobRegistry(interactive, connection=redis_client).get_job_ids() == []
    again = ask(client, media_id, video={"window_s": 2})
    assert again.status_code == 200 and again.json()["x_cache"] == "HIT-L1"
    # Another window length is another answer (the windows decide it): not served from that one.
    other = ask(client, media_id, video={"window_s": 5})
    assert other.status_code == 202
    assert [(s["start_s"], s["end_s"]) for s in final(client, other.json()["request_id"])["result"]["segments"]] == [
        (0, 5), (5, 10)]


def test_a_failed_window_is_retried_then_named_and_the_rest_are_reused(
        client: TestClient, worker_factory: Callable[..., ThreadWorker]) -> None:
    engine = FlakyEngine(failing={4.0})
    worker_factory(engine)
    media_id = upload(client, seconds=10, fps="2")
    first = final(client, ask(client, media_id, video={"window_s": 2}).json()["request_id"])
    # Tried three times (job_retries=2), then the answer is partial: the failed window is named in its
    # segment and in the timeline, the other four answered.
    assert engine.tries[4.0] == 3
    assert first["status"] == "done" and first["result"]["partial"] is True
    failed = first["result"]["segments"][2]
    assert (failed["start_s"], failed["end_s"], failed["text"]) == (4, 6, None)
    assert failed["error"]["code"] == "engine_error"
    assert "[00:04-00:06] (no answer: engine_error)" in first["result"]["text"]
    # A partial answer is not cached; asking again runs only the window that failed.
    engine.failing.clear()
    calls = engine.calls
    again = ask(client, media_id, video={"window_s": 2})
    assert again.status_code == 202
    second = final(client, again.json()["request_id"])
    assert second["status"] == "done" and second["result"]["partial"] is False
    assert engine.calls == calls + 1


def test_a_request_whose_every_window_failed_fails_naming_them(
        client_factory: Callable[..., TestClient], worker_factory: Callable[..., ThreadWorker]) -> None:
    client = client_factory(job_retries=0)
    worker_factory(FlakyEngine(failing={0.0, 2.0}))
    media_id = upload(client, seconds=4, fps="2")
    body = final(client, ask(client, media_id, video={"window_s": 2}).json()["request_id"])
    assert body["status"] == "failed", body
    assert "00:00-00:02, 00:02-00:04" in body["error"]["message"]


def test_cancel_reaches_every_window(client: TestClient, redis_client: Redis) -> None:
    media_id = upload(client, seconds=6, fps="2")
    response = ask(client, media_id, video={"window_s": 2})
    request_id = response.json()["request_id"]
    merge_id = job_of(redis_client, request_id)
    interactive = next(iter(queue_names(MODEL).values()))
    windows_queued = [job_id.decode() for job_id in redis_client.lrange(f"rq:queue:{interactive}", 0, -1)]
    assert len(windows_queued) == 3
    assert DeferredJobRegistry(interactive, connection=redis_client).get_job_ids() == [merge_id]
    canceled = client.delete(f"/api/result?request_id={request_id}")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
    assert redis_client.llen(f"rq:queue:{interactive}") == 0
    assert DeferredJobRegistry(interactive, connection=redis_client).get_job_ids() == []
    for job_id in [*windows_queued, merge_id]:
        assert Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer).get_status() == "canceled"


def test_two_workers_answer_a_ten_window_video_faster_than_one(
        client: TestClient, worker_factory: Callable[..., ThreadWorker]) -> None:
    media_id = upload(client, seconds=10, fps="1")

    def timed(question: str) -> float:
        started = time.monotonic()
        body = final(client, ask(client, media_id, text=question, video={"window_s": 1}).json()["request_id"])
        assert body["status"] == "done" and len(body["result"]["segments"]) == 10, body
        return time.monotonic() - started

    # One job at a time per worker, 0.3 s each: the engine, not the queue, is what is being shared.
    first = worker_factory(InstantEngine(delay_s=0.3), max_inflight=1, interactive_reserve=0)
    alone = timed("What happens, one worker?")
    second = worker_factory(InstantEngine(delay_s=0.3), max_inflight=1, interactive_reserve=0)
    together = timed("What happens, two workers?")
    assert first.engine.calls + second.engine.calls == 20  # type: ignore[attr-defined]
    assert second.engine.calls >= 3  # type: ignore[attr-defined]
    assert together < alone * 0.75, (alone, together)


def test_chat_completions_stream_a_long_video_answer_as_its_timeline(
        client: TestClient, worker_factory: Callable[..., ThreadWorker]) -> None:
    worker_factory()
    video = make_video(seconds=61, rate=5)
    media_id = client.post("/api/media", files={"file": ("long.mp4", video, "video/mp4")}).json()["media_id"]
    content = [{"type": "video_url", "video_url": {"url": f"vlq://media/{media_id}"}},
               {"type": "text", "text": "What happens?"}]
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": content}]}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    # The default window is 60 s: two windows, the second a second long; the progress events are not chunks.
    assert text.startswith("[00:00-01:00] instant-engine") and "\n[01:00-01:01] instant-engine" in text, text


def test_a_window_whose_worker_vanished_is_ended_by_the_janitor_and_the_merge_goes_on(
        client_factory: Callable[..., TestClient], redis_client: Redis,
        worker_factory: Callable[..., ThreadWorker]) -> None:
    client = client_factory(job_retries=0)
    media_id = upload(client, seconds=6, fps="2")
    request_id = ask(client, media_id, video={"window_s": 2}).json()["request_id"]
    # A worker takes the first window and dies without a heartbeat: its lease lapses in a second.
    queues = open_queues(redis_client, MODEL)
    ghost = claim(queues, Scripts(redis_client), "ghost", heartbeat_ttl_s=1, block_s=0,
                  slots=Slots(count=1, batch_room=1))
    assert len(ghost) == 1 and ghost[0].priority is Priority.INTERACTIVE
    worker_factory()
    body = final(client, request_id)
    assert body["status"] == "done" and body["result"]["partial"] is True, body
    lost = [segment for segment in body["result"]["segments"] if segment["text"] is None]
    # Windows are enqueued concurrently: the lost one is whichever the ghost took first.
    taken = ghost[0].job.kwargs["job"]["window"]["start_s"]
    assert [(segment["start_s"], segment["error"]["code"]) for segment in lost] == [(taken, "worker_lost")]


def test_a_window_and_the_same_stretch_asked_alone_share_one_job(
        client: TestClient, worker_factory: Callable[..., ThreadWorker]) -> None:
    # The synthetic videos are deterministic: the first 2 s of a 10 s video are the same frames, at the same
    # times, as a 2 s video, so its first window and a question about the short clip have one key.
    long_id, short_id = upload(client, seconds=10, fps="2"), upload(client, seconds=2, fps="2")
    windowed = ask(client, long_id, video={"window_s": 2})
    alone = ask(client, short_id, video={"window_s": 2})
    assert windowed.status_code == 202 and alone.status_code == 202
    assert alone.json()["x_cache"] == "COALESCED"
    engine = InstantEngine()
    worker_factory(engine)
    whole = final(client, windowed.json()["request_id"])
    short = final(client, alone.json()["request_id"])
    assert short["result"]["text"] == whole["result"]["segments"][0]["text"]
    assert engine.calls == 5  # five windows; the short clip rode on the first


def test_a_merge_whose_windows_were_deleted_is_released_by_the_janitor(
        client: TestClient, redis_client: Redis, worker_factory: Callable[..., ThreadWorker]) -> None:
    media_id = upload(client, seconds=4, fps="2")
    request_id = ask(client, media_id, video={"window_s": 2}).json()["request_id"]
    queue = open_queues(redis_client, MODEL)[Priority.INTERACTIVE]
    # The windows' jobs vanish before any worker took them (an operator's cleanup, say): no end will come.
    for raw in redis_client.lrange(queue.key, 0, -1):
        redis_client.delete(Job.key_for(raw.decode()))
    redis_client.delete(queue.key)
    worker_factory()
    body = final(client, request_id)
    assert body["status"] == "failed", body
    assert "every window of the video failed" in body["error"]["message"]
    assert DeferredJobRegistry(queue.name, connection=redis_client).get_job_ids() == []


def test_a_long_video_over_the_tenant_quota_is_refused_before_any_window_is_enqueued(
        client_factory: Callable[..., TestClient], redis_client: Redis) -> None:
    client = client_factory(tenant_max_inflight=1)
    media_id = upload(client, seconds=4, fps="2")
    assert ask(client, media_id, text="first").status_code == 202  # 4 s, one window: one request in flight
    queue = open_queues(redis_client, MODEL)[Priority.INTERACTIVE]
    depth = redis_client.llen(queue.key)
    refused = ask(client, media_id, text="second", video={"window_s": 1})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "inflight_quota", refused.text
    assert redis_client.llen(queue.key) == depth
