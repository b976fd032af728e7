"""Faults that really kill processes: a worker SIGKILLed or SIGTERMed with jobs in flight, Redis down."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.registry import StartedJobRegistry

from tests.conftest import ProcessGroup, RedisProcess, free_port
from tests.gateway.conftest import INTERACTIVE_QUEUE, MODEL, ThreadWorker
from tests.gateway.test_request_path import post
from worker.contract import ErrorCode
from worker.engine import EngineError, EngineRequest, InstantEngine


def start_worker(processes: ProcessGroup, redis_url: str, delay_s: float, max_inflight: int = 8):
    env = {"VLQ_WORKER_REDIS_URL": redis_url, "VLQ_WORKER_MODEL": MODEL, "VLQ_WORKER_ENGINE": "instant",
           "VLQ_WORKER_INSTANT_DELAY_S": str(delay_s), "VLQ_WORKER_HEARTBEAT_TTL_S": "5",
           "VLQ_WORKER_HEARTBEAT_INTERVAL_S": "0.5", "VLQ_WORKER_METRICS_PORT": "0",
           "VLQ_WORKER_MAX_INFLIGHT": str(max_inflight)}
    return processes.start("worker", ["-m", "worker"], env)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def submit_distinct(client: TestClient, image_factory: Callable[..., bytes], count: int) -> list[str]:
    urls = []
    for n in range(count):
        response = post(client, [image_factory((n, 2 * n, 3))])
        assert response.status_code == 202, response.text
        urls.append(response.json()["result_url"])
    return urls


def started_count(redis_client: Redis) -> int:
    return StartedJobRegistry(INTERACTIVE_QUEUE, connection=redis_client).get_job_count(cleanup=False)


def test_sigkilled_workers_jobs_finish_on_a_restarted_worker(
        client_factory: Callable[..., TestClient], processes: ProcessGroup, redis_url: str,
        redis_client: Redis, image_factory: Callable[..., bytes]) -> None:
    client = client_factory(stale_after_s=5, job_retries=2)
    worker = start_worker(processes, redis_url, delay_s=30)
    urls = submit_distinct(client, image_factory, 6)
    wait_until(lambda: started_count(redis_client) == 6, 20, "six jobs in flight")
    processes.kill(worker)
    assert client.get(urls[0]).json()["status"] == "running"  # nobody finished it yet
    start_worker(processes, redis_url, delay_s=0.05)
    results = [client.get(url + "&wait=10").json() for url in urls]
    assert [r["status"] for r in results] == ["done"] * 6, results
    assert len({r["result"]["text"] for r in results}) == 6
    assert started_count(redis_client) == 0
    # `rq info` tells the truth about the restarted worker too.
    wait_until(lambda: _live_worker_stats(redis_client) == ("idle", 6), 10, "worker stats in RQ")


def _live_worker_stats(redis_client: Redis) -> tuple[str, int]:
    from rq.worker import Worker

    workers = [w for w in Worker.all(connection=redis_client) if w.successful_job_count]
    return (workers[0].get_state(), workers[0].successful_job_count) if workers else ("", 0)


def test_sigkilled_job_without_retries_fails_cleanly_with_no_worker_alive(
        client_factory: Callable[..., TestClient], processes: ProcessGroup, redis_url: str,
        redis_client: Redis, image_factory: Callable[..., bytes]) -> None:
    client = client_factory(stale_after_s=5, job_retries=0)
    worker = start_worker(processes, redis_url, delay_s=30)
    urls = submit_distinct(client, image_factory, 3)
    wait_until(lambda: started_count(redis_client) == 3, 20, "three jobs in flight")
    processes.kill(worker)
    results = [client.get(url + "&wait=10").json() for url in urls]
    assert [r["status"] for r in results] == ["failed"] * 3, results
    assert {r["error"]["code"] for r in results} == {"worker_lost"}
    assert started_count(redis_client) == 0


def test_sigterm_drains_in_flight_jobs_and_takes_nothing_new(
        client_factory: Callable[..., TestClient], processes: ProcessGroup, redis_url: str,
        redis_client: Redis, image_factory: Callable[..., bytes]) -> None:
    client = client_factory()
    worker = start_worker(processes, redis_url, delay_s=2, max_inflight=2)
    urls = submit_distinct(client, image_factory, 4)
    wait_until(lambda: started_count(redis_client) == 2, 20, "two jobs in flight")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, processes.log_of(worker)
    statuses = [client.get(url).json()["status"] for url in urls]
    assert statuses[:2] == ["done", "done"]
    assert statuses[2:] == ["queued", "queued"]


def test_redis_down_is_a_quick_503_never_a_500(
        client_factory: Callable[..., TestClient], image_factory: Callable[..., bytes]) -> None:
    client = client_factory(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.5)
    started = time.monotonic()
    submitted = post(client, [image_factory((3, 3, 3))])
    polled = client.get("/api/result?request_id=" + "b" * 22)
    ready = client.get("/readyz")
    assert time.monotonic() - started < 5
    for response in (submitted, polled, ready):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "backend_unavailable"


def test_redis_sigkill_and_aof_restart_loses_no_accepted_request(
        client_factory: Callable[..., TestClient], processes: ProcessGroup, tmp_path: Path,
        image_factory: Callable[..., bytes]) -> None:
    redis = RedisProcess(tmp_path, appendonly=True)
    redis.start()
    try:
        client = client_factory(redis_url=redis.url, redis_timeout_s=1.0)
        start_worker(processes, redis.url, delay_s=2.0, max_inflight=3)
        urls = submit_distinct(client, image_factory, 5)
        check = Redis.from_url(redis.url)
        wait_until(lambda: started_count(check) == 3, 20, "three jobs in flight, two queued")
        check.close()
        redis.kill()
        time.sleep(1.0)
        redis.start()
        results = [client.get(url + "&wait=10").json() for url in urls]
        assert [r["status"] for r in results] == ["done"] * 5, results
    finally:
        redis.kill()


def test_gateway_sigkill_under_load_loses_no_accepted_job(
        processes: ProcessGroup, redis_url: str, tmp_path: Path, image_factory: Callable[..., bytes]) -> None:
    port = free_port()
    env = {"VLQ_GATEWAY_REDIS_URL": redis_url, "VLQ_GATEWAY_MODEL": MODEL, "VLQ_GATEWAY_PORT": str(port),
           "VLQ_GATEWAY_AUTH_ENABLED": "false", "VLQ_GATEWAY_L2_PATH": str(tmp_path / "l2.db")}
    base = f"http://127.0.0.1:{port}"
    gateway = processes.start("gateway", ["-m", "gateway"], env)
    wait_until(lambda: _ready(base), 30, "gateway")
    start_worker(processes, redis_url, delay_s=0.5)
    with httpx.Client(base_url=base, timeout=30) as http:
        urls = [http.post("/api/infer", data={"prompt": "q"},
                          files=[("image", ("i.png", image_factory((n, 9, 9)), "image/png"))]).json()["result_url"]
                for n in range(6)]
    processes.kill(gateway)
    processes.start("gateway", ["-m", "gateway"], env)
    wait_until(lambda: _ready(base), 30, "restarted gateway")
    with httpx.Client(base_url=base, timeout=30) as http:
        statuses = [http.get(url + "&wait=10").json()["status"] for url in urls]
    assert statuses == ["done"] * 6


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class DyingEngine(InstantEngine):
    """Test double whose engine process dies on the first call, as vLLM's EngineCore can."""

    async def stream(self, request: EngineRequest):
        self.errored = True
        raise EngineError(ErrorCode.ENGINE_ERROR, "The engine process is gone.")
        yield  # an async generator, as the engine protocol has it


def test_dead_engine_hands_jobs_back_and_stops_the_worker(
        client: TestClient, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes],
        redis_client: Redis) -> None:
    worker = worker_factory(DyingEngine())
    accepted = post(client, [image_factory((6, 6, 1))]).json()
    worker.thread.join(timeout=10)
    assert not worker.thread.is_alive()
    assert worker.runner is not None and worker.runner.engine_died
    assert client.get(accepted["result_url"]).json()["status"] == "queued"  # not failed: another worker runs it
    worker_factory()
    assert client.get(accepted["result_url"] + "&wait=10").json()["status"] == "done"
