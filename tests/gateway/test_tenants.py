"""Tenants and admission: API keys, isolation of results and cache, limits, idempotency, cancel, deadline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from gateway.auth import hash_key
from tests.gateway.conftest import INTERACTIVE_QUEUE, ThreadWorker
from tests.gateway.test_request_path import post
from worker.constants import ENGINE_CALLS
from worker.engine import InstantEngine

KEYS = {"acme": ["key-acme-old", "key-acme-new"], "globex": ["key-globex"]}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({tenant: [hash_key(k) for k in keys] for tenant, keys in KEYS.items()}))
    return path


@pytest.fixture
def auth_client(client_factory: Callable[..., TestClient], keys_file: Path) -> TestClient:
    return client_factory(auth_enabled=True, api_keys_file=keys_file)


def as_tenant(key: str, bearer: bool = True) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key}


def post_as(client: TestClient, key: str, image: bytes, **extra):
    headers = {**as_tenant(key), **extra.pop("headers", {})}
    return client.post("/api/infer", data={"prompt": "q", **extra}, headers=headers,
                       files=[("image", ("i.png", image, "image/png"))])


def test_missing_or_wrong_key_is_401_and_nothing_is_written(
        auth_client: TestClient, image_factory: Callable[..., bytes], redis_client: Redis) -> None:
    before = set(redis_client.keys()) - {b"vlq:janitor:lock"}
    missing = auth_client.post("/api/infer", data={"prompt": "q"},
                               files=[("image", ("i.png", image_factory((1, 1, 1)), "image/png"))])
    wrong = post_as(auth_client, "not-a-key", image_factory((1, 1, 1)))
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_api_key")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert set(redis_client.keys()) - {b"vlq:janitor:lock"} == before


def test_rotated_keys_and_both_headers_work(auth_client: TestClient, image_factory: Callable[..., bytes],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    for key, bearer in (("key-acme-old", True), ("key-acme-new", False)):
        response = auth_client.post("/api/infer", data={"prompt": "q"}, headers=as_tenant(key, bearer),
                                    files=[("image", ("i.png", image_factory((2, 2, 2)), "image/png"))])
        assert response.status_code == 202, response.text
    assert '"route":"/api/infer"' in caplog.text  # the access log was captured ...
    assert "key-acme" not in caplog.text  # ... and keys never reach it


def test_another_tenants_request_id_is_404_and_cache_is_per_tenant(
        auth_client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    worker_factory()
    image = image_factory((3, 3, 3))
    mine = post_as(auth_client, "key-acme-old", image).json()
    done = auth_client.get(mine["result_url"] + "&wait=10", headers=as_tenant("key-acme-new"))
    assert done.json()["status"] == "done"
    theirs = auth_client.get(mine["result_url"], headers=as_tenant("key-globex"))
    assert theirs.status_code == 404
    assert "result" not in theirs.json()
    other_tenant = post_as(auth_client, "key-globex", image)
    assert other_tenant.headers["x-cache"] == "MISS"  # globex cannot learn what acme asked
    assert post_as(auth_client, "key-acme-new", image).headers["x-cache"] == "HIT-L1"


def test_rate_limit_is_429_with_retry_after(client_factory: Callable[..., TestClient],
                                            image_factory: Callable[..., bytes]) -> None:
    client = client_factory(rate_limit_per_minute=3)
    codes = [post(client, [image_factory((n, 0, 0))]).status_code for n in range(4)]
    assert codes == [202, 202, 202, 429]
    refused = post(client, [image_factory((9, 0, 0))])
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_inflight_quota_is_429_until_jobs_end(client_factory: Callable[..., TestClient],
                                              worker_factory: Callable[..., ThreadWorker],
                                              image_factory: Callable[..., bytes]) -> None:
    client = client_factory(tenant_max_inflight=2)
    first = [post(client, [image_factory((n, 1, 1))]) for n in range(2)]
    over = post(client, [image_factory((5, 1, 1))])
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "inflight_quota"
    worker_factory()
    for response in first:
        assert client.get(response.json()["result_url"] + "&wait=10").json()["status"] == "done"
    assert post(client, [image_factory((6, 1, 1))]).status_code == 202


def test_idempotency_key_returns_the_same_request(client: TestClient, image_factory: Callable[..., bytes],
                                                  redis_client: Redis) -> None:
    headers = {"Idempotency-Key": "order-42-attempt"}
    files = [("image", ("i.png", image_factory((4, 4, 4)), "image/png"))]
    first = client.post("/api/infer", data={"prompt": "q"}, files=files, headers=headers)
    retry = client.post("/api/infer", data={"prompt": "q"}, files=files, headers=headers)
    assert first.status_code == 202
    assert retry.status_code == 202
    assert retry.json()["request_id"] == first.json()["request_id"]
    assert retry.headers["x-cache"] == "IDEMPOTENT"
    assert redis_client.llen(f"rq:queue:{INTERACTIVE_QUEUE}") == 1


def test_cancel_queued_request_never_reaches_the_engine(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    accepted = post(client, [image_factory((8, 8, 8))]).json()
    canceled = client.delete(accepted["result_url"])
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    worker_factory()
    time.sleep(0.5)
    assert client.get(accepted["result_url"]).json()["status"] == "canceled"
    assert redis_client.get(ENGINE_CALLS) is None
    assert redis_client.llen(f"rq:queue:{INTERACTIVE_QUEUE}") == 0


def test_cancel_running_request_aborts_it(client: TestClient, worker_factory: Callable[..., ThreadWorker],
                                          image_factory: Callable[..., bytes]) -> None:
    worker_factory(InstantEngine(delay_s=1.0))
    accepted = post(client, [image_factory((8, 9, 8))]).json()
    deadline = time.monotonic() + 5
    while client.get(accepted["result_url"]).json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.delete(accepted["result_url"]).json()["status"] == "canceled"
    final = client.get(accepted["result_url"] + "&wait=5").json()
    assert final["status"] == "canceled"


def test_deadline_expires_a_request_no_worker_started(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    accepted = post(client, [image_factory((7, 7, 7))], deadline_s="0.2").json()
    time.sleep(0.3)
    assert client.get(accepted["result_url"]).json()["status"] == "expired"
    worker_factory()
    final = client.get(accepted["result_url"] + "&wait=5").json()
    assert final["status"] == "expired"
    assert final["error"]["code"] == "deadline_exceeded"
    assert redis_client.get(ENGINE_CALLS) is None


def test_no_live_worker_is_503_when_required(client_factory: Callable[..., TestClient],
                                             image_factory: Callable[..., bytes]) -> None:
    client = client_factory(require_live_worker=True)
    refused = post(client, [image_factory((6, 6, 6))])
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "no_worker"
