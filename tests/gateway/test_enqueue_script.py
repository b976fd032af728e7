"""The one-round-trip enqueue (``enqueue.enqueue_at_once``, ``worker/lua/enqueue.lua``) writes what the WATCH
transaction (``enqueue.enqueue_or_attach``) writes, key for key, and decides as it does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from gateway import enqueue, eta, submit
from tests.conftest import redis_shape
from tests.gateway.conftest import job_of, redis_keys
from worker.constants import ENGINE_CALLS


def _post(client: TestClient, image: bytes, **headers: str) -> dict[str, Any]:
    response = client.post("/api/infer", data={"prompt": "Which digit?"},
                           files=[("image", ("i.png", image, "image/png"))], headers=headers)
    assert response.status_code == 202, response.text
    assert response.headers["x-cache"] == "MISS"
    return dict(response.json())


def _enqueued_shape(client: TestClient, redis: Redis, image: bytes) -> dict[str, Any]:
    accepted = _post(client, image, **{"Idempotency-Key": "the-same-key"})
    request_id = accepted["request_id"]
    shape = redis_shape(redis, {job_of(redis, request_id): "<job>", request_id: "<request>"}, redis_keys(redis))
    redis.flushdb()
    return shape


def test_the_script_writes_what_the_transaction_writes(client: TestClient, redis_client: Redis,
                                                        image_factory: Callable[..., bytes],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    image = image_factory((3, 1, 4))
    by_script = _enqueued_shape(client, redis_client, image)

    async def never(*_: object) -> None:
        return None  # as if an identical job were live: submit takes the transaction

    monkeypatch.setattr(submit, "enqueue_at_once", never)
    by_transaction = _enqueued_shape(client, redis_client, image)
    assert by_script == by_transaction
    # The enqueue is all there: the job queued in RQ, its record, stream, blob, quota and idempotency keys.
    assert any(kind == "list" and content == ["<job>"] for kind, _, content in by_script.values())
    assert len(by_script) >= 10


def test_the_script_decides_as_the_transaction(client: TestClient, redis_client: Redis,
                                               image_factory: Callable[..., bytes],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    image = image_factory((2, 7, 1))
    calls: list[object] = []
    real = enqueue.enqueue_at_once

    async def counted(*args: Any) -> object:
        outcome = await real(*args)
        calls.append(outcome)
        return outcome

    monkeypatch.setattr(submit, "enqueue_at_once", counted)
    first = _post(client, image)
    # The identical request while the first is queued: the script sees the live job and writes nothing,
    # the transaction attaches to it.
    second = client.post("/api/infer", data={"prompt": "Which digit?"},
                         files=[("image", ("i.png", image, "image/png"))])
    assert second.status_code == 202 and second.headers["x-cache"] == "COALESCED"
    assert job_of(redis_client, second.json()["request_id"]) == job_of(redis_client, first["request_id"])
    assert calls[1] is None
    assert redis_client.get(ENGINE_CALLS) is None


@pytest.mark.parametrize("stale_depth", [False, True])
def test_a_full_queue_refuses_the_next_request_and_writes_nothing(
        client_factory: Callable[..., TestClient], redis_client: Redis, image_factory: Callable[..., bytes],
        monkeypatch: pytest.MonkeyPatch, stale_depth: bool) -> None:
    client = client_factory(max_queue_depth=2)
    for shade in (1, 2):
        _post(client, image_factory((shade, 0, 0)))
    if stale_depth:
        # What another gateway replica may have read just before these two were enqueued: the early check
        # passes, and the script's own count must refuse.
        real = eta.for_new_job

        async def stale(*args: Any) -> tuple[int, eta.Standing]:
            _, standing = await real(*args)
            return 0, standing

        monkeypatch.setattr(eta, "for_new_job", stale)
    before = {key: redis_client.dump(key) for key in redis_keys(redis_client)}
    response = client.post("/api/infer", data={"prompt": "Which digit?"},
                           files=[("image", ("i.png", image_factory((3, 0, 0)), "image/png"))])
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "backlog_full" and response.headers["retry-after"] == "5"
    assert {key: redis_client.dump(key) for key in redis_keys(redis_client)} == before
