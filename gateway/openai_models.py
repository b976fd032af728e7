"""The OpenAI facade's shapes: a chat completions body in, ``chat.completion`` and its chunks out.

A body becomes the same ``Submission`` as ``POST /api/infer`` (``gateway.intake.finish_submission``): the
conversation through ``gateway.messages``, the sampling fields through ``InferParams`` (so every limit is
written once, there). Parameters OpenAI defines that vlq cannot honour are refused by name unless they hold
their neutral value (``n: 1``, ``tools: []``, ``presence_penalty: 0``...); any other field is unknown and
refused by name too. Nothing is silently ignored except ``user``/``safety_identifier``, which only go to the
log line, as OpenAI uses them only for abuse monitoring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import models
from gateway.config import GatewaySettings
from gateway.errors import ApiError, BadRequestError
from gateway.intake import InferParams, ResponseFormatIn, Submission, conversation_submission, param_name
from gateway.messages import MessageIn
from worker.contract import InferOutput, Priority

M = TypeVar("M", bound=BaseModel)


def _absent(value: Any) -> bool:
    return value is None or value in ([], {})


def _zero(value: Any) -> bool:
    return value is None or value == 0


# OpenAI parameters vlq cannot honour, each with the test for "asks for nothing": any other value is a 400
# naming it. Known by name so the message says "not supported" rather than "unknown".
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "n": lambda value: value is None or value == 1,
    "tools": _absent, "tool_choice": lambda value: value in (None, "none"), "parallel_tool_calls": _absent,
    "functions": _absent, "function_call": lambda value: value in (None, "none"),
    "logprobs": lambda value: value in (None, False), "top_logprobs": _zero,
    "audio": _absent, "modalities": lambda value: value in (None, ["text"]), "prediction": _absent,
    "logit_bias": _absent, "presence_penalty": _zero, "frequency_penalty": _zero,
    "store": lambda value: value in (None, False), "metadata": _absent,
    "reasoning_effort": _absent, "verbosity": _absent, "web_search_options": _absent,
    "prompt_cache_key": _absent, "prompt_cache_retention": _absent, "moderation": _absent,
}


class StreamOptionsIn(BaseModel):
    """OpenAI's ``stream_options``."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ChatCompletionBody(BaseModel):
    """``POST /v1/chat/completions``: the fields vlq honours. Ranges are checked by ``InferParams``."""

    model_config = ConfigDict(extra="forbid")

    messages: list[MessageIn] = Field(max_length=100_000)
    model: str = Field(max_length=1024)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    # The job contract carries no stop sequences: only an empty value is accepted (see ``read_body``).
    stop: str | list[str] | None = None
    response_format: ResponseFormatIn | None = None
    stream: bool | None = False
    stream_options: StreamOptionsIn | None = None
    user: str | None = Field(default=None, max_length=256)
    # "flex" (OpenAI's slower, cheaper tier) runs the request at batch priority.
    service_tier: Literal["auto", "default", "flex"] | None = None
    safety_identifier: str | None = Field(default=None, max_length=256)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"


def read_body(raw: dict[str, Any], settings: GatewaySettings) -> ChatCompletionBody:
    """Refuse what cannot be honoured, by name, then validate what can; 404 for another model."""
    for name, value in raw.items():
        if name in _UNSUPPORTED:
            if not _UNSUPPORTED[name](value):
                raise BadRequestError("unsupported_parameter", f"{name} is not supported by this server", name)
        elif name not in ChatCompletionBody.model_fields:
            raise BadRequestError("unknown_parameter", f"unrecognized request argument: {name}", name)
    fields = {name: value for name, value in raw.items() if name not in _UNSUPPORTED}
    if "messages" in fields:
        fields["messages"] = _developer_as_system(fields["messages"])
    body = validated(ChatCompletionBody, fields)
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise BadRequestError("invalid_parameter", "send max_tokens or max_completion_tokens, not both",
                              "max_completion_tokens")
    if body.stop not in (None, "", []):
        raise BadRequestError("unsupported_parameter", "stop sequences are not supported by this server", "stop")
    if body.stream_options is not None and not body.stream:
        raise BadRequestError("invalid_parameter", "stream_options is only allowed with stream: true",
                              "stream_options")
    models.resolve(settings, body.model)
    return body


def _developer_as_system(messages: Any) -> Any:
    """OpenAI's newer name for the system turn is ``developer`` (it treats them alike for other models)."""
    if not isinstance(messages, list):
        return messages
    return [{**turn, "role": "system"} if isinstance(turn, dict) and turn.get("role") == "developer" else turn
            for turn in messages]


def to_submission(body: ChatCompletionBody, settings: GatewaySettings) -> Submission:
    """The submission ``POST /api/infer`` would make of the same conversation and parameters."""
    tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    given = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "max_tokens": tokens}
    fields: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    fields["model"] = body.model
    if body.response_format is not None:
        fields["response_format"] = body.response_format
    if body.service_tier == "flex":
        fields["priority"] = Priority.BATCH
    try:
        return conversation_submission(validated(InferParams, fields), body.messages, settings)
    except ApiError as exc:
        converted = _renamed(as_bad_request(exc), body.tokens_param)
        if converted is exc:
            raise
        raise converted from exc


def _renamed(exc: ApiError, tokens_param: str) -> ApiError:
    """Our limit on max_tokens, reported under the name the client used."""
    if exc.param == "max_tokens":
        exc.param = tokens_param
        exc.message = exc.message.replace("max_tokens", tokens_param)
    return exc


def validated(model: type[M], fields: dict[str, Any]) -> M:
    """``model`` of ``fields``, or a 400 naming the first bad field (OpenAI clients expect 400, not 422)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = param_name(first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise BadRequestError("unknown_parameter", f"unrecognized request argument: {param}", param) from exc
        raise BadRequestError("invalid_parameter", str(first["msg"]), param) from exc


def as_bad_request(exc: ApiError) -> ApiError:
    """Intake's 413/415/422 refusals as the 400 an OpenAI client expects (same code, message and param)."""
    if exc.status in (413, 415, 422):
        return BadRequestError(exc.code, exc.message, exc.param, exc.headers)
    return exc


@dataclass(frozen=True)
class Reply:
    """What every object of one answer shares."""

    request_id: str
    model: str
    created: int
    include_usage: bool = False

    @property
    def id(self) -> str:
        return f"chatcmpl-{self.request_id}"

    def completion(self, output: InferOutput) -> dict[str, Any]:
        """The ``chat.completion`` object of a finished answer."""
        message = {"role": "assistant", "content": output.text, "refusal": None}
        choice = {"index": 0, "message": message, "finish_reason": finish_reason(output.finish_reason),
                  "logprobs": None}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [choice], "usage": usage(output.usage.prompt_tokens, output.usage.completion_tokens),
                "system_fingerprint": None}

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        """One ``chat.completion.chunk`` with one choice."""
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return self._chunk([choice])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """The chunk ``include_usage`` asks for: no choices, the whole answer's usage."""
        return {**self._chunk([]), "usage": usage(prompt_tokens, completion_tokens)}

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, "system_fingerprint": None}
        # OpenAI: with include_usage, every other chunk carries "usage": null.
        return {**body, "usage": None} if self.include_usage else body


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish_reason(engine_reason: str | None) -> str:
    """vLLM says ``stop`` or ``length`` (or nothing for an ended stream): OpenAI's ``stop``/``length``."""
    return "length" if engine_reason == "length" else "stop"
