"""Turning an HTTP request (multipart or JSON) into a validated ``Submission``.

Only shape and range are checked here; image bytes get their cheap checks in ``gateway.images``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from gateway.config import GatewaySettings
from gateway.errors import BadRequestError, PayloadTooLargeError, UnprocessableError, UnsupportedMediaError
from worker.contract import CacheMode, SamplingParams

_DATA_URL = re.compile(r"^data:(image/[a-z0-9.+-]+);base64,(.*)$", re.DOTALL)
M = TypeVar("M", bound=BaseModel)
_FIELDS = frozenset({"prompt", "temperature", "top_p", "max_tokens", "seed", "cache", "deadline_s"})
# Validation error types that mean "no prompt"; any other prompt error (NUL, not a string) is invalid_parameter.
_NO_PROMPT = frozenset({"missing", "string_too_short", "prompt_empty"})


class InferParams(BaseModel):
    """The non-image fields of ``POST /api/infer``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    cache: CacheMode = CacheMode.EXACT
    deadline_s: float | None = Field(default=None, gt=0, le=86_400)

    @field_validator("prompt")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("prompt_empty", "the prompt is empty")
        if "\x00" in value:
            raise ValueError("the prompt contains a NUL character")
        return value


class JsonInferBody(InferParams):
    """``POST /api/infer`` as JSON: images are base64 data URLs."""

    images: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Submission:
    """A request that passed shape checks: parameters, sampling and the raw image bytes."""

    params: InferParams
    sampling: SamplingParams
    images: list[bytes]
    # How the client named the images ("image" in multipart, "images" in JSON), for error params.
    image_field: str = "image"


class _StrictMultiPartParser(MultiPartParser):
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
        field = "image"
    elif content_type == "application/json":
        params, images = await _from_json(request, settings)
        field = "images"
    else:
        raise UnsupportedMediaError("unsupported_content_type",
                                    "send multipart/form-data or application/json", None)
    return _finish(params, images, settings, field)


def _finish(params: InferParams, images: list[bytes], settings: GatewaySettings, field: str) -> Submission:
    if not images:
        raise BadRequestError("missing_image", "at least one image is required", field)
    if len(images) > settings.max_images:
        raise BadRequestError("too_many_images", f"at most {settings.max_images} images per request", field)
    if len(params.prompt) > settings.max_prompt_chars:
        raise UnprocessableError("prompt_too_long",
                                 f"the prompt is longer than {settings.max_prompt_chars} characters", "prompt")
    max_tokens = params.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise UnprocessableError("invalid_parameter", f"max_tokens is at most {settings.max_tokens_limit}",
                                 "max_tokens")
    sampling = SamplingParams(temperature=params.temperature, top_p=params.top_p, max_tokens=max_tokens,
                              seed=params.seed)
    return Submission(params=params, sampling=sampling, images=images, image_field=field)


async def _from_multipart(request: Request, settings: GatewaySettings) -> tuple[InferParams, list[bytes]]:
    form = await _parse_form(request, settings)
    try:
        fields: dict[str, Any] = {}
        images: list[bytes] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                images.append(await _read_upload(name, value, settings))
            elif name in _FIELDS and name not in fields:
                fields[name] = value
            else:
                raise BadRequestError("unexpected_field", f"unexpected or repeated field {name!r}", name)
        return _params(InferParams, fields), images
    finally:
        await form.close()


async def _parse_form(request: Request, settings: GatewaySettings) -> FormData:
    parser = _StrictMultiPartParser(request.headers, request.stream(), max_files=settings.max_images,
                                    max_fields=len(_FIELDS), max_part_size=settings.max_prompt_chars * 4 + 1024)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise BadRequestError("malformed_multipart", exc.message, None) from exc


async def _read_upload(name: str, upload: UploadFile, settings: GatewaySettings) -> bytes:
    if name != "image":
        raise BadRequestError("unexpected_field", f"files go in the 'image' field, not {name!r}", name)
    data = await upload.read(settings.max_image_bytes + 1)
    return data


async def _from_json(request: Request, settings: GatewaySettings) -> tuple[InferParams, list[bytes]]:
    # ValueError covers bad syntax, bad UTF-8 and over-long integers; RecursionError, deep nesting.
    try:
        raw = json.loads(await request.body())
    except (ValueError, RecursionError) as exc:
        raise BadRequestError("invalid_json", "the body is not valid JSON", None) from exc
    if not isinstance(raw, dict):
        raise BadRequestError("invalid_json", "the body must be a JSON object", None)
    body = _params(JsonInferBody, raw)
    if len(body.images) > settings.max_images:
        raise BadRequestError("too_many_images", f"at most {settings.max_images} images per request", "images")
    images = [_decode_data_url(url, index, settings) for index, url in enumerate(body.images)]
    return InferParams.model_validate(body.model_dump(exclude={"images"})), images


def _decode_data_url(url: str, index: int, settings: GatewaySettings) -> bytes:
    param = f"images[{index}]"
    match = _DATA_URL.match(url)
    if match is None:
        raise UnprocessableError("invalid_image_url", "images must be base64 data URLs (data:image/...;base64,...)",
                                 param)
    if len(match.group(2)) > (settings.max_image_bytes * 4) // 3 + 8:
        raise PayloadTooLargeError("image_too_large", f"the image is larger than {settings.max_image_bytes} bytes",
                                   param)
    try:
        return base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnprocessableError("invalid_base64", "the image is not valid base64", param) from exc


def _params(model: type[M], fields: dict[str, Any]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        code = "prompt_empty" if param == "prompt" and first["type"] in _NO_PROMPT else "invalid_parameter"
        raise UnprocessableError(code, str(first["msg"]), param) from exc
