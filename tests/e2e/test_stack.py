"""End to end on real parts: redis-server, a vLLM worker (tiny random-weight Qwen3-VL on CPU) and the
gateway, each a real process. Slow (the engine takes about a minute to start), so one stack serves the
module; the SIGKILL test runs last and restarts the worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from redis import Redis

from tests.conftest import ROOT, ProcessGroup, RedisProcess, free_port, make_image, parse_sse
from worker.config import DEFAULT_MODEL
from worker.constants import ENGINE_CALLS, MAX_INFLIGHT_SEEN

pytestmark = pytest.mark.e2e
MODEL_DIR = ROOT / DEFAULT_MODEL


@dataclass
class Stack:
    redis: RedisProcess
    procs: ProcessGroup
    worker: subprocess.Popen[bytes]
    worker_env: dict[str, str]
    metrics_port: int
    base: str

    def start_worker(self) -> None:
        self.worker = self.procs.start("worker", ["-m", "worker"], self.worker_env)
        wait_http(f"http://127.0.0.1:{self.metrics_port}/healthz", 300, self.worker, self.procs)


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], procs: ProcessGroup) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, procs.log_of(proc)[-4000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not ready in {timeout_s} s: {procs.log_of(proc)[-4000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not (MODEL_DIR / "config.json").exists():
        subprocess.run([sys.executable, "-m", "worker.tiny_model", "--out", str(MODEL_DIR)], cwd=ROOT,
                       check=True)
    redis = RedisProcess(tmp_path_factory.mktemp("e2e-redis"))
    redis.start()
    procs = ProcessGroup(tmp_path_factory.mktemp("e2e-logs"))
    metrics_port, port = free_port(), free_port()
    worker_env = {"VLQ_WORKER_REDIS_URL": redis.url, "VLQ_WORKER_MODEL": DEFAULT_MODEL,
                  "VLQ_WORKER_METRICS_PORT": str(metrics_port), "VLQ_WORKER_MAX_INFLIGHT": "8",
                  "VLQ_WORKER_MAX_NUM_SEQS": "8", "VLQ_WORKER_MAX_MODEL_LEN": "1024",
                  "VLQ_WORKER_ENFORCE_EAGER": "true", "VLQ_WORKER_HEARTBEAT_TTL_S": "5",
                  "VLQ_WORKER_HEARTBEAT_INTERVAL_S": "1"}
    gateway_env = {"VLQ_GATEWAY_REDIS_URL": redis.url, "VLQ_GATEWAY_MODEL": DEFAULT_MODEL,
                   "VLQ_GATEWAY_PORT": str(port), "VLQ_GATEWAY_AUTH_ENABLED": "false",
                   "VLQ_GATEWAY_STALE_AFTER_S": "5", "VLQ_GATEWAY_JANITOR_INTERVAL_S": "0.5",
                   "VLQ_GATEWAY_L2_PATH": str(tmp_path_factory.mktemp("l2") / "l2.sqlite3")}
    try:
        worker = procs.start("worker", ["-m", "worker"], worker_env)
        started = time.monotonic()
        stack = Stack(redis, procs, worker, worker_env, metrics_port, f"http://127.0.0.1:{port}")
        wait_http(f"http://127.0.0.1:{metrics_port}/healthz", 300, worker, procs)
        print(f"\nworker (vLLM, tiny model) ready in {time.monotonic() - started:.1f} s")
        gateway = procs.start("gateway", ["-m", "gateway"], gateway_env)
        wait_http(f"{stack.base}/readyz", 60, gateway, procs)
        yield stack
    finally:
        procs.stop_all()
        redis.stop()


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base, timeout=120) as client:
        yield client


@pytest.fixture
def rdb(stack: Stack) -> Iterator[Redis]:
    client = Redis.from_url(stack.redis.url)
    yield client
    client.close()


def submit(http: httpx.Client, image: bytes, prompt: str = "Describe the picture.", **fields: str) -> httpx.Response:
    return http.post("/api/infer", data={"prompt": prompt, "max_tokens": "12", **fields},
                     files=[("image", ("i.png", image, "image/png"))])


def final(http: httpx.Client, response: httpx.Response) -> dict:
    if response.status_code == 200:
        return response.json()
    assert response.status_code == 202, response.text
    for _ in range(6):
        polled = http.get(response.json()["result_url"] + "&wait=30")
        if polled.status_code == 200:
            return polled.json()
    pytest.fail(f"no result for {response.json()}")


def engine_calls(rdb: Redis) -> int:
    return int(rdb.get(ENGINE_CALLS) or 0)


def test_results_arrive_and_differ_by_image(http: httpx.Client) -> None:
    started = time.monotonic()
    first = final(http, submit(http, make_image((220, 20, 20))))
    latency = time.monotonic() - started
    print(f"\none request, submit to result: {latency:.2f} s; engine {first['timings']['engine_s']} s")
    results = [first] + [final(http, submit(http, make_image(c))) for c in ((20, 220, 20), (20, 20, 220))]
    assert [r["status"] for r in results] == ["done"] * 3, results
    assert all(r["result"]["text"] for r in results)
    assert all(r["result"]["usage"]["completion_tokens"] >= 1 for r in results)
    assert len({r["result"]["text"] for r in results}) == 3


def test_repeat_is_a_cache_hit_without_an_engine_call(http: httpx.Client, rdb: Redis) -> None:
    image = make_image((120, 60, 30))
    answer = final(http, submit(http, image))
    calls = engine_calls(rdb)
    repeat = submit(http, image)
    assert repeat.status_code == 200
    assert repeat.headers["x-cache"] == "HIT-L1"
    assert repeat.json()["result"] == answer["result"]
    assert engine_calls(rdb) == calls


def test_ten_concurrent_identical_posts_make_one_engine_call(http: httpx.Client, rdb: Redis) -> None:
    image = make_image((10, 130, 250), size=(224, 224))
    calls = engine_calls(rdb)
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: submit(http, image, max_tokens="24"), range(10)))
    answers = [final(http, r) for r in responses]
    assert len({a["result"]["text"] for a in answers}) == 1
    assert engine_calls(rdb) == calls + 1


def test_distinct_screenshots_never_share_a_cached_answer(http: httpx.Client, rdb: Redis) -> None:
    shots = [make_image((255, 255, 255), size=(320, 96), text=f"TOTAL DUE 1,204.5{d}") for d in "38"]
    calls = engine_calls(rdb)
    responses = [submit(http, shot, prompt="What is the total due?") for shot in shots]
    assert [r.headers["x-cache"] for r in responses] == ["MISS", "MISS"]
    answers = [final(http, r) for r in responses]
    assert engine_calls(rdb) == calls + 2
    again = [submit(http, shot, prompt="What is the total due?").json()["result"] for shot in shots]
    assert again == [a["result"] for a in answers]


def test_several_jobs_are_in_flight_on_the_engine_at_once(http: httpx.Client, rdb: Redis, stack: Stack) -> None:
    images = [make_image((n * 30, 255 - n * 30, 90), size=(96, 96)) for n in range(8)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda image: submit(http, image, max_tokens="32"), images))
    results = [final(http, r) for r in responses]
    assert all(r["status"] == "done" for r in results)
    peak = int(rdb.get(MAX_INFLIGHT_SEEN) or 0)
    print(f"\npeak jobs in flight on one engine: {peak}")
    assert peak >= 2
    scrape = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
    assert 'vlq_worker_jobs_total{outcome="done"}' in scrape


def test_prompt_too_long_for_the_model_fails_clearly_and_the_worker_keeps_serving(http: httpx.Client) -> None:
    too_long = final(http, submit(http, make_image((1, 2, 250)), prompt="tell me about it " * 700))
    assert too_long["status"] == "failed", too_long
    assert too_long["error"]["code"] == "prompt_too_long"
    assert "Traceback" not in too_long["error"]["message"]
    after = final(http, submit(http, make_image((250, 2, 1))))
    assert after["status"] == "done"


def ask(http: httpx.Client, messages: list[dict], **extra: object) -> httpx.Response:
    return http.post("/api/infer", json={"messages": messages, "max_tokens": 12, **extra})


def user(*parts: dict | str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]}


def upload(http: httpx.Client, image: bytes) -> dict:
    response = http.post("/api/media", files={"file": ("shot.png", image, "image/png")})
    assert response.status_code == 201, response.text
    return {"type": "image_url", "image_url": {"url": f"vlq://media/{response.json()['media_id']}"}}


def sse(http: httpx.Client, request_id: str) -> list[tuple[int | None, str, dict]]:
    with http.stream("GET", f"/api/stream?request_id={request_id}") as response:
        assert response.status_code == 200
        return parse_sse(response.iter_lines())


def test_three_turn_conversation_answers_by_history_and_is_cached(http: httpx.Client, rdb: Redis) -> None:
    image = upload(http, make_image((200, 200, 20), size=(224, 224)))
    history = [user(image, "What is this?"), {"role": "assistant", "content": "A yellow square."},
               user("What colour is it?")]
    other = [history[0], {"role": "assistant", "content": "Nothing at all, really."}, history[2]]
    first, second = final(http, ask(http, history)), final(http, ask(http, other))
    assert first["status"] == second["status"] == "done"
    assert first["result"]["text"] != second["result"]["text"]  # the history reached the model
    calls = engine_calls(rdb)
    repeat = ask(http, history)
    assert repeat.status_code == 200 and repeat.headers["x-cache"] == "HIT-L1"
    assert repeat.json()["result"]["text"] == first["result"]["text"]
    assert engine_calls(rdb) == calls


def test_streamed_deltas_make_the_answer(http: httpx.Client) -> None:
    accepted = ask(http, [user(upload(http, make_image((30, 90, 160))), "Tell a long story.")], max_tokens=96,
                   cache="off")
    events = sse(http, accepted.json()["request_id"])
    durable = [e for e in events if e[0] is not None]
    assert [e[0] for e in durable] == list(range(1, len(durable) + 1))
    assert durable[0][1] == "queued" and durable[-1][1] == "done"
    deltas = [e[2]["text"] for e in durable if e[1] == "delta"]
    assert len(deltas) >= 2  # streamed, not one final blob
    done = durable[-1][2]
    assert "".join(deltas) == done["result"]["text"] == final(http, accepted)["result"]["text"]
    timings = done["timings"]
    print(f"\nfirst delta after {timings['first_delta_s']} s, done after {timings['total_s']} s, "
          f"{len(deltas)} deltas for {done['result']['usage']['completion_tokens']} tokens")
    assert 0 < timings["first_delta_s"] < timings["total_s"]


def test_json_schema_and_task_presets_validate(http: httpx.Client) -> None:
    from jsonschema import validate

    from worker.presets import Task, preset

    shot = upload(http, make_image((240, 240, 240), size=(320, 240), text="Pay 12.50 EUR  [ OK ]"))
    schema = {"type": "object", "additionalProperties": False, "required": ["total", "kind"],
              "properties": {"total": {"type": "string", "maxLength": 12},
                             "kind": {"type": "string", "enum": ["invoice", "receipt"]}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "bill", "schema": schema}}
    answer = final(http, ask(http, [user(shot, "Extract the total.")], response_format=fmt, max_tokens=64))
    assert answer["status"] == "done", answer
    validate(answer["result"]["json"], schema)
    assert json.loads(answer["result"]["text"]) == answer["result"]["json"]
    for task in (Task.OCR, Task.GUI):
        result = final(http, ask(http, [user(shot, "Go.")], task=task.value, max_tokens=400))
        assert result["status"] == "done", result
        assert result["result"]["json"] is not None, result["result"]
        validate(result["result"]["json"], preset(task).schema)


def test_sigkilled_worker_jobs_finish_on_a_restarted_worker(http: httpx.Client, stack: Stack) -> None:
    images = [make_image((n, 200, 200 - n), size=(128, 128)) for n in range(4)]
    responses = [submit(http, image, max_tokens="512") for image in images]
    time.sleep(1.0)
    stack.procs.kill(stack.worker)  # the worker and its engine processes, as when a pod dies
    stack.start_worker()
    results = [final(http, r) for r in responses]
    statuses = [r["status"] for r in results]
    assert set(statuses) <= {"done", "failed"}, results
    assert all(r["error"]["code"] == "worker_lost" for r in results if r["status"] == "failed")
    assert statuses.count("done") >= 1
