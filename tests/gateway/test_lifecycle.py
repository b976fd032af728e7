"""The one job lifecycle on real Redis with the instant engine: conversations, media ids, event streams,
JSON answers, position and ETA, and contract versions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from tests.conftest import parse_sse
from tests.gateway.conftest import INTERACTIVE_QUEUE, MODEL, ThreadWorker, job_of
from tests.gateway.test_hostile_input import data_url
from worker.constants import ENGINE_CALLS, INFER_FUNC, REQUEST_PREFIX
from worker.contract import CONTRACT_VERSION, RequestRecord
from worker.engine import InstantEngine

QUEUE_KEY = f"rq:queue:{INTERACTIVE_QUEUE}"


def upload(client: TestClient, data: bytes, key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = client.post("/api/media", files={"file": ("shot.png", data, "image/png")}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def user(*parts: dict[str, Any] | str) -> dict[str, Any]:
    content = [{"type": "text", "text": part} if isinstance(part, str) else part for part in parts]
    return {"role": "user", "content": content}


def media_part(media_id: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"vlq://media/{media_id}"}}


def ask(client: TestClient, messages: list[dict[str, Any]], **extra: Any) -> Any:
    return client.post("/api/infer", json={"messages": messages, "max_tokens": 32, **extra})


def events(client: TestClient, request_id: str, last: str | None = None) -> list[tuple[int | None, str, Any]]:
    """Every event of a request's stream: (id or None, type, data)."""
    headers = {"Last-Event-ID": last} if last else {}
    with client.stream("GET", f"/api/stream?request_id={request_id}", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(response.iter_lines())


def final(client: TestClient, request_id: str) -> dict[str, Any]:
    body = client.get(f"/api/result?request_id={request_id}&wait=10").json()
    assert body["status"] in ("done", "failed", "canceled", "expired"), body
    return body


def test_three_turn_conversation_is_cached_by_its_whole_history(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    worker_factory()
    shot = upload(client, image_factory((200, 10, 10)))
    history = [user(media_part(shot["media_id"]), "What is this?"),
               {"role": "assistant", "content": "A red square."},
               user("And its size?")]
    first = ask(client, history)
    assert first.status_code == 202 and first.headers["x-cache"] == "MISS"
    answer = final(client, first.json()["request_id"])
    assert answer["result"]["text"].startswith("instant-engine prompt='And its size?'")
    assert "turns=3" in answer["result"]["text"]
    repeat = ask(client, history)
    assert repeat.status_code == 200 and repeat.headers["x-cache"] == "HIT-L1"
    assert repeat.json()["result"]["text"] == answer["result"]["text"]
    changed = [history[0], {"role": "assistant", "content": "A blue square."}, history[2]]
    assert ask(client, changed).headers["x-cache"] == "MISS"
    with_system = [{"role": "system", "content": "Be brief."}, *history]
    assert ask(client, with_system).headers["x-cache"] == "MISS"
    assert int(redis_client.get(ENGINE_CALLS)) >= 1


def test_data_url_and_media_id_of_the_same_bytes_share_a_key(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes]) -> None:
    worker_factory()
    data = image_factory((1, 99, 5))
    inline = ask(client, [user({"type": "image_url", "image_url": {"url": data_url(data)}}, "Name it")])
    final(client, inline.json()["request_id"])
    by_id = ask(client, [user(media_part(upload(client, data)["media_id"]), "Name it")])
    assert by_id.status_code == 200 and by_id.headers["x-cache"] == "HIT-L1"


async def _requests_of(redis: Redis, job_id: str) -> set[str]:
    from redis.asyncio import Redis as AsyncRedis

    from gateway import records

    kwargs = redis.connection_pool.connection_kwargs
    client = AsyncRedis(host=kwargs["host"], port=kwargs["port"], db=kwargs.get("db", 0))
    try:
        return await records.requests_of(client, job_id)
    finally:
        await client.aclose()


def test_stream_order_resume_coalescing_and_replay(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    worker_factory(InstantEngine(delay_s=0.4))
    messages = [user(media_part(upload(client, image_factory((7, 7, 70)))["media_id"]), "Stream it")]
    first, second = ask(client, messages), ask(client, messages)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "COALESCED")
    # The job reaches every request attached to it (what webhooks and batch lines will read).
    job_id = job_of(redis_client, first.json()["request_id"])
    assert job_of(redis_client, second.json()["request_id"]) == job_id
    assert asyncio.run(_requests_of(redis_client, job_id)) == {first.json()["request_id"], second.json()["request_id"]}
    with ThreadPoolExecutor(2) as pool:
        one, two = pool.map(lambda r: events(client, r.json()["request_id"]), (first, second))
    durable = [event for event in one if event[0] is not None]
    ids = [event[0] for event in durable]
    assert ids == list(range(1, len(ids) + 1))
    kinds = [event[1] for event in durable]
    assert kinds[0] == "queued" and kinds[1] == "running" and kinds[-1] == "done"
    assert set(kinds[2:-1]) == {"delta"} and len(kinds) >= 4
    text = "".join(event[2]["text"] for event in durable if event[1] == "delta")
    polled = final(client, first.json()["request_id"])
    assert text == durable[-1][2]["result"]["text"] == polled["result"]["text"]
    assert durable[-1][2] == polled
    # Coalesced: the same events, with its own request id and X-Cache in the terminal body.
    assert [(e[0], e[1]) for e in two if e[0]] == [(e[0], e[1]) for e in durable]
    assert two[-1][2]["request_id"] == second.json()["request_id"] and two[-1][2]["x_cache"] == "COALESCED"
    # Resume mid-stream: exactly the rest. Connect after done: the whole replay.
    assert [e for e in events(client, first.json()["request_id"], last="3") if e[0]] == durable[3:]
    assert [e for e in events(client, first.json()["request_id"]) if e[0]] == durable


def test_queued_stream_sends_live_positions_and_a_hit_streams(
        client_factory: Callable[..., TestClient], worker_factory: Callable[..., ThreadWorker],
        image_factory: Callable[..., bytes]) -> None:
    client = client_factory(stream_position_interval_s=0.2)
    waiting = ask(client, [user(data_url_part(image_factory((3, 3, 3))), "wait")])
    body = waiting.json()
    assert body["status"] == "queued" and body["position"] == 0 and body["warming"] is True
    assert body["eta_s"] is None and body["stream_url"].endswith(body["request_id"])
    worker_factory(InstantEngine(delay_s=0.5))
    seen = events(client, body["request_id"])
    assert seen[0][:2] == (1, "queued") and seen[-1][1] == "done"
    hit = ask(client, [user(data_url_part(image_factory((3, 3, 3))), "wait")])
    assert hit.status_code == 200
    replay = events(client, hit.json()["request_id"])
    assert [(e[0], e[1]) for e in replay] == [(1, "delta"), (2, "done")]
    assert replay[0][2]["text"] == replay[1][2]["result"]["text"] == seen[-1][2]["result"]["text"]


def data_url_part(data: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


def test_json_schema_answer_is_parsed_and_gui_boxes_are_pixels(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes]) -> None:
    worker_factory()
    image = data_url_part(image_factory((9, 9, 9), size=(1280, 720)))
    schema = {"type": "object", "properties": {"instant": {"type": "boolean"}}, "required": ["instant"]}
    accepted = ask(client, [user(image, "Give JSON")],
                   response_format={"type": "json_schema", "json_schema": {"name": "probe", "schema": schema}})
    assert final(client, accepted.json()["request_id"])["result"]["json"] == {"instant": True}
    gui = final(client, ask(client, [user(image, "Find buttons")], task="gui").json()["request_id"])
    # The instant engine answers bbox [100, 200, 500, 400] on the 0-1000 grid; 1280x720 pixels come back.
    assert gui["result"]["json"]["elements"][0]["bbox"] == [128, 144, 640, 288]


def test_media_is_tenant_bound_and_unusable_once_gone(
        client_factory: Callable[..., TestClient], image_factory: Callable[..., bytes], redis_client: Redis,
        tmp_path: Any) -> None:
    from gateway.auth import hash_key

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"acme": [hash_key("key-acme")], "beta": [hash_key("key-beta")]}))
    client = client_factory(auth_enabled=True, api_keys_file=keys, media_ttl_s=60)
    acme = {"Authorization": "Bearer key-acme"}
    beta = {"Authorization": "Bearer key-beta"}
    data = image_factory((50, 60, 70))
    mine = upload(client, data, "key-acme")
    theirs = upload(client, data, "key-beta")
    assert set(mine) == {"media_id", "kind", "media_type", "width", "height", "bytes", "expires_at"}
    assert (mine["kind"], mine["width"], mine["bytes"]) == ("image", 64, len(data))
    assert mine["media_id"] != theirs["media_id"]
    assert {k: v for k, v in mine.items() if k not in ("media_id", "expires_at")} == \
        {k: v for k, v in theirs.items() if k not in ("media_id", "expires_at")}
    assert client.get(f"/api/media/{mine['media_id']}", headers=acme).status_code == 200
    assert client.get(f"/api/media/{mine['media_id']}", headers=beta).json()["error"]["code"] == "media_not_found"

    def refused_use(media_id: str, headers: dict[str, str]) -> None:
        response = client.post("/api/infer", json={"messages": [user(media_part(media_id), "q")]}, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == {**response.json()["error"], "code": "media_not_found",
                                            "param": "messages[0].content[0].image_url.url"}
        assert redis_client.llen(QUEUE_KEY) == 0

    refused_use(mine["media_id"], beta)  # another tenant's
    refused_use("med_" + "x" * 22, acme)  # unknown
    # Deleting mine keeps beta's copy of the same bytes usable; deleting both removes the bytes.
    assert client.delete(f"/api/media/{mine['media_id']}", headers=acme).json() == \
        {"media_id": mine["media_id"], "deleted": True}
    refused_use(mine["media_id"], acme)
    assert client.get(f"/api/media/{theirs['media_id']}", headers=beta).status_code == 200
    client.delete(f"/api/media/{theirs['media_id']}", headers=beta)
    assert not redis_client.keys("vlq:img:*")
    expiring = upload(client, data, "key-acme")
    redis_client.delete(f"vlq:media:{expiring['media_id']}")  # as its TTL would
    refused_use(expiring["media_id"], acme)


def test_eta_is_within_30_percent_of_the_measured_wait(
        client_factory: Callable[..., TestClient], worker_factory: Callable[..., ThreadWorker],
        image_factory: Callable[..., bytes]) -> None:
    delay = 0.6
    client = client_factory(eta_prior_service_s=delay, max_wait_s=30)
    worker_factory(InstantEngine(delay_s=delay), max_inflight=2)
    time.sleep(0.5)  # the worker announces its slots
    submitted = []
    for index in range(8):
        started = time.monotonic()
        body = ask(client, [user(data_url_part(image_factory((index, 1, 2))), f"job {index}")], cache="off").json()
        submitted.append((started, body))
    errors = []
    for started, body in submitted:
        final(client, body["request_id"])
        waited = time.monotonic() - started
        assert body["eta_s"] is not None and body["warming"] is False
        errors.append(abs(body["eta_s"] - waited) / waited)
    print(f"ETA errors: {[round(e, 2) for e in errors]}")
    assert max(errors) <= 0.3


def test_worker_refuses_a_newer_contract_and_reads_an_older_one(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    queue = Queue(INTERACTIVE_QUEUE, connection=redis_client, serializer=JSONSerializer)
    base = {"model": MODEL, "images": [], "sampling": {}, "cache_key": "k" * 64, "cache_mode": "off",
            "tenant": "public", "enqueued_at": time.time(), "result_ttl_s": 60, "cache_ttl_s": 60}
    newer = queue.enqueue(INFER_FUNC, kwargs={"job": {**base, "v": CONTRACT_VERSION + 1, "holo": {"x": 1}}})
    older = queue.enqueue(INFER_FUNC, kwargs={"job": {**base, "prompt": "legacy prompt"}})  # v1: no messages
    worker_factory()
    deadline = time.monotonic() + 10
    results: dict[str, Any] = {}
    while time.monotonic() < deadline and len(results) < 2:
        for job in (newer, older):
            raw = redis_client.get(f"vlq:result:{job.id}")
            if raw:
                results[job.id] = json.loads(raw)
        time.sleep(0.1)
    assert results[newer.id]["state"] == "failed"
    assert results[newer.id]["error"]["code"] == "contract_version"
    assert results[older.id]["state"] == "done"
    assert results[older.id]["result"]["text"].startswith("instant-engine prompt='legacy prompt'")


def test_an_older_reader_ignores_newer_fields(client: TestClient, redis_client: Redis, caplog: Any) -> None:
    record = RequestRecord(tenant="public", created_at=time.time(), job_id="j" * 32).model_dump(mode="json")
    redis_client.hset(REQUEST_PREFIX + "r" * 22, "doc", json.dumps({**record, "v": 99, "webhook": {"u": 1}}))
    response = client.get("/api/result?request_id=" + "r" * 22)
    assert response.status_code == 410  # read fine; its job is gone
    assert job_of(redis_client, "r" * 22) == "j" * 32


@pytest.mark.parametrize("when", ["queued", "running"])
def test_cancel_ends_the_stream(client: TestClient, worker_factory: Callable[..., ThreadWorker],
                                image_factory: Callable[..., bytes], when: str) -> None:
    if when == "running":
        worker_factory(InstantEngine(delay_s=3.0))
    accepted = ask(client, [user(data_url_part(image_factory((4, 4, 4))), "cancel me")]).json()
    if when == "running":
        deadline = time.monotonic() + 5
        while client.get(accepted["result_url"]).json()["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
    canceled = client.delete(accepted["result_url"])
    assert canceled.json()["status"] == "canceled"
    seen = events(client, accepted["request_id"])
    assert seen[-1][1] == "canceled" and seen[-1][2]["error"]["code"] == "canceled"


def test_stream_of_an_expired_result_is_410(client: TestClient, worker_factory: Callable[..., ThreadWorker],
                                            image_factory: Callable[..., bytes], redis_client: Redis) -> None:
    worker_factory()
    accepted = ask(client, [user(data_url_part(image_factory((8, 1, 8))), "expire me")]).json()
    final(client, accepted["request_id"])
    job_id = job_of(redis_client, accepted["request_id"])
    redis_client.delete(f"vlq:result:{job_id}", f"rq:job:{job_id}", f"vlq:stream:{job_id}")  # as their TTLs would
    response = client.get(accepted["stream_url"])
    assert response.status_code == 410 and response.json()["error"]["code"] == "result_expired"


def test_warming_says_how_long_a_cold_start_takes(
        client_factory: Callable[..., TestClient], worker_factory: Callable[..., ThreadWorker],
        image_factory: Callable[..., bytes], redis_client: Redis) -> None:
    client = client_factory(cold_start_prior_s=90)
    image = data_url_part(image_factory((2, 4, 6)))
    prior = ask(client, [user(image, "wait")], deadline_s=30).json()
    assert (prior["warming"], prior["eta_s"], prior["cold_start_s"]) == (True, None, 90)
    assert "deadline of 30 s will likely pass" in prior["warning"]
    from worker.capacity import record_cold_start

    record_cold_start(redis_client, MODEL, 12.34)  # what a worker does once it is ready
    measured = ask(client, [user(image, "wait too")], deadline_s=60).json()
    assert measured["cold_start_s"] == 12.3 and "warning" not in measured
    worker_factory()
    assert final(client, measured["request_id"])["status"] == "done"
