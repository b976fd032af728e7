"""The official ``openai`` SDK against a real stack: redis-server, a vLLM worker (the tiny random-weight
Qwen3-VL on CPU) and the gateway, each a real process (the fixture pattern of ``test_stack.py``). The model's
text is noise, so answers are checked for shape, agreement between calls and the schema, not for meaning.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import openai
import pytest
from jsonschema import validate

from tests.conftest import ROOT, ProcessGroup, RedisProcess, free_port, make_image
from tests.e2e.test_stack import MODEL_DIR, wait_http
from worker.config import DEFAULT_MODEL

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A whole stack for the module; yields the gateway's base URL."""
    if not (MODEL_DIR / "config.json").exists():
        subprocess.run([sys.executable, "-m", "worker.tiny_model", "--out", str(MODEL_DIR)], cwd=ROOT,
                       check=True)
    redis = RedisProcess(tmp_path_factory.mktemp("e2e-openai-redis"))
    redis.start()
    procs = ProcessGroup(tmp_path_factory.mktemp("e2e-openai-logs"))
    metrics_port, port = free_port(), free_port()
    worker_env = {"VLQ_WORKER_REDIS_URL": redis.url, "VLQ_WORKER_MODEL": DEFAULT_MODEL,
                  "VLQ_WORKER_METRICS_PORT": str(metrics_port), "VLQ_WORKER_MAX_INFLIGHT": "8",
                  "VLQ_WORKER_MAX_NUM_SEQS": "8", "VLQ_WORKER_MAX_MODEL_LEN": "1024",
                  "VLQ_WORKER_ENFORCE_EAGER": "true"}
    gateway_env = {"VLQ_GATEWAY_REDIS_URL": redis.url, "VLQ_GATEWAY_MODEL": DEFAULT_MODEL,
                   "VLQ_GATEWAY_PORT": str(port), "VLQ_GATEWAY_AUTH_ENABLED": "false",
                   "VLQ_GATEWAY_OPENAI_WAIT_S": "120",
                   "VLQ_GATEWAY_L2_PATH": str(tmp_path_factory.mktemp("e2e-openai-l2") / "l2.sqlite3")}
    try:
        worker = procs.start("worker", ["-m", "worker"], worker_env)
        started = time.monotonic()
        wait_http(f"http://127.0.0.1:{metrics_port}/healthz", 300, worker, procs)
        print(f"\nworker (vLLM, tiny model) ready in {time.monotonic() - started:.1f} s")
        gateway = procs.start("gateway", ["-m", "gateway"], gateway_env)
        wait_http(f"http://127.0.0.1:{port}/readyz", 60, gateway, procs)
        yield f"http://127.0.0.1:{port}"
    finally:
        procs.stop_all()
        redis.stop()


@pytest.fixture
def client(base: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=180) as sdk:
        yield sdk


def question(color: tuple[int, int, int], text: str = "Describe the picture.") -> list[dict[str, object]]:
    url = f"data:image/png;base64,{base64.b64encode(make_image(color)).decode()}"
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def test_models_name_the_served_model(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [DEFAULT_MODEL]
    assert client.models.retrieve(DEFAULT_MODEL).owned_by == "vlq"  # an id with slashes


def test_sync_completion_and_its_cache_hit(client: openai.OpenAI) -> None:
    messages = question((200, 40, 40))
    raw = client.chat.completions.with_raw_response.create(model=DEFAULT_MODEL, messages=messages, max_tokens=12)
    assert raw.headers["x-cache"] == "MISS"
    answer = raw.parse()
    assert answer.object == "chat.completion" and answer.model == DEFAULT_MODEL
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and 1 <= answer.usage.completion_tokens <= 12
    assert answer.usage.prompt_tokens > 10  # the image's tokens count
    again = client.chat.completions.with_raw_response.create(model=DEFAULT_MODEL, messages=messages, max_tokens=12)
    assert again.headers["x-cache"] == "HIT-L1"
    assert again.parse().choices[0].message.content == answer.choices[0].message.content


def test_stream_concatenates_to_the_answer(client: openai.OpenAI) -> None:
    messages = question((40, 200, 40))
    started = time.monotonic()
    chunks = list(client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, max_tokens=48,
                                                 stream=True, stream_options={"include_usage": True}))
    print(f"\nstreamed {len(chunks)} chunks in {time.monotonic() - started:.2f} s")
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) >= 2  # streamed, not one final blob
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    whole = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, max_tokens=48)
    assert "".join(contents) == whole.choices[0].message.content
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_json_schema_answer_validates(client: openai.OpenAI) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["total", "kind"],
              "properties": {"total": {"type": "string", "maxLength": 12},
                             "kind": {"type": "string", "enum": ["invoice", "receipt"]}}}
    answer = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=question((240, 240, 240), "Extract the total."), max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "bill", "schema": schema}})
    assert answer.choices[0].finish_reason == "stop"
    validate(json.loads(answer.choices[0].message.content), schema)


def test_unsupported_parameters_are_refused_by_the_real_stack(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=question((1, 2, 3)), n=2)
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "n")
