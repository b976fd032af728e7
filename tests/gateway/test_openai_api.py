"""The OpenAI-compatible API, driven by the official ``openai`` SDK against a real uvicorn server of the
gateway (real Redis) and an in-process worker on the instant engine.

The SDK's own retries are off (``max_retries=0``) so that every status the server answers reaches the test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from redis import Redis

from gateway.auth import hash_key
from gateway.openai_api import _chunks, _Transcript
from gateway.openai_models import Reply
from gateway.streams import KEEPALIVE, Item
from tests.gateway.conftest import INTERACTIVE_QUEUE, MODEL, ServerFactory, ThreadWorker, sdk
from worker.constants import ENGINE_CALLS
from worker.contract import ErrorCode
from worker.engine import EngineError, EngineRequest, InstantEngine

pytestmark = pytest.mark.timeout(60)
QUEUE_KEY = f"rq:queue:{INTERACTIVE_QUEUE}"
@pytest.fixture
def base(server_factory: ServerFactory) -> str:
    return server_factory()


def user(*parts: dict[str, Any] | str) -> dict[str, Any]:
    content = [{"type": "text", "text": part} if isinstance(part, str) else part for part in parts]
    return {"role": "user", "content": content}


def data_url(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


QUESTION = [{"role": "system", "content": "Be brief."}, user("What is this?")]


def test_models_lists_the_served_model_only(base: str, server_factory: ServerFactory) -> None:
    client = sdk(base)
    assert [(m.id, m.object, m.owned_by) for m in client.models.list()] == [(MODEL, "model", "vlq")]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o")
    assert (caught.value.status_code, caught.value.code) == (404, "model_not_found")
    hub_id = "Qwen/Qwen3-VL-2B-Instruct"  # model ids hold slashes
    assert sdk(server_factory(model=hub_id)).models.retrieve(hub_id).id == hub_id


def test_sync_completion_then_a_cache_hit(base: str, worker_factory: Callable[..., ThreadWorker]) -> None:
    worker_factory()
    client = sdk(base)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=32)
    assert raw.headers["x-cache"] == "MISS"
    first = raw.parse()
    request_id = raw.headers["x-vlq-request-id"]
    assert first.id == f"chatcmpl-{request_id}"
    assert (first.object, first.model, len(first.choices)) == ("chat.completion", MODEL, 1)
    choice = first.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "instant-engine prompt='What is this?' images= turns=2"
    assert choice.finish_reason == "stop"
    assert first.usage is not None and first.usage.completion_tokens == 4
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    # The same request id is an ordinary vlq request.
    polled = httpx.get(f"{base}/api/result", params={"request_id": request_id}).json()
    assert (polled["status"], polled["result"]["text"]) == ("done", choice.message.content)
    again = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=32)
    assert again.headers["x-cache"] == "HIT-L1"
    assert again.parse().choices[0].message.content == choice.message.content
    other = client.chat.completions.create(model=MODEL, messages=[user("Something else?")],
                                           max_completion_tokens=32, temperature=0.5, top_p=0.9, seed=7)
    assert other.choices[0].message.content.startswith("instant-engine prompt='Something else?'")


def test_async_client_coalesces_identical_requests(base: str, worker_factory: Callable[..., ThreadWorker],
                                                    redis_client: Redis) -> None:
    worker_factory(InstantEngine(delay_s=0.6))

    async def both() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=20)
        async with client:
            calls = [client.chat.completions.with_raw_response.create(model=MODEL, messages=[user("Twins?")])
                     for _ in range(2)]
            return list(await asyncio.gather(*calls))

    raws = asyncio.run(both())
    assert sorted(raw.headers["x-cache"] for raw in raws) == ["COALESCED", "MISS"]
    texts = {raw.parse().choices[0].message.content for raw in raws}
    assert texts == {"instant-engine prompt='Twins?' images= turns=1"}
    assert int(redis_client.get(ENGINE_CALLS)) == 1


def test_stream_concatenates_to_the_answer_with_usage(base: str, worker_factory: Callable[..., ThreadWorker]) -> None:
    worker_factory(InstantEngine(delay_s=0.4))
    client = sdk(base)
    chunks = list(client.chat.completions.create(model=MODEL, messages=[user("Stream it?")], stream=True,
                                                 stream_options={"include_usage": True}))
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(contents) >= 2  # streamed in pieces, not all at the end
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(chunk.usage is None for chunk in chunks[:-1])
    whole = client.chat.completions.create(model=MODEL, messages=[user("Stream it?")])
    assert "".join(contents) == whole.choices[0].message.content
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    # Without include_usage no usage chunk; the stream ends with [DONE]; a cache hit streams too.
    with httpx.stream("POST", f"{base}/v1/chat/completions",
                      json={"model": MODEL, "messages": [user("Stream it?")], "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-cache"] == "HIT-L1"
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    bodies = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(body["choices"] and "usage" not in body for body in bodies)
    assert "".join(b["choices"][0]["delta"].get("content") or "" for b in bodies) == whole.choices[0].message.content


def test_json_schema_and_json_object(base: str, worker_factory: Callable[..., ThreadWorker]) -> None:
    worker_factory()
    client = sdk(base)
    schema = {"type": "object", "properties": {"instant": {"type": "boolean"}}, "required": ["instant"],
              "additionalProperties": False}
    answer = client.chat.completions.create(
        model=MODEL, messages=[user("JSON please")],
        response_format={"type": "json_schema", "json_schema": {"name": "flag", "schema": schema, "strict": True}})
    assert json.loads(answer.choices[0].message.content) == {"instant": True}
    loose = client.chat.completions.create(model=MODEL, messages=[user("JSON please")],
                                           response_format={"type": "json_object"})
    assert json.loads(loose.choices[0].message.content) == {"instant": True}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[user("JSON please")],
                                       response_format={"type": "json_schema", "json_schema": {
                                           "name": "bad", "schema": {"type": "nonsense"}}})
    assert str(caught.value.param).startswith("response_format.json_schema.schema")


def test_images_by_data_url_and_media_id_share_the_cache(
        base: str, worker_factory: Callable[..., ThreadWorker], image_factory: Callable[..., bytes]) -> None:
    worker_factory()
    client = sdk(base)
    data = image_factory((10, 200, 30))
    digest = hashlib.sha256(data).hexdigest()[:12]
    inline = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[user(image_part(data_url(data)), "Which colour?")])
    assert inline.headers["x-cache"] == "MISS"
    text = inline.parse().choices[0].message.content
    assert text == f"instant-engine prompt='Which colour?' images={digest} turns=1"
    uploaded = httpx.post(f"{base}/api/media", files={"file": ("i.png", data, "image/png")})
    assert uploaded.status_code == 201, uploaded.text
    by_id = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[user(image_part(f"vlq://media/{uploaded.json()['media_id']}"), "Which colour?")])
    assert by_id.headers["x-cache"] == "HIT-L1"  # the same bytes: the same cache key
    assert by_id.parse().choices[0].message.content == text
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[user(image_part("vlq://media/med_" + "x" * 22), "?")])
    assert (caught.value.code, caught.value.param) == ("media_not_found", "messages[0].content[0].image_url.url")


@pytest.mark.parametrize(("extra", "code", "param"), [
    ({"n": 2}, "unsupported_parameter", "n"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "unsupported_parameter",
     "tools"),
    ({"logprobs": True}, "unsupported_parameter", "logprobs"),
    ({"presence_penalty": 0.5}, "unsupported_parameter", "presence_penalty"),
    ({"modalities": ["text", "audio"]}, "unsupported_parameter", "modalities"),
    ({"stop": ["\n"]}, "unsupported_parameter", "stop"),
    ({"extra_body": {"best_of": 3}}, "unknown_parameter", "best_of"),
    ({"max_tokens": 8, "max_completion_tokens": 8}, "invalid_parameter", "max_completion_tokens"),
    ({"max_completion_tokens": 100_000}, "invalid_parameter", "max_completion_tokens"),
    ({"temperature": 3}, "invalid_parameter", "temperature"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "invalid_conversation", "messages[0]"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "invalid_parameter", "messages[0].role"),
    ({"messages": [user("q"), {"role": "developer", "content": "late"}]}, "invalid_conversation", "messages[1]"),
])
def test_parameters_we_cannot_honour_are_400s_naming_them(
        base: str, redis_client: Redis, extra: dict[str, Any], code: str, param: str) -> None:
    call: dict[str, Any] = {"model": MODEL, "messages": [user("q")], **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(base).chat.completions.create(**call)
    error = caught.value
    assert (error.status_code, error.code, error.param) == (400, code, param)
    assert isinstance(error.body, dict) and error.body["type"] == "invalid_request_error"
    assert redis_client.llen(QUEUE_KEY) == 0


def test_neutral_values_of_unsupported_parameters_are_accepted(
        base: str, worker_factory: Callable[..., ThreadWorker]) -> None:
    worker_factory()
    answer = sdk(base).chat.completions.create(
        model=MODEL, messages=[user("neutral?")], n=1, tools=[], logprobs=False, presence_penalty=0,
        frequency_penalty=0, modalities=["text"], stop=[], user="end-user-1")
    assert answer.choices[0].message.content.startswith("instant-engine prompt='neutral?'")
    # OpenAI's newer name for the system turn.
    steered = sdk(base).chat.completions.create(
        model=MODEL, messages=[{"role": "developer", "content": "Be brief."}, user("neutral?")])
    assert steered.choices[0].message.content.endswith("turns=2")


def test_unknown_model_is_404(base: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(base).chat.completions.create(model="gpt-4o", messages=[user("q")])
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")


def test_auth_is_the_same_bearer_key(server_factory: ServerFactory, worker_factory: Callable[..., ThreadWorker],
                                     tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"acme": [hash_key("key-acme")]}))
    base = server_factory(auth_enabled=True, api_keys_file=keys)
    worker_factory()
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(base, "wrong").chat.completions.create(model=MODEL, messages=[user("q")])
    assert (caught.value.status_code, caught.value.code) == (401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        sdk(base, "wrong").models.list()
    # The SDK always sends a key; without one the answer is OpenAI's 401 too.
    bare = httpx.post(f"{base}/v1/chat/completions", json={"model": MODEL, "messages": [user("q")]})
    assert (bare.status_code, bare.json()["error"]["code"]) == (401, "missing_api_key")
    answer = sdk(base, "key-acme").chat.completions.create(model=MODEL, messages=[user("q")])
    assert answer.choices[0].message.content.startswith("instant-engine prompt='q'")


def test_rate_limit_is_429_with_retry_after(server_factory: ServerFactory,
                                            worker_factory: Callable[..., ThreadWorker]) -> None:
    base = server_factory(rate_limit_per_minute=1)
    worker_factory()
    client = sdk(base)
    client.chat.completions.create(model=MODEL, messages=[user("once")])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=[user("twice")])
    assert (caught.value.status_code, caught.value.code) == (429, "rate_limited")
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60


def test_past_the_wait_bound_the_error_names_the_request(
        server_factory: ServerFactory, worker_factory: Callable[..., ThreadWorker]) -> None:
    base = server_factory(openai_wait_s=0.3)
    worker_factory(InstantEngine(delay_s=1.5))
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(base).chat.completions.create(model=MODEL, messages=[user("slow?")])
    assert time.monotonic() - started < 1.4
    error = caught.value
    assert (error.status_code, error.code) == (504, "wait_timeout")
    assert error.response.headers["x-should-retry"] == "false"
    assert isinstance(error.body, dict)
    request_id = error.body["vlq_request_id"]
    assert request_id in error.message and request_id == error.response.headers["x-vlq-request-id"]
    polled = httpx.get(f"{base}/api/result", params={"request_id": request_id, "wait": 10}).json()
    assert polled["status"] == "done" and polled["result"]["text"].startswith("instant-engine prompt='slow?'")


def test_idempotency_key_replays_the_first_request(base: str, worker_factory: Callable[..., ThreadWorker]) -> None:
    worker_factory()
    client = sdk(base)
    call = {"model": MODEL, "messages": [user("once only")], "extra_headers": {"Idempotency-Key": "order-17"}}
    first = client.chat.completions.with_raw_response.create(**call)
    second = client.chat.completions.with_raw_response.create(**call)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "IDEMPOTENT")
    assert second.parse().id == first.parse().id
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content


class ChunkThenFail(InstantEngine):
    """Streams one piece of text, then fails with ``code``."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__()
        self.code = code

    async def stream(self, request: EngineRequest) -> AsyncIterator[Any]:
        async for chunk in super().stream(request):
            yield type(chunk)(text=chunk.text, final=None)
            await asyncio.sleep(0.2)  # the worker flushes deltas every 50 ms: this one reaches the stream
            raise EngineError(self.code, "the engine failed on purpose")


@pytest.mark.parametrize(("code", "status", "error_class"), [
    (ErrorCode.ENGINE_OOM, 503, openai.InternalServerError),
    (ErrorCode.PROMPT_TOO_LONG, 400, openai.BadRequestError),
])
def test_job_failures_map_to_statuses_and_to_stream_errors(
        base: str, worker_factory: Callable[..., ThreadWorker], code: ErrorCode, status: int,
        error_class: type[openai.APIStatusError]) -> None:
    worker_factory(ChunkThenFail(code))
    client = sdk(base)
    with pytest.raises(error_class) as caught:
        client.chat.completions.create(model=MODEL, messages=[user("fail?")])
    assert (caught.value.status_code, caught.value.code) == (status, code.value)
    assert "Traceback" not in caught.value.response.text
    if status == 503:
        assert caught.value.response.headers["retry-after"] == "5"
    received: list[str] = []
    with pytest.raises(openai.APIError) as streamed:  # failures are not cached: this runs the job again
        for chunk in client.chat.completions.create(model=MODEL, messages=[user("fail?")], stream=True):
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert streamed.value.code == code.value
    # Text came first (the engine's first piece), then the error.
    assert "".join(received) and "instant-engine prompt='fail?'".startswith("".join(received))


def test_stream_after_a_retry_repeats_nothing_and_stops_on_a_different_text() -> None:
    reply = Reply("rid", MODEL, 1)
    done = {"status": "done", "result": {"text": "abcdef", "finish_reason": "stop",
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 2}}}

    def run(items: list[Item]) -> list[Any]:
        async def collect() -> list[bytes]:
            async def source() -> AsyncIterator[Item]:
                for item in items:
                    yield item
            return [frame async for frame in _chunks(source(), reply, None)]
        frames = asyncio.run(collect())
        return [frame.decode() if frame.startswith(b":") else json.loads(frame[6:]) if frame != b"data: [DONE]\n\n"
                else "[DONE]" for frame in frames]

    def delta(text: str) -> Item:
        return Item(None, "delta", {"text": text})

    retried = run([Item(1, "queued", {}), Item(2, "running", {}), delta("abc"), KEEPALIVE, Item(4, "running", {}),
                   delta("ab"), delta("cde"), Item(7, "done", done)])
    contents = [f["choices"][0]["delta"].get("content") for f in retried if isinstance(f, dict) and f["choices"]]
    assert contents == ["", "abc", "de", "f", None]
    assert retried[-1] == "[DONE]" and ": keepalive\n\n" in retried
    diverged = run([Item(2, "running", {}), delta("abc"), Item(4, "running", {}), delta("abX")])
    assert diverged[-1]["error"]["code"] == "stream_restarted"
    assert diverged[-1]["error"]["vlq_request_id"] == "rid"
    transcript = _Transcript()
    assert (transcript.add("ab"), transcript.finish("abc"), transcript.sent) == ("ab", "c", "abc")
    assert _Transcript(sent="ab").finish("xy") is None
