"""The engine interface the worker drives, and its instant test double.

Exceptions::

    WorkerError
    └── EngineError            (carries an ErrorCode: prompt_too_long, engine_oom, engine_error, ...)

An engine *streams*: ``stream(request)`` yields ``Chunk``s of new text, the last one carrying the final
``EngineOutput``; ``generate(engine, request)`` is built on it for callers that want the whole answer.
The real engine is ``worker.vllm_engine.VllmEngine``; it lives in its own module so that importing this one
never loads vllm or torch.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from worker.contract import ErrorCode, ImagePart, Message, ResponseFormat, Role, SamplingParams, TextPart


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class EngineError(WorkerError):
    """An engine call failed for a reason the client is told as ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class VideoInput:
    """One video's sampled frames (JPEG bytes, in time order) and their times in seconds."""

    frames: list[bytes]
    times: list[float]
    fps: float

    @property
    def span(self) -> str:
        return f"{self.times[0]:.1f}-{self.times[-1]:.1f}s"


@dataclass(frozen=True)
class EngineRequest:
    """One generation: a conversation whose image parts index ``images`` (JPEG/PNG/WebP bytes) and whose
    video parts index ``videos``."""

    request_id: str
    messages: list[Message]
    images: list[bytes]
    sampling: SamplingParams
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    # False asks the engine for the final answer only (no per-token outputs).
    stream: bool = True
    # Scheduling priority inside the engine (vLLM: lower first); 0 for interactive work.
    priority: int = 0
    # A LoRA adapter the worker serves (``WorkerSettings.lora_adapters``), or None for the base model.
    adapter: str | None = None
    videos: list[VideoInput] = field(default_factory=list)

    @classmethod
    def single(cls, request_id: str, prompt: str, images: list[bytes], sampling: SamplingParams,
               **extra: object) -> EngineRequest:
        """One user turn: the images, then the prompt."""
        parts: list[TextPart | ImagePart] = [ImagePart(image=index) for index in range(len(images))]
        parts.append(TextPart(text=prompt))
        return cls(request_id=request_id, messages=[Message(role=Role.USER, content=parts)], images=images,
                   sampling=sampling, **extra)  # type: ignore[arg-type]

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role is Role.USER:
                return " ".join(part.text for part in message.content if isinstance(part, TextPart))
        return ""


@dataclass(frozen=True)
class EngineOutput:
    """What one generation produced."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


@dataclass(frozen=True)
class Chunk:
    """New text of a streaming generation; the last chunk also carries the final output."""

    text: str
    final: EngineOutput | None = None


class Engine(Protocol):
    """What the worker needs of an engine: concurrent streams that it batches, and abort."""

    @property
    def errored(self) -> bool:
        """True once the engine died for good: the worker hands its jobs back and exits."""
        ...

    def stream(self, request: EngineRequest) -> AsyncIterator[Chunk]: ...

    async def abort(self, request_id: str) -> None: ...

    def shutdown(self) -> None: ...


async def generate(engine: Engine, request: EngineRequest) -> EngineOutput:
    """The whole answer of one request."""
    async for chunk in engine.stream(request):
        if chunk.final is not None:
            return chunk.final
    raise EngineError(ErrorCode.ENGINE_ERROR, "The engine returned no output.")


class InstantEngine:
    """Test double: answers at once without a model, so queue overhead can be measured and tested alone.

    The answer is derived from the conversation so that a result delivered to the wrong request is
    caught; it streams in a few chunks spread over ``delay_s``.
    """

    CHUNKS = 4

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self.errored = False

    async def stream(self, request: EngineRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        text = self.answer(request)
        step = -(-len(text) // self.CHUNKS)
        pieces = [text[start:start + step] for start in range(0, len(text), step)]
        for index, piece in enumerate(pieces):
            if self.delay_s:
                await asyncio.sleep(self.delay_s / len(pieces))
            final = None
            if index == len(pieces) - 1:
                final = EngineOutput(text=text, prompt_tokens=sum(len(m.content) for m in request.messages),
                                     completion_tokens=len(pieces), finish_reason="stop")
            yield Chunk(text=piece, final=final)

    @staticmethod
    def answer(request: EngineRequest) -> str:
        """What the instant engine answers: the last user text, the images' digests and the history size."""
        digests = ",".join(hashlib.sha256(image).hexdigest()[:12] for image in request.images)
        if request.response_format.name == "vlq_gui":
            return ('{"elements":[{"type":"button","label":"OK","purpose":"instant-engine",'
                    '"bbox":[100,200,500,400]}]}')
        if request.response_format.is_json:
            return '{"instant": true}'
        adapter = f" adapter={request.adapter}" if request.adapter else ""
        videos = "".join(f" video={len(video.frames)}f@{video.span}" for video in request.videos)
        return (f"instant-engine prompt={request.last_user_text[:32]!r} images={digests} "
                f"turns={len(request.messages)}{adapter}{videos}")

    async def abort(self, request_id: str) -> None:
        return None

    def shutdown(self) -> None:
        return None
