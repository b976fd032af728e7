"""Turning an HTTP request (multipart or JSON) into a validated ``Submission``.

Only shape and range are checked here; image bytes get their cheap checks in ``gateway.images`` and media
ids are resolved in ``gateway.submit``. JSON bodies carry a conversation (``messages``, see
``gateway.messages``) or the older ``prompt`` + ``images``; multipart bodies carry ``image`` files and a
``prompt``. Both become one list of contract messages with the images in their places.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from starlette.formparsers import MultiPartException, MultiPartParser

from gateway.config import GatewaySettings
from gateway.errors import BadRequestError, PayloadTooLargeError, UnprocessableError, UnsupportedMediaError
from gateway.forms import FilePart, FormError, FormLimits, read_form
from gateway.messages import ImageInput, Limits, MessageIn, VideoSource, check_text, to_conversation
from gateway.response_format import SchemaLimits, check_schema
from worker.contract import CacheMode, ImagePart, Message, Priority, ResponseFormat, Role, SamplingParams, TextPart
from worker.presets import Task, preset

_DATA_URL = re.compile(r"^data:(image/[a-z0-9.+-]+);base64,(.*)$", re.DOTALL)
M = TypeVar("M", bound=BaseModel)
_FIELDS = frozenset({"prompt", "temperature", "top_p", "max_tokens", "seed", "cache", "deadline_s", "task",
                     "priority", "webhook_url", "model"})
# Validation error types that mean "no prompt"; any other prompt error (NUL, not a string) is invalid_parameter.
_NO_PROMPT = frozenset({"missing", "string_too_short", "prompt_empty"})
_SCHEMA_PARAM = "response_format.json_schema.schema"


class JsonSchemaIn(BaseModel):
    """OpenAI's ``response_format.json_schema``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(default="answer", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(default=None, max_length=1024)
    json_schema: Any = Field(alias="schema")
    strict: bool | None = None


class ResponseFormatIn(BaseModel):
    """OpenAI's ``response_format``: text (default), any JSON object, or JSON matching a schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> ResponseFormatIn:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self


class VideoParams(BaseModel):
    """``video`` of ``POST /api/infer``: the sampling rate (at most the upload's) and the window length."""

    model_config = ConfigDict(extra="forbid")

    fps: float | None = Field(default=None, gt=0, le=4)
    window_s: float = Field(default=60.0, ge=1, le=600)


class InferParams(BaseModel):
    """The non-image fields of ``POST /api/infer`` (both body shapes)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, min_length=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    cache: CacheMode = CacheMode.EXACT
    deadline_s: float | None = Field(default=None, gt=0, le=86_400)
    task: Task = Task.VQA
    response_format: ResponseFormatIn | None = None
    # How a video_url part is read: frames per second and the window one job answers (gateway/videos.py).
    video: VideoParams | None = None
    # A served model or "<model>:<adapter>" (gateway/models.py); None: the default model.
    model: str | None = Field(default=None, min_length=1, max_length=256)
    # batch: the job waits on the batch queue and yields to interactive work (worker/claims.py).
    priority: Priority = Priority.INTERACTIVE
    # POSTed the final body, signed, when the request ends (gateway/webhooks.py checks it at submit).
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)

    @field_validator("prompt")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise PydanticCustomError("prompt_empty", "the prompt is empty")
        return check_text(value)


class JsonInferBody(InferParams):
    """``POST /api/infer`` as JSON: ``messages``, or ``prompt`` with ``images`` as base64 data URLs."""

    images: list[str] = Field(default_factory=list, max_length=1024)
    messages: list[MessageIn] | None = Field(default=None, max_length=100_000)

    @model_validator(mode="after")
    def _one_shape(self) -> JsonInferBody:
        if self.messages is not None and (self.prompt is not None or self.images):
            raise ValueError("send either messages, or prompt with images, not both")
        return self


@dataclass(frozen=True)
class Submission:
    """A request that passed shape checks: the conversation, its images, how to answer and sample."""

    params: InferParams
    sampling: SamplingParams
    messages: list[Message]
    images: list[ImageInput]
    response_format: ResponseFormat
    videos: list[VideoSource] = field(default_factory=list)

    @property
    def task(self) -> Task:
        return self.params.task

    def log_fields(self) -> dict[str, object]:
        """What the access log says of the request: sizes, never its text or image bytes."""
        chars = sum(len(part.text) for message in self.messages for part in message.content
                    if isinstance(part, TextPart))
        return {"messages": len(self.messages), "image_bytes": [len(image.data or b"") for image in self.images],
                "prompt_chars": chars}


class StrictMultiPartParser(MultiPartParser):
    # Starlette decodes a text field that is not valid UTF-8 as Latin-1, silently; a prompt must be
    # refused instead, so text parts are decoded strictly here.
    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                self.items.append((part.field_name, bytes(part.data).decode("utf-8")))
            except UnicodeDecodeError as exc:
                raise MultiPartException(f"field {part.field_name!r} is not valid UTF-8") from exc
            return
        super().on_part_end()


async def read_submission(request: Request, settings: GatewaySettings) -> Submission:
    """Parse and shape-check the request body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        params, images = await _from_multipart(request, settings)
        return _single_turn(params, images, settings, "image")
    if content_type == "application/json":
        return await _from_json(request, settings)
    raise UnsupportedMediaError("unsupported_content_type", "send multipart/form-data or application/json", None)


def _single_turn(params: InferParams, inputs: list[ImageInput], settings: GatewaySettings, field: str) -> Submission:
    """The older shape: one user turn of images, then the prompt."""
    if params.prompt is None:
        raise UnprocessableError("prompt_empty", "a prompt is required", "prompt")
    if not inputs:
        raise BadRequestError("missing_image", "at least one image is required", field)
    if len(inputs) > settings.max_images:
        raise BadRequestError("too_many_images", f"at most {settings.max_images} images per request", field)
    parts: list[TextPart | ImagePart] = [ImagePart(image=index) for index in range(len(inputs))]
    parts.append(TextPart(text=params.prompt))
    if len(params.prompt) > settings.max_prompt_chars:
        raise UnprocessableError("prompt_too_long",
                                 f"the prompt is longer than {settings.max_prompt_chars} characters", "prompt")
    return finish_submission(params, [Message(role=Role.USER, content=parts)], inputs, settings)


def finish_submission(params: InferParams, messages: list[Message], images: list[ImageInput],
                      settings: GatewaySettings, videos: Sequence[VideoSource] = ()) -> Submission:
    """The submission of a conversation: sampling filled in, the response format and task preset applied."""
    max_tokens = params.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise UnprocessableError("invalid_parameter", f"max_tokens is at most {settings.max_tokens_limit}",
                                 "max_tokens")
    sampling = SamplingParams(temperature=params.temperature, top_p=params.top_p, max_tokens=max_tokens,
                              seed=params.seed)
    response_format = _response_format(params, settings)
    messages = _with_preset_prompt(params.task, messages)
    if params.video is not None and not videos:
        raise UnprocessableError("invalid_parameter", "video parameters without a video_url part", "video")
    return Submission(params=params, sampling=sampling, messages=messages, images=images,
                      response_format=response_format, videos=list(videos))


def _response_format(params: InferParams, settings: GatewaySettings) -> ResponseFormat:
    """The client's response format if it gave one, else the task preset's."""
    given = params.response_format
    if given is None:
        chosen = preset(params.task)
        if chosen.schema is None:
            return ResponseFormat()
        return ResponseFormat(type="json_schema", name=chosen.schema_name, json_schema=chosen.schema)
    if given.json_schema is None:
        return ResponseFormat(type=given.type)
    limits = SchemaLimits(max_bytes=settings.max_schema_bytes, max_depth=settings.max_schema_depth)
    schema = check_schema(given.json_schema.json_schema, _SCHEMA_PARAM, limits)
    return ResponseFormat(type="json_schema", name=given.json_schema.name, json_schema=schema)


def _with_preset_prompt(task: Task, messages: list[Message]) -> list[Message]:
    """The task preset's system prompt goes first unless the client wrote its own."""
    system = preset(task).system_prompt
    if system is None or messages[0].role is Role.SYSTEM:
        return messages
    return [Message(role=Role.SYSTEM, content=[TextPart(text=system)]), *messages]


async def _from_multipart(request: Request, settings: GatewaySettings) -> tuple[InferParams, list[ImageInput]]:
    limits = FormLimits(max_files=settings.max_images, max_fields=len(_FIELDS),
                        max_field_bytes=settings.max_prompt_chars * 4 + 1024, max_file_bytes=settings.max_image_bytes)
    try:
        form = await read_form(request.headers.get("content-type", ""), request.stream(), limits)
    except FormError as exc:
        raise BadRequestError("malformed_multipart", exc.message, None) from exc
    fields: dict[str, Any] = {}
    images: list[ImageInput] = []
    for item in form.items:
        if isinstance(item, FilePart):
            if item.name != "image":
                raise BadRequestError("unexpected_field", f"files go in the 'image' field, not {item.name!r}",
                                      item.name)
            images.append(ImageInput(param=f"image[{len(images)}]", data=item.data, digest=item.digest))
        elif item[0] in _FIELDS and item[0] not in fields:
            fields[item[0]] = item[1]
        else:
            raise BadRequestError("unexpected_field", f"unexpected or repeated field {item[0]!r}", item[0])
    if "prompt" not in fields:
        raise UnprocessableError("prompt_empty", "a prompt is required", "prompt")
    return _params(InferParams, fields), images


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or 400 ``invalid_json``."""
    # ValueError covers bad syntax, bad UTF-8 and over-long integers; RecursionError, deep nesting.
    try:
        raw = json.loads(await request.body())
    except (ValueError, RecursionError) as exc:
        raise BadRequestError("invalid_json", "the body is not valid JSON", None) from exc
    if not isinstance(raw, dict):
        raise BadRequestError("invalid_json", "the body must be a JSON object", None)
    return raw


async def _from_json(request: Request, settings: GatewaySettings) -> Submission:
    body = _params(JsonInferBody, await read_json_object(request))
    params = InferParams.model_validate(body.model_dump(exclude={"images", "messages"}, by_alias=True))
    if body.messages is None:
        if len(body.images) > settings.max_images:
            raise BadRequestError("too_many_images", f"at most {settings.max_images} images per request", "images")
        images = [ImageInput(param=f"images[{index}]",
                             data=decode_data_url(url, f"images[{index}]", settings.max_image_bytes))
                  for index, url in enumerate(body.images)]
        return _single_turn(params, images, settings, "images")
    return conversation_submission(params, body.messages, settings)


def conversation_submission(params: InferParams, messages_in: list[MessageIn],
                            settings: GatewaySettings) -> Submission:
    """The submission of a conversation in OpenAI's shape (``/api/infer`` and the OpenAI facade)."""
    limits = Limits(max_messages=settings.max_messages, max_text_chars=settings.max_prompt_chars,
                    max_images=settings.max_images)
    conversation = to_conversation(
        messages_in, limits, lambda url, param: decode_data_url(url, param, settings.max_image_bytes))
    return finish_submission(params, conversation.messages, conversation.images, settings, conversation.videos)


def decode_data_url(url: str, param: str, max_bytes: int) -> bytes:
    """The bytes of a base64 ``data:image/...`` URL."""
    match = _DATA_URL.match(url)
    if match is None:
        raise UnprocessableError("invalid_image_url", "images must be base64 data URLs (data:image/...;base64,...)",
                                 param)
    if len(match.group(2)) > (max_bytes * 4) // 3 + 8:
        raise PayloadTooLargeError("image_too_large", f"the image is larger than {max_bytes} bytes", param)
    try:
        return base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnprocessableError("invalid_base64", "the image is not valid base64", param) from exc


def _params(model: type[M], fields: dict[str, Any]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = param_name(first["loc"]) or None
        code = "prompt_empty" if param == "prompt" and first["type"] in _NO_PROMPT else "invalid_parameter"
        raise UnprocessableError(code, str(first["msg"]), param) from exc


def param_name(loc: tuple[int | str, ...]) -> str:
    """``("messages", 2, "content", 0, "image_url", "url")`` -> ``messages[2].content[0].image_url.url``.

    Pydantic adds union branch names (``str``, ``list[...]``, discriminator tags) to the location: dropped.
    """
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif (part in ("str", "text", "image_url") and name.endswith("content")) or ("[" in part and "]" in part):
            continue
        else:
            name += f".{part}" if name else part
    return name
