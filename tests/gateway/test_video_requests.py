"""Questions about an uploaded video: a ``video_url`` part becomes a clip of the stored frames at the asked
rate, with the video's own times, cached by those frames; what cannot be one job is refused by name
(instant engine; the vLLM path is tests/worker/test_vllm_engine.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis

from tests.gateway.conftest import ThreadWorker, redis_keys
from tests.gateway.videos import make_video


def upload(client: TestClient, seconds: float = 3, fps: str = "2") -> str:
    response = client.post("/api/media", files={"file": ("clip.mp4", make_video(seconds=seconds), "video/mp4")},
                           data={"fps": fps})
    assert response.status_code == 201, response.text
    return str(response.json()["media_id"])


def ask(client: TestClient, media_id: str, text: str = "When does it turn blue?", **extra: Any) -> Any:
    content = [{"type": "video_url", "video_url": {"url": f"vlq://media/{media_id}"}}, {"type": "text", "text": text}]
    return client.post("/api/infer", json={"messages": [{"role": "user", "content": content}], **extra})


def answered(client: TestClient, response: Any) -> dict[str, Any]:
    assert response.status_code in (200, 202), response.text
    body = client.get(f"/api/result?request_id={response.json()['request_id']}&wait=10").json()
    assert body["status"] == "done", body
    return dict(body)


def test_a_video_question_gets_the_frames_at_the_asked_rate(client: TestClient,
                                                            worker_factory: Callable[..., ThreadWorker]) -> None:
    worker_factory()
    media_id = upload(client, seconds=3, fps="2")
    at_two = answered(client, ask(client, media_id))["result"]["text"]
    at_one = answered(client, ask(client, media_id, video={"fps": 1}))["result"]["text"]
    # 3 s of 25 fps at 2 fps: the frames on screen at 0, 0.5, ... 2.5 (six, the last at 2.48 s); at 1 fps:
    # those at 0, 1, 2 (three). Times are the video's own.
    assert re.search(r"video=6f@0\.0-2\.5s", at_two), at_two
    assert re.search(r"video=3f@0\.0-2\.0s", at_one), at_one
    again = ask(client, media_id)
    assert again.status_code == 200 and again.json()["x_cache"] == "HIT-L1"


def test_what_cannot_be_one_video_job_is_refused_by_name(client: TestClient, redis_client: Redis,
                                                         image_factory: Callable[..., bytes]) -> None:
    long_id, short_id = upload(client, seconds=4), upload(client, seconds=2)
    image = client.post("/api/media", files={"file": ("i.png", image_factory((9, 9, 9)), "image/png")}).json()
    inline = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}
    cases = [
        (lambda: ask(client, long_id, video={"window_s": 0.5}), "invalid_parameter", "video.window_s"),
        (lambda: ask(client, short_id, video={"fps": 4}), "invalid_parameter", "video.fps"),
        (lambda: client.post("/api/infer", json={"messages": [{"role": "user", "content": [inline]}]}),
         "unsupported_video_url", "messages[0].content[0].video_url.url"),
        (lambda: ask(client, image["media_id"]), "wrong_media_kind", "messages[0].content[0].video_url.url"),
        (lambda: client.post("/api/infer", json={"messages": [{"role": "user", "content": "q"}],
                                                 "video": {"fps": 1}}), "invalid_parameter", "video"),
    ]
    for send, code, param in cases:
        before = redis_keys(redis_client)
        response = send()
        assert response.status_code == 422, response.text
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, param)
        # TTLs refreshed, nothing written or enqueued.
        assert redis_keys(redis_client) == before
