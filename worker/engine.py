"""The engine interface the worker drives, and its instant test double.

Exceptions::

    WorkerError
    └── EngineError            (carries an ErrorCode: prompt_too_long, engine_oom, engine_error, ...)

The real engine is ``worker.vllm_engine.VllmEngine``; it lives in its own module so that importing this one
never loads vllm or torch.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Protocol

from worker.contract import ErrorCode, SamplingParams


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class EngineError(WorkerError):
    """An engine call failed for a reason the client is told as ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class EngineRequest:
    """One generation: a prompt about zero or more encoded images (JPEG/PNG/WebP bytes)."""

    request_id: str
    prompt: str
    images: list[bytes]
    sampling: SamplingParams


@dataclass(frozen=True)
class EngineOutput:
    """What one generation produced."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


class Engine(Protocol):
    """What the worker needs of an engine: concurrent generate calls that it batches, and abort."""

    @property
    def errored(self) -> bool:
        """True once the engine died for good: the worker hands its jobs back and exits."""
        ...

    async def generate(self, request: EngineRequest) -> EngineOutput: ...

    async def abort(self, request_id: str) -> None: ...

    def shutdown(self) -> None: ...


class InstantEngine:
    """Test double: answers at once without a model, so queue overhead can be measured and tested alone.

    The answer is derived from the request so that a result delivered to the wrong request is caught.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self.errored = False

    async def generate(self, request: EngineRequest) -> EngineOutput:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        digests = ",".join(hashlib.sha256(image).hexdigest()[:12] for image in request.images)
        text = f"instant-engine prompt={request.prompt[:32]!r} images={digests}"
        return EngineOutput(text=text, prompt_tokens=len(request.prompt), completion_tokens=1,
                            finish_reason="stop")

    async def abort(self, request_id: str) -> None:
        return None

    def shutdown(self) -> None:
        return None
