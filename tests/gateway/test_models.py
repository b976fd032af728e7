"""Several models behind one gateway: each served model has its own queues and pool, a LoRA adapter goes to
its base model's pool, an unknown model is a 404 naming it, and warming is per pool (instant engines)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis
from rq.registry import FinishedJobRegistry

from tests.gateway.conftest import MODEL, ThreadWorker, job_of, redis_keys
from worker.contract import Priority
from worker.engine import InstantEngine
from worker.rqjobs import queue_names

OTHER = "other-model"
COLD = "cold-model"
FLEET = {"models": [MODEL, OTHER, COLD], "adapters": {MODEL: ["acme"]}}


def ask(client: TestClient, text: str, model: str | None = None, **extra: Any) -> Any:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "max_tokens": 8, **extra}
    if model is not None:
        body["model"] = model
    return client.post("/api/infer", json=body)


def answer(client: TestClient, request_id: str) -> dict[str, Any]:
    body = client.get(f"/api/result?request_id={request_id}&wait=10").json()
    assert body["status"] == "done", body
    return dict(body)


def test_each_model_is_served_by_its_own_pool(client_factory: Callable[..., TestClient],
                                              worker_factory: Callable[..., ThreadWorker],
                                              redis_client: Redis) -> None:
    client = client_factory(**FLEET)
    base_engine, other_engine = InstantEngine(), InstantEngine()
    worker_factory(base_engine, lora_adapters={"acme": "/adapters/acme"})
    worker_factory(other_engine, model=OTHER)
    default = ask(client, "who answers?").json()
    other = ask(client, "who answers?", OTHER).json()
    adapted = ask(client, "who answers?", f"{MODEL}:acme").json()
    assert {default["x_cache"], other["x_cache"], adapted["x_cache"]} == {"MISS"}  # three cache keys
    texts = {name: answer(client, body["request_id"])["result"]["text"]
             for name, body in (("default", default), ("other", other), ("adapted", adapted))}
    assert "adapter=acme" in texts["adapted"] and "adapter" not in texts["default"]
    assert (base_engine.calls, other_engine.calls) == (2, 1)
    for model, count in ((MODEL, 2), (OTHER, 1)):
        queue = queue_names(model)[Priority.INTERACTIVE]
        assert FinishedJobRegistry(queue, connection=redis_client).count == count
    assert job_of(redis_client, other["request_id"]) in FinishedJobRegistry(
        queue_names(OTHER)[Priority.INTERACTIVE], connection=redis_client).get_job_ids()


def test_unknown_models_and_adapters_are_404s_naming_the_model(client_factory: Callable[..., TestClient],
                                                               redis_client: Redis) -> None:
    client = client_factory(**FLEET)
    before = redis_keys(redis_client)
    for name in ("gpt-4o", f"{MODEL}:nope", f"{OTHER}:acme", ":acme"):
        response = ask(client, "q", name)
        assert response.status_code == 404
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("model_not_found", "model") and name in error["message"]
    assert redis_keys(redis_client) == before  # nothing written, nothing enqueued


def test_models_lists_every_model_and_adapter(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(**FLEET)
    cards = client.get("/v1/models").json()["data"]
    assert [card["id"] for card in cards] == [MODEL, OTHER, COLD, f"{MODEL}:acme"]
    assert cards[-1]["parent"] == MODEL and "parent" not in cards[0]
    assert client.get(f"/v1/models/{MODEL}:acme").json()["id"] == f"{MODEL}:acme"
    assert client.get("/v1/models/gpt-4o").status_code == 404


def test_a_pool_at_zero_is_warming_while_another_serves(client_factory: Callable[..., TestClient],
                                                        worker_factory: Callable[..., ThreadWorker]) -> None:
    client = client_factory(**FLEET, cold_start_prior_s=45)
    worker_factory()
    live = ask(client, "now").json()
    cold = ask(client, "later", COLD).json()
    assert live["status"] in ("queued", "done") and cold["status"] == "queued"
    assert cold["warming"] is True and cold["cold_start_s"] == 45 and cold["eta_s"] is None
    answer(client, live["request_id"])
    assert client.get(f"/api/result?request_id={cold['request_id']}").json()["status"] == "queued"
    worker_factory(model=COLD)
    assert answer(client, cold["request_id"])["status"] == "done"


def test_a_worker_refuses_an_adapter_it_does_not_serve(client_factory: Callable[..., TestClient],
                                                       worker_factory: Callable[..., ThreadWorker]) -> None:
    client = client_factory(**FLEET)
    worker_factory()  # serves MODEL without adapters: a rollout where the gateway got ahead
    body = client.get(f"/api/result?request_id={ask(client, 'q', f'{MODEL}:acme').json()['request_id']}"
                      "&wait=10").json()
    assert body["status"] == "failed" and body["error"]["code"] == "model_mismatch"
