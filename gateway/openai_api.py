"""The OpenAI-compatible API: ``GET /v1/models`` and ``POST /v1/chat/completions`` over the one lifecycle.

A thin reader: a chat completions body becomes the same ``Submission`` as ``POST /api/infer``
(``gateway.openai_models``) and goes through ``gateway.submit`` (cache tiers, coalescing, tenants, quotas,
``Idempotency-Key``); the answer is read back with ``gateway.results.wait_for_end`` or, streamed, from the
job's event stream (``gateway.streams.open_events``). Every request id works with ``/api/result`` and
``/api/stream`` too (the ``X-Vlq-Request-Id`` header names it; the completion id is ``chatcmpl-<id>``).

Refusals use the gateway's one error envelope, which is OpenAI's error object plus ``request_id``, except
that intake's 413/415/422 become 400 here: OpenAI's SDKs expect 400 for a bad parameter. Before the job
runs: 401 (API key), 400 (bad or unsupported parameter, named in ``param``), 404 ``model_not_found``, 429
with ``Retry-After`` (rate limit, in-flight quota), 503 with ``Retry-After`` (Redis unreachable, backlog
full, no worker alive with ``require_live_worker``).

A job that ended without an answer is told with these statuses (``x-should-retry`` is the header OpenAI's
SDKs obey over their own rule, which retries 408, 409, 429 and 5xx)::

    job error code                       status  type                        x-should-retry
    prompt_too_long                      400     invalid_request_error       -
    image_expired, image_unreadable      400     invalid_request_error       -
    timeout                              504     timeout_error               - (the SDK retries: a new job)
    deadline_exceeded (state expired)    504     timeout_error               false (the deadline passed)
    engine_oom, engine_error,
    worker_lost                          503     service_unavailable_error   - (Retry-After: 5)
    model_mismatch, contract_version     503     service_unavailable_error   - (a rollout in progress)
    canceled (DELETE /api/result)        409     invalid_request_error       false (retrying undoes it)
    result_expired (a batch line unread
      past result_ttl_s)                 410     invalid_request_error       false
    bad_job, any other code              500     internal_error              false (never a traceback)
    (still pending after openai_wait_s)  504     timeout_error, wait_timeout false

The worker and the janitor already retried the job (``VLQ_GATEWAY_JOB_RETRIES``) before it failed. Every
such error carries ``vlq_request_id`` beside OpenAI's fields: past ``openai_wait_s`` the job goes on, and
``GET /api/result?request_id=<vlq_request_id>&wait=S`` fetches its answer.

Streaming sends the same failures as ``data: {"error": {...}}`` (OpenAI's in-stream error) and stops,
without ``[DONE]``. A job a worker retried after it had streamed text starts its text again (a ``running``
event after deltas): what the client already has is never repeated or contradicted. The retry's text is
held back until it passes what was sent, and only what follows is streamed; if it differs from what was
sent (it can, at temperature > 0 without a seed) the stream ends with ``stream_restarted`` and the answer
is at ``/api/result``. The terminal event's text is checked the same way, so the concatenated deltas always
equal the final answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gateway import models
from gateway.backend import Backend
from gateway.config import GatewaySettings
from gateway.deps import BackendDep, TenantDep
from gateway.errors import ApiError, BadRequestError
from gateway.intake import Submission, read_json_object
from gateway.openai_models import Reply, as_bad_request, finish_reason, read_body, to_submission
from gateway.results import wait_for_end
from gateway.streams import KEEPALIVE, Item, open_events
from gateway.submit import Accepted, Answered, Replayed, admit, idempotency_of, submit
from worker.contract import ErrorCode, JobResult, JobState

router = APIRouter()
# OpenAI's model objects carry a creation time; ours is when this gateway process began serving the model.
_SERVING_SINCE = int(time.time())
_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_CHAT_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "The served model (GET /v1/models)."},
        "messages": {"type": "array", "description": (
            "OpenAI's messages: roles system, user, assistant; content text or [{type: text, text}, "
            "{type: image_url, image_url: {url: data:image/...;base64,... or vlq://media/<id>}}].")},
        "temperature": {"type": "number"}, "top_p": {"type": "number"}, "seed": {"type": "integer"},
        "max_tokens": {"type": "integer"}, "max_completion_tokens": {"type": "integer"},
        "response_format": {"type": "object", "description": "{type: text | json_object | json_schema}"},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "stop": {"description": "Only empty: stop sequences are not supported."},
        "user": {"type": "string", "description": "Logged only."}}}}}}}


@dataclass(frozen=True)
class _Status:
    """How a job's failure code is answered."""

    status: int
    type: str
    # The x-should-retry header for OpenAI's SDKs; None leaves their own rule.
    retry: bool | None = None
    retry_after: str | None = None


_BAD = _Status(400, "invalid_request_error")
_UNAVAILABLE = _Status(503, "service_unavailable_error", retry_after="5")
_INTERNAL = _Status(500, "internal_error", retry=False)
_WAIT_TIMEOUT = _Status(504, "timeout_error", retry=False)
_FAILURES: dict[str, _Status] = {
    ErrorCode.PROMPT_TOO_LONG: _BAD, ErrorCode.IMAGE_EXPIRED: _BAD, ErrorCode.IMAGE_UNREADABLE: _BAD,
    ErrorCode.TIMEOUT: _Status(504, "timeout_error"), ErrorCode.DEADLINE_EXCEEDED: _WAIT_TIMEOUT,
    ErrorCode.ENGINE_OOM: _UNAVAILABLE, ErrorCode.ENGINE_ERROR: _UNAVAILABLE, ErrorCode.WORKER_LOST: _UNAVAILABLE,
    ErrorCode.MODEL_MISMATCH: _UNAVAILABLE, ErrorCode.CONTRACT_VERSION: _UNAVAILABLE,
    ErrorCode.CANCELED: _Status(409, "invalid_request_error", retry=False),
    ErrorCode.RESULT_EXPIRED: _Status(410, "invalid_request_error", retry=False),
}


def _model_card(settings: GatewaySettings, name: str) -> dict[str, Any]:
    card = {"id": name, "object": "model", "created": _SERVING_SINCE, "owned_by": "vlq"}
    target = models.resolve(settings, name)
    # A LoRA adapter names the model it adapts, as vLLM's own server does.
    return {**card, "parent": target.model} if target.adapter else card


@router.get("/v1/models")
async def list_models(backend: BackendDep, tenant: TenantDep) -> dict[str, Any]:
    """The served models (and their LoRA adapters, ``<model>:<adapter>``), as OpenAI's list of models."""
    return {"object": "list", "data": [_model_card(backend.settings, name) for name in models.names(backend.settings)]}


@router.get("/v1/models/{model_id:path}", responses={404: {"description": "Not a served model"}})
async def get_model(backend: BackendDep, tenant: TenantDep, model_id: str) -> dict[str, Any]:
    """One model object; 404 ``model_not_found`` for an id no pool serves."""
    models.resolve(backend.settings, model_id)
    return _model_card(backend.settings, model_id)


@router.post("/v1/chat/completions", openapi_extra=_CHAT_BODY,
             responses={200: {"description": "A chat.completion, or with stream a text/event-stream of "
                                             "chat.completion.chunk objects ending in data: [DONE]"},
                        400: {"description": "Bad or unsupported parameter"}, 404: {"description": "Unknown model"},
                        429: {"description": "Rate limit or quota"}, 503: {"description": "Unavailable"},
                        504: {"description": "Not answered within openai_wait_s; see vlq_request_id"}})
async def chat_completions(request: Request, backend: BackendDep, tenant: TenantDep,
                           idempotency_key: Annotated[str | None, Header()] = None) -> Response:
    """OpenAI's chat completions over the queue: cached, coalesced and tenant-bound like ``/api/infer``.

    Without ``stream`` the call waits for the answer (at most ``VLQ_GATEWAY_OPENAI_WAIT_S``; past that a 504
    whose ``vlq_request_id`` fetches it from ``/api/result``); a cache hit answers at once. With ``stream``,
    ``chat.completion.chunk`` events follow the job, then ``data: [DONE]``. ``X-Cache`` says MISS,
    COALESCED, HIT-L1, HIT-L2 or IDEMPOTENT (a retried ``Idempotency-Key``); ``X-Vlq-Request-Id`` names
    the request for ``/api/result`` and ``/api/stream``.
    """
    created = int(time.time())
    idem_key = idempotency_of(idempotency_key, tenant)
    settings = backend.settings
    await admit(backend, tenant)
    body = read_body(await _json_object(request), settings)
    submission = to_submission(body, settings)
    outcome = await _submit(backend, submission, tenant, idem_key)
    request.state.log.update({"request": outcome.request_id, "x_cache": outcome.x_cache, "stream": bool(body.stream),
                              "user": body.user or body.safety_identifier, **submission.log_fields()})
    headers = {"X-Cache": outcome.x_cache, "X-Vlq-Request-Id": outcome.request_id}
    reply = Reply(outcome.request_id, body.model, created, body.include_usage)
    if body.stream:
        items = await open_events(backend, outcome.request_id, tenant, 0)
        return StreamingResponse(_chunks(items, reply, _http_id(request)), media_type="text/event-stream",
                                 headers={**_SSE_HEADERS, **headers})
    if isinstance(outcome, Answered):
        return _answer(request, reply, outcome.result, headers)
    return await _completion(request, backend, tenant, reply, headers)


async def _completion(request: Request, backend: Backend, tenant: str, reply: Reply,
                      headers: dict[str, str]) -> JSONResponse:
    """Wait (bounded) for a queued or coalesced request, then answer it."""
    wait_s = backend.settings.openai_wait_s
    current = await wait_for_end(backend, reply.request_id, tenant, wait_s)
    if not current.is_final or current.result is None:
        message = (f"the answer is not ready after {wait_s:g} s ({current.state.value}); fetch it with "
                   f"GET /api/result?request_id={reply.request_id}&wait=60")
        return _error_response(request, _WAIT_TIMEOUT, "wait_timeout", message, reply.request_id, headers)
    return _answer(request, reply, current.result, headers)


async def _submit(backend: Backend, submission: Submission, tenant: str,
                  idem_key: str | None) -> Answered | Accepted | Replayed:
    """``submit``, with its 413/415/422 refusals (an image, a media id) as 400s."""
    try:
        return await submit(backend, submission, tenant, idem_key)
    except ApiError as exc:
        converted = as_bad_request(exc)
        if converted is exc:
            raise
        raise converted from exc


async def _json_object(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise BadRequestError("unsupported_content_type", "send application/json", None)
    return await read_json_object(request)


def _answer(request: Request, reply: Reply, result: JobResult, headers: dict[str, str]) -> JSONResponse:
    if result.state is JobState.DONE and result.result is not None:
        return JSONResponse(reply.completion(result.result), headers=headers)
    code = result.error.code if result.error is not None else result.state.value
    message = result.error.message if result.error is not None else f"the request ended {result.state.value}"
    return _error_response(request, _failure(code), code, message, reply.request_id, headers)


def _failure(code: str) -> _Status:
    return _FAILURES.get(code, _INTERNAL)


def failure_status(code: str) -> tuple[int, str]:
    """(HTTP status, OpenAI error type) of a job failure code, as the table above maps it."""
    status = _failure(code)
    return status.status, status.type


def failure_error(code: str, message: str) -> dict[str, Any]:
    """OpenAI's error object for a job failure (an unmapped code's message is not shown, as above)."""
    status = _failure(code)
    if status is _INTERNAL:
        message = "the request failed on the server; it has been logged"
    return {"message": message, "type": status.type, "param": None, "code": code}


def _http_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _error_body(status: _Status, code: str, message: str, http_id: str | None, vlq_request_id: str) -> dict[str, Any]:
    """The gateway's error envelope (OpenAI's error object plus ``request_id``) and ``vlq_request_id``."""
    if status is _INTERNAL:
        # A code we do not map (a newer worker's, or bad_job) is logged, not explained.
        message = "the request failed on the server; it has been logged"
    return {"error": {"message": message, "type": status.type, "param": None, "code": code,
                      "request_id": http_id, "vlq_request_id": vlq_request_id}}


def _error_response(request: Request, status: _Status, code: str, message: str, vlq_request_id: str,
                    headers: dict[str, str]) -> JSONResponse:
    extra = dict(headers)
    if status.retry is not None:
        extra["x-should-retry"] = "true" if status.retry else "false"
    if status.retry_after is not None:
        extra["Retry-After"] = status.retry_after
    body = _error_body(status, code, message, _http_id(request), vlq_request_id)
    return JSONResponse(body, status_code=status.status, headers=extra)


@dataclass
class _Transcript:
    """The text a client was sent, so that a retried job's fresh text never repeats or contradicts it."""

    sent: str = ""
    # The text of the current attempt since a restart, while it has not yet passed what was sent.
    redo: str | None = None

    def restart(self) -> None:
        if self.sent:
            self.redo = ""

    def add(self, text: str) -> str | None:
        """What of ``text`` to send now ('' to hold it back); None if it contradicts what was sent."""
        if self.redo is None:
            self.sent += text
            return text
        self.redo += text
        if self.sent.startswith(self.redo):
            return ""
        if not self.redo.startswith(self.sent):
            return None
        new, self.sent, self.redo = self.redo[len(self.sent):], self.redo, None
        return new

    def finish(self, text: str) -> str | None:
        """What of the final ``text`` was not sent yet; None if the final text contradicts what was sent."""
        if not text.startswith(self.sent):
            return None
        rest, self.sent, self.redo = text[len(self.sent):], text, None
        return rest


def _data(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def _chunks(items: AsyncIterator[Item], reply: Reply, http_id: str | None) -> AsyncIterator[bytes]:
    """The job's events as OpenAI's chunks: role first, a chunk per delta, the finish, usage, ``[DONE]``."""
    yield _data(reply.chunk({"role": "assistant", "content": ""}))
    transcript = _Transcript()
    async for item in items:
        # OpenAI's chunks have no place for where a job stands (queued, a long video's windows ending).
        if item is KEEPALIVE or item.kind in ("queued", "progress"):
            yield b": keepalive\n\n"
            continue
        if item.kind == "running":
            transcript.restart()
            continue
        frames = _terminal(item, reply, transcript, http_id) if item.is_terminal else _delta(item, reply, transcript)
        if frames is None:
            yield _data(_error_body(_UNAVAILABLE, "stream_restarted", "the job was retried and its new answer "
                                    "differs from the text already streamed; fetch it from /api/result",
                                    http_id, reply.request_id))
            return
        for frame in frames:
            yield frame
        if item.is_terminal:
            return


def _delta(item: Item, reply: Reply, transcript: _Transcript) -> list[bytes] | None:
    new = transcript.add(str(item.data.get("text", "")))
    if new is None:
        return None
    return [_data(reply.chunk({"content": new}))] if new else []


def _terminal(item: Item, reply: Reply, transcript: _Transcript, http_id: str | None) -> list[bytes] | None:
    result = item.data.get("result")
    if item.kind != JobState.DONE.value or not isinstance(result, dict):
        error = item.data.get("error") or {}
        code = str(error.get("code") or item.kind)
        message = str(error.get("message") or f"the request ended {item.kind}")
        return [_data(_error_body(_failure(code), code, message, http_id, reply.request_id))]
    rest = transcript.finish(str(result.get("text", "")))
    if rest is None:
        return None
    frames = [_data(reply.chunk({"content": rest}))] if rest else []
    frames.append(_data(reply.chunk({}, finish=finish_reason(result.get("finish_reason")))))
    if reply.include_usage:
        counted = result.get("usage") or {}
        frames.append(_data(reply.usage_chunk(int(counted.get("prompt_tokens", 0)),
                                              int(counted.get("completion_tokens", 0)))))
    frames.append(_DONE)
    return frames


