"""The request path through the gateway, real Redis and RQ, with the instant test engine as worker."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from tests.gateway.conftest import INTERACTIVE_QUEUE, ThreadWorker, job_of
from worker.constants import ENGINE_CALLS


def post(client: TestClient, images: list[bytes], prompt: str = "What is this?", **fields: str):
    files = [("image", (f"i{n}.png", data, "image/png")) for n, data in enumerate(images)]
    return client.post("/api/infer", data={"prompt": prompt, **fields}, files=files)


def test_miss_then_result_then_hit(client: TestClient, worker_factory: Callable[..., ThreadWorker],
                                   image_factory: Callable[..., bytes], redis_client: Redis) -> None:
    worker_factory()
    image = image_factory((200, 10, 10))
    first = post(client, [image])
    assert first.status_code == 202, first.text
    assert first.headers["x-cache"] == "MISS"
    body = first.json()
    assert body["status"] == "queued"
    assert body["result_url"] == f"/api/result?request_id={body['request_id']}"

    done = client.get(body["result_url"] + "&wait=10")
    assert done.status_code == 200, done.text
    result = done.json()
    assert result["status"] == "done"
    assert result["cached"] is False
    assert result["result"]["text"].startswith("instant-engine prompt='What is this?'")
    assert result["timings"]["engine_s"] is not None

    again = post(client, [image])
    assert again.status_code == 200
    assert again.headers["x-cache"] == "HIT-L1"
    assert again.json()["cached"] is True
    assert again.json()["result"] == result["result"]
    assert int(redis_client.get(ENGINE_CALLS)) == 1


def test_rq_registries_show_finished_job(client: TestClient, worker_factory: Callable[..., ThreadWorker],
                                         image_factory: Callable[..., bytes], redis_client: Redis) -> None:
    from rq.queue import Queue
    from rq.registry import FinishedJobRegistry, StartedJobRegistry

    worker_factory()
    accepted = post(client, [image_factory((1, 2, 3))]).json()
    assert client.get(accepted["result_url"] + "&wait=10").json()["status"] == "done"
    queue = Queue(INTERACTIVE_QUEUE, connection=redis_client)
    assert len(queue) == 0
    assert StartedJobRegistry(INTERACTIVE_QUEUE, connection=redis_client).count == 0
    assert FinishedJobRegistry(INTERACTIVE_QUEUE, connection=redis_client).count == 1


def test_unknown_request_is_404_and_malformed_is_400(client: TestClient) -> None:
    missing = client.get("/api/result?request_id=" + "a" * 22)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "request_not_found"
    for bad in ("*", "../../etc/passwd", "a:b" * 10, "x" * 65):
        response = client.get("/api/result", params={"request_id": bad})
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "invalid_request_id"


def test_expired_result_is_410(client: TestClient, worker_factory: Callable[..., ThreadWorker],
                               image_factory: Callable[..., bytes], redis_client: Redis) -> None:
    worker_factory()
    accepted = post(client, [image_factory((3, 1, 4))]).json()
    assert client.get(accepted["result_url"] + "&wait=10").json()["status"] == "done"
    job_id = job_of(redis_client, accepted["request_id"])
    redis_client.delete("vlq:result:" + job_id, "rq:job:" + job_id)  # what the TTLs do, sooner
    gone = client.get(accepted["result_url"])
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "result_expired"


def test_long_poll_returns_as_soon_as_the_job_ends(client: TestClient, worker_factory: Callable[..., ThreadWorker],
                                                   image_factory: Callable[..., bytes]) -> None:
    import time

    from worker.engine import InstantEngine

    worker_factory(InstantEngine(delay_s=0.5))
    accepted = post(client, [image_factory((2, 7, 1))]).json()
    started = time.monotonic()
    done = client.get(accepted["result_url"] + "&wait=8")
    elapsed = time.monotonic() - started
    assert done.json()["status"] == "done"
    assert elapsed < 3, elapsed


def test_a_long_poll_that_sees_its_job_end_waits_in_three_round_trips(
        client_factory: Callable[..., TestClient], worker_factory: Callable[..., ThreadWorker],
        image_factory: Callable[..., bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.asyncio.connection import AbstractConnection

    from worker.engine import InstantEngine

    client = client_factory(janitor_interval_s=3600)
    worker = worker_factory(engine=InstantEngine(delay_s=0.6))
    accepted = post(client, [image_factory((7, 7, 7))]).json()
    sent: list[object] = []
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        if threading.current_thread() is not worker.thread:
            sent.append(command)
        await send(self, command, check_health)

    # The gateway's asyncio client (not the worker's, on its own thread): one send per command or pipeline.
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    done = client.get(accepted["result_url"] + "&wait=10")
    monkeypatch.undo()
    assert done.status_code == 200 and done.json()["status"] == "done", done.text
    # The record; the job's state with the watch already registered; the state once woken by its end. No
    # webhook state is read: the record says the request asked for none.
    words = [b"".join(command) if isinstance(command, list) else command for command in sent]
    assert len(words) == 3, words
    assert [b"HGETALL" in word for word in words] == [True, False, False]
    assert not any(b"vlq:webhook:" in word for word in words)


def test_a_record_from_before_the_webhook_flag_still_shows_its_webhook_state(
        client: TestClient, redis_client: Redis, image_factory: Callable[..., bytes]) -> None:
    from worker.constants import REQUEST_PREFIX, WEBHOOK_PREFIX
    from worker.contract import WebhookState

    accepted = post(client, [image_factory((8, 8, 8))]).json()
    request_id = accepted["request_id"]
    key = REQUEST_PREFIX + request_id
    doc = json.loads(redis_client.hget(key, "doc") or b"{}")
    assert doc.pop("has_webhook") is False
    # As an older gateway wrote it (no flag), for a request that did ask for a webhook.
    redis_client.hset(key, "doc", json.dumps(doc))
    state = WebhookState(tenant="public", url="https://hooks.example/x", attempts=2, last_status=503)
    redis_client.set(WEBHOOK_PREFIX + request_id, state.model_dump_json())
    shown = client.get(accepted["result_url"]).json()
    assert shown["webhook"] == {"state": "pending", "attempts": 2, "last_status": 503}
