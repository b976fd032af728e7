"""The Batch API through the official ``openai`` SDK: files in, lines as batch-priority requests on the one
lifecycle, request_counts, OpenAI-shaped output and error files, cancel, tenants, and a gateway restart
mid-batch (real uvicorn servers, real Redis, the instant engine)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.registry import FinishedJobRegistry

from gateway import batches
from gateway.app import create_app
from gateway.auth import hash_key
from gateway.backend import connect
from tests.gateway.conftest import BATCH_QUEUE, INTERACTIVE_QUEUE, MODEL, ServerFactory, ThreadWorker, sdk
from worker.contract import BatchRecord
from worker.engine import InstantEngine

pytestmark = pytest.mark.timeout(90)
FAST = {"batch_poll_s": 0.05}


def line(custom_id: str | None, text: str, **body: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"method": "POST", "url": "/v1/chat/completions", "body": {
        "model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 16, **body}}
    if custom_id is not None:
        entry["custom_id"] = custom_id
    return entry


def jsonl(*lines: dict[str, Any] | str) -> bytes:
    return "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines).encode()


def upload(client: openai.OpenAI, data: bytes) -> str:
    return client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id


def start(client: openai.OpenAI, file_id: str, **extra: Any) -> Any:
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                 completion_window="24h", **extra)


def wait_status(client: openai.OpenAI, batch_id: str, statuses: set[str], limit_s: float = 30) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}: {batch.request_counts}"
        time.sleep(0.05)


def file_lines(client: openai.OpenAI, file_id: str | None) -> dict[str | None, dict[str, Any]]:
    assert file_id is not None
    rows = [json.loads(row) for row in client.files.content(file_id).text.splitlines() if row]
    return {row["custom_id"]: row for row in rows}


def test_a_batch_runs_its_lines_at_batch_priority_and_writes_openai_files(
        server_factory: ServerFactory, worker_factory: Callable[..., ThreadWorker], redis_client: Redis) -> None:
    worker_factory()
    client = sdk(server_factory(**FAST))
    data = jsonl(line("a", "first question"), line("b", "second question"), line("c", "first question"),
                 '{"custom_id": "f", "body": {}}', line("d", "two answers", n=2),
                 {**line("e", "x"), "url": "/v1/embeddings"}, line(None, "no id"), "")
    batch = start(client, upload(client, data), metadata={"run": "nightly"})
    assert batch.status == "validating" and batch.metadata == {"run": "nightly"}
    done = wait_status(client, batch.id, {"completed", "failed"})
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (7, 3, 4)
    output = file_lines(client, done.output_file_id)
    assert set(output) == {"a", "b", "c"}
    for custom_id, row in output.items():
        assert row["error"] is None and row["response"]["status_code"] == 200
        body = row["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["choices"][0]["message"]["content"].startswith("instant-engine"), custom_id
    # a and c ask the same thing: one engine job (coalesced or cached), the same answer.
    assert (output["a"]["response"]["body"]["choices"][0]["message"]["content"]
            == output["c"]["response"]["body"]["choices"][0]["message"]["content"])
    errors = file_lines(client, done.error_file_id)
    assert set(errors) == {None, "d", "e", "f"}
    assert errors["d"]["response"]["status_code"] == 400
    assert errors["d"]["response"]["body"]["error"]["param"] == "n"
    assert errors["e"]["error"]["code"] == "invalid_url"
    assert errors["f"]["error"]["code"] == "invalid_method"
    assert errors[None]["error"]["code"] == "missing_custom_id"
    # Every line ran on the batch queue, none on the interactive one.
    assert FinishedJobRegistry(BATCH_QUEUE, connection=redis_client).count == 2
    assert FinishedJobRegistry(INTERACTIVE_QUEUE, connection=redis_client).count == 0
    assert [b.id for b in client.batches.list()] == [batch.id]


def test_a_gateway_restart_mid_batch_loses_nothing_and_repeats_nothing(
        settings_factory: Callable[..., Any], server_factory: ServerFactory,
        worker_factory: Callable[..., ThreadWorker], redis_client: Redis) -> None:
    # No worker yet, and at most 3 lines open: the first gateway submits 3, waits, and is shut down.
    with TestClient(create_app(settings_factory(**FAST, batch_max_open_lines=3))) as gateway:
        first = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=gateway, max_retries=0)
        batch = start(first, upload(first, jsonl(*(line(f"q{n}", f"question {n}") for n in range(6)))))
        deadline = time.monotonic() + 10
        while redis_client.llen(f"rq:queue:{BATCH_QUEUE}") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        assert redis_client.llen(f"rq:queue:{BATCH_QUEUE}") == 3
    # Nothing of the batch lived in that process: a new gateway and a worker finish it, each line once.
    second = sdk(server_factory(**FAST, batch_max_open_lines=3))
    worker_factory()
    done = wait_status(second, batch.id, {"completed"})
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
    assert set(file_lines(second, done.output_file_id)) == {f"q{n}" for n in range(6)}
    assert FinishedJobRegistry(BATCH_QUEUE, connection=redis_client).count == 6


def test_cancel_stops_open_and_unsubmitted_lines(server_factory: ServerFactory, redis_client: Redis) -> None:
    client = sdk(server_factory(**FAST, batch_max_open_lines=2))
    batch = start(client, upload(client, jsonl(*(line(f"k{n}", f"cancel me {n}") for n in range(5)))))
    wait_status(client, batch.id, {"in_progress"})
    assert client.batches.cancel(batch.id).status in {"cancelling", "cancelled"}
    done = wait_status(client, batch.id, {"cancelled"})
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 5)
    assert done.output_file_id is None
    errors = file_lines(client, done.error_file_id)
    assert set(errors) == {f"k{n}" for n in range(5)}
    codes = {row["error"]["code"] if row["error"] else row["response"]["body"]["error"]["code"]
             for row in errors.values()}
    assert codes <= {"batch_cancelled", "canceled"} and "batch_cancelled" in codes
    assert redis_client.llen(f"rq:queue:{BATCH_QUEUE}") == 0


def test_a_file_unusable_as_a_whole_fails_the_batch(server_factory: ServerFactory) -> None:
    client = sdk(server_factory(**FAST))
    batch = start(client, upload(client, jsonl(line("same", "one"), line("same", "two"))))
    failed = wait_status(client, batch.id, {"failed", "completed"})
    assert failed.status == "failed"
    assert failed.errors is not None and failed.errors.data[0].code == "duplicate_custom_id"
    assert failed.errors.data[0].line == 2


def test_bad_batch_parameters_are_named(server_factory: ServerFactory) -> None:
    client = sdk(server_factory(**FAST))
    file_id = upload(client, jsonl(line("a", "q")))
    cases = [({"endpoint": "/v1/embeddings"}, "endpoint"), ({"completion_window": "1h"}, "completion_window"),
             ({"input_file_id": "file-AAAAAAAAAAAAAAAAAAAAAA"}, "input_file_id")]
    for change, param in cases:
        fields = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                  **change}
        with pytest.raises(openai.APIStatusError) as caught:
            client.batches.create(**fields)
        assert caught.value.status_code in (400, 404)
        assert caught.value.body["param"] == param
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_batches_and_their_files_are_tenant_bound(server_factory: ServerFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"alice": [hash_key("key-a")], "bob": [hash_key("key-b")]}))
    base = server_factory(**FAST, auth_enabled=True, api_keys_file=keys)
    alice, bob = sdk(base, "key-a"), sdk(base, "key-b")
    file_id = upload(alice, jsonl(line("a", "q")))
    batch = start(alice, file_id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        start(bob, file_id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(batch.id)
    assert [b.id for b in bob.batches.list()] == []


def test_an_interactive_request_overtakes_a_queued_batch(
        server_factory: ServerFactory, worker_factory: Callable[..., ThreadWorker], redis_client: Redis) -> None:
    base = server_factory(**FAST)
    client = sdk(base)
    batch = start(client, upload(client, jsonl(*(line(f"b{n}", f"batch line {n}") for n in range(24)))))
    deadline = time.monotonic() + 10
    while redis_client.llen(f"rq:queue:{BATCH_QUEUE}") < 24:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Two slots, one kept for interactive work; each job takes 0.2 s: the batch alone needs about 4.8 s.
    worker_factory(InstantEngine(delay_s=0.2), max_inflight=2, interactive_reserve=1)
    time.sleep(0.5)
    started = time.monotonic()
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "now please"}])
    waited = time.monotonic() - started
    assert answer.choices[0].message.content.startswith("instant-engine")
    assert waited < 1.0, f"the interactive request waited {waited:.2f} s behind the batch"
    assert redis_client.llen(f"rq:queue:{BATCH_QUEUE}") > 5  # the batch was still queued
    wait_status(client, batch.id, {"completed"})


def test_a_driver_write_after_a_cancel_keeps_the_cancel(settings_factory: Callable[..., Any]) -> None:
    """The driver may hold a record read before the client's cancel; its write must not undo the cancel."""
    async def go() -> batches.Batch:
        backend = connect(settings_factory())
        try:
            now = time.time()
            record = BatchRecord(tenant="public", input_file_id="file-x", endpoint=batches.ENDPOINT,
                                 completion_window="24h", created_at=now, expires_at=now + 100, status="in_progress")
            stale = batches.Batch("batch_" + "a" * 22, record)
            await batches.update(backend, stale)
            await batches.cancel(backend, "public", stale.batch_id)
            return await batches.update(backend, stale, status="in_progress", submitted=3)
        finally:
            await backend.aredis.aclose()
            await backend.stream_redis.aclose()
            backend.redis.close()
            backend.l2.close()

    after = asyncio.run(go())
    assert (after.record.status, after.record.submitted) == ("cancelling", 3)
    assert after.record.cancelling_at is not None
