"""The job contract shared by the gateway and the worker.

Import-light on purpose (pydantic only): the gateway imports it, and the gateway must never load vllm or
torch. Everything that crosses Redis between the two services is one of these models, as JSON.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class JobState(StrEnum):
    """Where a request stands. ``queued`` and ``running`` are pending; the rest are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class CacheMode(StrEnum):
    """How a request may be answered from cache. ``near`` is opt-in pHash matching."""

    EXACT = "exact"
    NEAR = "near"
    OFF = "off"


class ErrorCode(StrEnum):
    """Why a job failed; a client can act on each of these differently."""

    WORKER_LOST = "worker_lost"
    TIMEOUT = "timeout"
    PROMPT_TOO_LONG = "prompt_too_long"
    ENGINE_OOM = "engine_oom"
    ENGINE_ERROR = "engine_error"
    IMAGE_EXPIRED = "image_expired"
    IMAGE_UNREADABLE = "image_unreadable"
    MODEL_MISMATCH = "model_mismatch"
    BAD_JOB = "bad_job"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELED = "canceled"


class SamplingParams(BaseModel):
    """Sampling parameters; part of the cache key, so defaults are filled in before hashing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1, le=32768)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class ImageRef(BaseModel):
    """An image stored in Redis under its content digest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    media_type: str
    size: int = Field(ge=1)
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class InferJob(BaseModel):
    """The JSON payload of one inference job on the RQ queue."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str
    images: list[ImageRef]
    sampling: SamplingParams
    cache_key: str
    cache_mode: CacheMode
    near_bucket: str | None = None
    tenant: str
    enqueued_at: float
    deadline_at: float | None = None
    # Lifetimes chosen by the gateway's settings, carried so that both services agree on them.
    result_ttl_s: int = Field(ge=1)
    cache_ttl_s: int = Field(ge=1)


class Usage(BaseModel):
    """Token accounting of one engine call."""

    prompt_tokens: int
    completion_tokens: int


class InferOutput(BaseModel):
    """What the model answered."""

    text: str
    finish_reason: str | None
    usage: Usage


class JobError(BaseModel):
    """Why a job failed, in words a client can act on."""

    code: ErrorCode
    message: str


class Timings(BaseModel):
    """Where the time of a job went, in seconds."""

    queue_wait_s: float | None = None
    engine_s: float | None = None
    total_s: float | None = None


class JobResult(BaseModel):
    """The result document a worker (or the janitor) writes when a job ends."""

    state: JobState
    result: InferOutput | None = None
    error: JobError | None = None
    timings: Timings = Field(default_factory=Timings)
    model: str | None = None
    finished_at: float
    # pHashes of the request's images, kept beside a cached answer for near-duplicate lookups.
    phashes: list[str] | None = None
