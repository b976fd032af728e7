"""Gateway fixtures: an app on real Redis, and an in-process worker driving the instant test engine."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient
from redis import Redis

from gateway.app import create_app
from gateway.config import GatewaySettings
from tests.conftest import free_port
from worker.config import WorkerSettings
from worker.constants import JANITOR_LOCK
from worker.contract import Priority
from worker.engine import Engine, InstantEngine
from worker.rqjobs import queue_names
from worker.runner import Runner

MODEL = "test-model"
# The RQ queues of MODEL's pool.
INTERACTIVE_QUEUE = queue_names(MODEL)[Priority.INTERACTIVE]
BATCH_QUEUE = queue_names(MODEL)[Priority.BATCH]


@pytest.fixture
def settings_factory(redis_url: str, tmp_path: Path) -> Callable[..., GatewaySettings]:
    def create(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {"redis_url": redis_url, "model": MODEL, "auth_enabled": False,
                                  "l2_path": tmp_path / "l2.sqlite3", "janitor_interval_s": 0.2,
                                  "max_wait_s": 10.0}
        values.update(overrides)
        return GatewaySettings(**values)

    return create


@pytest.fixture
def client_factory(settings_factory: Callable[..., GatewaySettings]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def create(**overrides: Any) -> TestClient:
        client = TestClient(create_app(settings_factory(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield create
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(client_factory: Callable[..., TestClient]) -> TestClient:
    return client_factory()


class ThreadWorker:
    """A real Runner on its own event loop in a thread, driving a given engine (default: instant)."""

    def __init__(self, redis_url: str, engine: Engine, **overrides: Any) -> None:
        values: dict[str, Any] = {"redis_url": redis_url, "model": MODEL, "engine": "instant",
                                  "heartbeat_interval_s": 0.2, "metrics_port": 0}
        values.update(overrides)
        self.settings = WorkerSettings(**values)
        self.engine = engine
        self.redis = Redis.from_url(redis_url)
        self.loop = asyncio.new_event_loop()
        self.runner: Runner | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = Runner(self.settings, self.engine, self.redis, "test-worker")
        self.started.set()
        self.loop.run_until_complete(self.runner.run())

    def start(self) -> ThreadWorker:
        self.thread.start()
        self.started.wait(5)
        return self

    def stop(self) -> None:
        if self.runner is not None:
            self.loop.call_soon_threadsafe(self.runner.request_stop)
        self.thread.join(timeout=15)
        self.loop.close()
        self.redis.close()


@pytest.fixture
def worker_factory(redis_url: str) -> Iterator[Callable[..., ThreadWorker]]:
    workers: list[ThreadWorker] = []

    def create(engine: Engine | None = None, **overrides: Any) -> ThreadWorker:
        worker = ThreadWorker(redis_url, engine or InstantEngine(), **overrides).start()
        workers.append(worker)
        return worker

    yield create
    for worker in workers:
        worker.stop()


def job_of(redis: Redis, request_id: str) -> str:
    """The job a request waits on, read through the record's own model."""
    from worker.constants import REQUEST_PREFIX
    from worker.contract import RequestRecord

    record = RequestRecord.model_validate_json(redis.hget(REQUEST_PREFIX + request_id, "doc"))
    assert record.job_id is not None
    return record.job_id


Check = Callable[..., dict[str, Any]]
UNCHECKED = object()


def redis_keys(redis_client: Redis) -> set[bytes]:
    return {key for key in redis_client.keys("*") if key != JANITOR_LOCK.encode()}


@pytest.fixture
def refused(redis_client: Redis) -> Check:
    """Checks one refusal against the Redis keys present when the test began."""
    before = redis_keys(redis_client)

    def check(response: httpx.Response, status: int, code: str, param: object = UNCHECKED) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert "Traceback" not in response.text and 'File "' not in response.text
        body = response.json()
        assert set(body) == {"error"}
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code", "request_id"}
        assert error["code"] == code
        assert error["type"] == "invalid_request_error"
        assert isinstance(error["message"], str) and error["message"]
        assert error["request_id"] == response.headers["x-request-id"]
        if param is not UNCHECKED:
            assert error["param"] == param
        assert redis_keys(redis_client) == before
        return error

    return check


ServerFactory = Callable[..., str]


@pytest.fixture
def server_factory(settings_factory: Callable[..., GatewaySettings]) -> Iterator[ServerFactory]:
    """Start real uvicorn servers of ``create_app(settings)`` in threads; yields their base URLs."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def create(**overrides: Any) -> str:
        port = free_port()
        app = create_app(settings_factory(**overrides))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                               log_level="warning", ws="none"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 5
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    yield create
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=5)


_OPEN: list[openai.OpenAI] = []


def sdk(base: str, key: str = "unused") -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=20)
    _OPEN.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close every SDK client a test made: an unclosed one warns when collected, and warnings are errors."""
    yield
    while _OPEN:
        _OPEN.pop().close()
