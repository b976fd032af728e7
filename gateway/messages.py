"""The request body's conversation: OpenAI-shaped input models and the rules a conversation must keep.

``messages`` is a list of turns (roles ``system``, ``user``, ``assistant``) whose ``content`` is a string or
a list of parts: ``{"type": "text", "text": ...}`` and ``{"type": "image_url", "image_url": {"url": ...}}``
with a ``data:image/...;base64,...`` URL or a ``vlq://media/<id>`` reference. The gateway never fetches
a URL: any other scheme is refused. The OpenAI facade reads the same models.

``to_conversation`` turns the input into the contract's ``Message`` list (image parts become indexes into
the request's image list) after checking the rules; every refusal names its parameter, e.g.
``messages[2].content[0].image_url.url``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.errors import BadRequestError, UnprocessableError
from worker.contract import ImagePart, Message, Role, TextPart, VideoPart

MEDIA_SCHEME = "vlq://media/"


def check_text(value: str) -> str:
    """Refuse what no model should be sent: NUL characters and lone surrogates (not valid UTF-8)."""
    if "\x00" in value:
        raise ValueError("the text contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("the text is not valid UTF-8") from exc
    return value


class TextPartIn(BaseModel):
    """Text of a turn."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str

    _check = field_validator("text")(check_text)


class ImageUrlIn(BaseModel):
    """Where an image is: a base64 data URL, or ``vlq://media/<id>`` from ``POST /api/media``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=64 * 1024 * 1024)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePartIn(BaseModel):
    """An image of a turn."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["image_url"]
    image_url: ImageUrlIn


class VideoUrlIn(BaseModel):
    """Where a video is: ``vlq://media/<id>`` from ``POST /api/media`` (videos are never inline)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=1024)


class VideoPartIn(BaseModel):
    """A video of a turn."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["video_url"]
    video_url: VideoUrlIn


PartIn = Annotated[TextPartIn | ImagePartIn | VideoPartIn, Field(discriminator="type")]


class MessageIn(BaseModel):
    """One turn of the conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str | list[PartIn]
    name: str | None = Field(default=None, max_length=64)

    _check = field_validator("content")(lambda value: check_text(value) if isinstance(value, str) else value)


# Decodes a ``data:`` URL given its param name (``gateway.intake`` provides it).
DataUrlDecoder = Callable[[str, str], bytes]


@dataclass(frozen=True)
class ImageInput:
    """One image of the request, in order of appearance: inline bytes or a media id."""

    param: str
    data: bytes | None = None
    media_id: str | None = None
    # BLAKE3 of ``data`` when the multipart reader took it (gateway/forms.py); None: taken at submit.
    digest: str | None = None


@dataclass(frozen=True)
class VideoSource:
    """One video of the request, in order of appearance: an uploaded media id."""

    param: str
    media_id: str


@dataclass(frozen=True)
class Conversation:
    """A checked conversation: the contract's messages, and the images and videos its parts index."""

    messages: list[Message]
    images: list[ImageInput]
    videos: list[VideoSource]


@dataclass(frozen=True)
class Limits:
    """What one conversation may hold."""

    max_messages: int
    max_text_chars: int
    max_images: int
    max_videos: int = 1


def to_conversation(messages: list[MessageIn], limits: Limits, decode: DataUrlDecoder) -> Conversation:
    """Check the rules and convert: the contract messages, the images and the videos in order."""
    if not messages:
        raise BadRequestError("missing_messages", "messages must hold at least one turn", "messages")
    if len(messages) > limits.max_messages:
        raise UnprocessableError("too_many_messages", f"at most {limits.max_messages} messages per request",
                                 "messages")
    _check_roles(messages)
    images: list[ImageInput] = []
    videos: list[VideoSource] = []
    converted = [_convert(message, index, images, videos, decode) for index, message in enumerate(messages)]
    if len(images) > limits.max_images:
        raise BadRequestError("too_many_images", f"at most {limits.max_images} images per request", "messages")
    if len(videos) > limits.max_videos:
        raise BadRequestError("too_many_videos", f"at most {limits.max_videos} video per request", "messages")
    chars = sum(len(part.text) for message in converted for part in message.content if isinstance(part, TextPart))
    if chars > limits.max_text_chars:
        raise UnprocessableError("prompt_too_long",
                                 f"the conversation's text is longer than {limits.max_text_chars} characters",
                                 "messages")
    if chars == 0 and not images and not videos:
        raise UnprocessableError("prompt_empty", "the conversation holds no text and no image", "messages")
    return Conversation(messages=converted, images=images, videos=videos)


def _check_roles(messages: list[MessageIn]) -> None:
    for index, message in enumerate(messages):
        if message.role == "system" and index != 0:
            raise UnprocessableError("invalid_conversation",
                                     "a system message may only come first, and only once", f"messages[{index}]")
    turns = messages[1:] if messages[0].role == "system" else messages
    if not turns:
        raise UnprocessableError("invalid_conversation", "the conversation has no user turn", "messages")
    if turns[0].role != "user":
        start = len(messages) - len(turns)
        raise UnprocessableError("invalid_conversation", "the first turn after the system message is the user's",
                                 f"messages[{start}]")
    if turns[-1].role != "user":
        raise UnprocessableError("invalid_conversation", "the last turn is the user's (the model answers it)",
                                 f"messages[{len(messages) - 1}]")


def _convert(message: MessageIn, index: int, images: list[ImageInput], videos: list[VideoSource],
             decode: DataUrlDecoder) -> Message:
    role = Role(message.role)
    if isinstance(message.content, str):
        return Message(role=role, content=[TextPart(text=message.content)])
    if not message.content:
        raise UnprocessableError("invalid_conversation", "a turn's content is empty", f"messages[{index}].content")
    parts: list[TextPart | ImagePart | VideoPart] = []
    for position, part in enumerate(message.content):
        param = f"messages[{index}].content[{position}]"
        if isinstance(part, TextPartIn):
            parts.append(TextPart(text=part.text))
            continue
        if role is not Role.USER:
            raise UnprocessableError("image_not_allowed", "images and videos may only be in user turns", param)
        if isinstance(part, VideoPartIn):
            videos.append(_video(part.video_url.url, f"{param}.video_url.url"))
            parts.append(VideoPart(video=len(videos) - 1))
            continue
        images.append(_image(part.image_url.url, f"{param}.image_url.url", decode))
        parts.append(ImagePart(image=len(images) - 1))
    return Message(role=role, content=parts)


def _video(url: str, param: str) -> VideoSource:
    if not url.startswith(MEDIA_SCHEME):
        raise UnprocessableError("unsupported_video_url", "videos are uploaded first (POST /api/media) and named "
                                 "vlq://media/<id>; the gateway fetches nothing", param)
    return VideoSource(param=param, media_id=url.removeprefix(MEDIA_SCHEME))


def _image(url: str, param: str, decode: DataUrlDecoder) -> ImageInput:
    if url.startswith(MEDIA_SCHEME):
        return ImageInput(param=param, media_id=url.removeprefix(MEDIA_SCHEME))
    if url.startswith("data:"):
        return ImageInput(param=param, data=decode(url, param))
    raise UnprocessableError("unsupported_image_url",
                             "image URLs must be data: URLs or vlq://media/<id>; the gateway fetches nothing", param)
