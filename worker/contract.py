"""The job contract shared by the gateway and the worker (version ``CONTRACT_VERSION``).

Import-light on purpose (pydantic only): the gateway imports it, and the gateway must never load vllm or
torch. Everything that crosses Redis between the two services is one of these models, as JSON.

Gateways and workers roll out separately, so every model here is a tolerant reader: a field it does not
know is dropped with a warning (once per field), never a crash. What a field *means* changing is a new
``CONTRACT_VERSION``: a worker refuses a job from a newer contract with ``ErrorCode.CONTRACT_VERSION``
instead of guessing. Version 1 (a ``prompt`` and images, no ``messages``) is still read.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("vlq.contract")

# 3: merge jobs (``InferJob.windows``) and window jobs (``InferJob.window``) of long videos; a v2 worker
# would run a merge job as an inference, so it refuses v3 jobs instead.
CONTRACT_VERSION = 3
_warned: set[tuple[str, str]] = set()


class Tolerant(BaseModel):
    """Base of every contract model: unknown fields are ignored with a warning, once per field."""

    model_config = ConfigDict(extra="allow", frozen=False)

    @model_validator(mode="after")
    def _drop_unknown(self) -> Tolerant:
        extra = self.__pydantic_extra__
        if extra:
            for name in list(extra):
                if (type(self).__name__, name) not in _warned:
                    _warned.add((type(self).__name__, name))
                    log.warning("ignoring unknown field %r of %s (written by a newer version?)",
                                name, type(self).__name__)
            extra.clear()
        return self


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
    CONTRACT_VERSION = "contract_version"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELED = "canceled"
    # The gateway could no longer read a request's result (it outlived result_ttl_s unread).
    RESULT_EXPIRED = "result_expired"


class SamplingParams(Tolerant):
    """Sampling parameters; part of the cache key, so defaults are filled in before hashing."""

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1, le=32768)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class ImageRef(Tolerant):
    """An image stored in Redis under its content digest."""

    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    media_type: str
    size: int = Field(ge=1)
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class Role(StrEnum):
    """Who said a turn of a conversation."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class TextPart(Tolerant):
    """Text of a turn."""

    type: Literal["text"] = "text"
    text: str


class ImagePart(Tolerant):
    """An image of a turn, by its index into ``InferJob.images``."""

    type: Literal["image"] = "image"
    image: int = Field(ge=0)


class VideoPart(Tolerant):
    """A video of a turn (its sampled frames with their times), by its index into ``InferJob.videos``."""

    type: Literal["video"] = "video"
    video: int = Field(ge=0)


Part = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class VideoClip(Tolerant):
    """The frames of one video, or one window of it, that a job answers about: stored JPEGs by digest, in
    time order, each with its time in seconds from the start of the whole video (so the model's
    ``<t seconds>`` are absolute even for a window)."""

    frames: list[str]
    times: list[float]
    # Frames per second the frames were sampled at.
    fps: float = Field(gt=0)

    @model_validator(mode="after")
    def _one_time_per_frame(self) -> VideoClip:
        if len(self.frames) != len(self.times) or not self.frames:
            raise ValueError("a clip has one time per frame and at least one frame")
        return self


class Span(Tolerant):
    """A stretch of a video, in seconds from its start."""

    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)


class WindowRef(Span):
    """One window of a merge job: the job answering it (with the internal request that holds it, so a cancel
    reaches it), or the answer the cache already had."""

    job_id: str | None = None
    request_id: str | None = None
    output: InferOutput | None = None


class Message(Tolerant):
    """One turn of a conversation, with every image in its place."""

    role: Role
    content: list[Part]


class ResponseFormat(Tolerant):
    """What shape the answer must have (OpenAI's ``response_format``), served by structured outputs."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    json_schema: dict[str, Any] | None = None

    @property
    def is_json(self) -> bool:
        return self.type != "text"


class Priority(StrEnum):
    """Which RQ queue a job waits on. Workers fill free slots from ``interactive`` first (``worker.claims``)."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


class InferJob(Tolerant):
    """The JSON payload of one inference job on the RQ queue."""

    v: int = 1
    model: str
    messages: list[Message] = Field(default_factory=list)
    images: list[ImageRef]
    sampling: SamplingParams
    task: str = "vqa"
    response_format: ResponseFormat = Field(default_factory=ResponseFormat)
    cache_key: str
    cache_mode: CacheMode
    near_bucket: str | None = None
    # pHashes of the images, taken once by the gateway and only for ``cache=near``.
    phashes: list[str] | None = None
    tenant: str
    enqueued_at: float
    deadline_at: float | None = None
    # Lifetimes chosen by the gateway's settings, carried so that both services agree on them.
    result_ttl_s: int = Field(ge=1)
    cache_ttl_s: int = Field(ge=1)
    # Version 1 jobs carried one prompt about the images instead of messages.
    prompt: str | None = None
    # Passed to the engine's scheduler (vLLM ``priority``); older jobs are interactive.
    priority: Priority = Priority.INTERACTIVE
    # A LoRA adapter of ``model`` to answer with (the request named "<model>:<adapter>"); None: the base.
    adapter: str | None = None
    # Videos the conversation's video parts index (contract v2 readers without videos see none).
    videos: list[VideoClip] = Field(default_factory=list)
    # A window job of a long video: the stretch its clip covers. Its end counts towards the merge jobs that
    # wait on it, and a failed window is retried (``retries_left``) before it ends failed.
    window: Span | None = None
    # A merge job: no engine call, it combines these windows' answers into one timeline (``segments``).
    windows: list[WindowRef] = Field(default_factory=list)

    def media_digests(self) -> list[str]:
        """The digests of the bytes the engine reads: the images, then each video's frames, in order."""
        return [ref.digest for ref in self.images] + [digest for clip in self.videos for digest in clip.frames]

    @model_validator(mode="after")
    def _messages_from_prompt(self) -> InferJob:
        if not self.messages and self.prompt is not None:
            parts: list[TextPart | ImagePart] = [ImagePart(image=index) for index in range(len(self.images))]
            parts.append(TextPart(text=self.prompt))
            self.messages = [Message(role=Role.USER, content=parts)]
        return self


# The RQ job's ``meta`` entry that lets the worker's claim script start an inference job in the same round trip
# (``worker/lua/claim.lua``): what ``start_meta`` says. A job without it (a merge job reads no media; a job an
# older gateway enqueued) is started with one more read.
START_META = "vlq_start"


def start_meta(job: InferJob) -> dict[str, object]:
    """The ``START_META`` entry of an inference job: its media's digests and its event stream's lifetime."""
    return {"media": job.media_digests(), "ttl": job.result_ttl_s}


class Usage(Tolerant):
    """Token accounting of one engine call."""

    prompt_tokens: int
    completion_tokens: int


class InferOutput(Tolerant):
    """What the model answered; ``json`` is the parsed answer of a JSON response format."""

    text: str
    json_value: Any = Field(default=None, alias="json", serialization_alias="json")
    finish_reason: str | None
    usage: Usage
    # A long video's answer: one segment per window, in time order; ``partial`` if a window failed.
    segments: list[Segment] | None = None
    partial: bool | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


class JobError(Tolerant):
    """Why a job failed, in words a client can act on."""

    code: str
    message: str


class Segment(Span):
    """One window's part of a long video's answer: its text, or why the window has none."""

    text: str | None = None
    error: JobError | None = None


class Timings(Tolerant):
    """Where the time of a job went, in seconds."""

    queue_wait_s: float | None = None
    engine_s: float | None = None
    total_s: float | None = None
    # From enqueue to the first streamed text.
    first_delta_s: float | None = None


class JobResult(Tolerant):
    """The result document a worker (or the gateway, or the janitor) writes when a job ends."""

    state: JobState
    result: InferOutput | None = None
    error: JobError | None = None
    timings: Timings = Field(default_factory=Timings)
    model: str | None = None
    finished_at: float
    # pHashes of the request's images, kept beside a cached answer for near-duplicate lookups.
    phashes: list[str] | None = None


class RequestRecord(Tolerant):
    """What vlq keeps of one client request (``gateway.records`` owns it): a request id is what clients hold.

    Several requests may share one job (coalescing); a cache hit has no job and keeps its answer here.
    """

    v: int = CONTRACT_VERSION
    tenant: str
    created_at: float
    job_id: str | None = None
    x_cache: str = "MISS"
    cache_key: str | None = None
    cache_mode: CacheMode = CacheMode.EXACT
    near_bucket: str | None = None
    deadline_at: float | None = None
    result: JobResult | None = None
    # The served model whose pool runs the job (older records: the gateway's default model).
    model: str | None = None
    # Whether the request asked for a webhook, so a poll knows whether there is a delivery state to read
    # (None: a record written before this field; its state is read to find out).
    has_webhook: bool | None = None


class StreamEvent(StrEnum):
    """Event types of a job's event stream; the last of a stream is one of the final states."""

    QUEUED = "queued"
    RUNNING = "running"
    DELTA = "delta"
    # A window of a long video ended (``{"done": k, "total": n, "state": ..., "window": {start_s, end_s}}``).
    PROGRESS = "progress"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self not in (StreamEvent.QUEUED, StreamEvent.RUNNING, StreamEvent.DELTA, StreamEvent.PROGRESS)


class VideoFrame(Tolerant):
    """One sampled frame of a video: a JPEG stored like an image (under its digest), and when it is shown."""

    # Seconds from the video's first frame: the frame's own presentation time, exact in its time base.
    t: float = Field(ge=0)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1)
    width: int = Field(ge=1)
    height: int = Field(ge=1)

    def image_ref(self) -> ImageRef:
        """The frame as an image a job can carry."""
        return ImageRef(digest=self.digest, media_type="image/jpeg", size=self.size, width=self.width,
                        height=self.height)


class VideoDecode(Tolerant):
    """What sampling a video file at ``sample_fps`` gave (``gateway.media`` owns it): reused by a repeat upload."""

    v: int = CONTRACT_VERSION
    media_type: str
    container: str
    codec: str
    width: int
    height: int
    fps: float
    duration_s: float
    sample_fps: float
    frames: list[VideoFrame]


class MediaRecord(Tolerant):
    """An uploaded media item (``gateway.media`` owns it): its bytes live under their digest, shared.

    An image's bytes live under ``digest``. A video keeps only its sampled frames, each under its own
    digest; ``digest`` is then the BLAKE3 of the uploaded file, and ``width``/``height`` its source size.
    """

    v: int = CONTRACT_VERSION
    tenant: str
    kind: Literal["image", "video"] = "image"
    digest: str
    media_type: str
    width: int
    height: int
    size: int
    created_at: float
    # Videos only: seconds, source frames a second, the sampling rate, and the frames kept (by time).
    duration_s: float | None = None
    fps: float | None = None
    sample_fps: float | None = None
    codec: str | None = None
    container: str | None = None
    frames: list[VideoFrame] = Field(default_factory=list)

    @property
    def blob_digests(self) -> list[str]:
        """The digests of the bytes this item holds, each once."""
        if self.kind == "video":
            return list(dict.fromkeys(frame.digest for frame in self.frames))
        return [self.digest]


class FileRecord(Tolerant):
    """An uploaded or generated file of the Files API (``gateway.files`` owns it); its bytes are kept apart."""

    v: int = CONTRACT_VERSION
    tenant: str
    purpose: Literal["batch", "batch_output", "batch_error"]
    filename: str
    bytes: int
    lines: int
    created_at: float
    expires_at: float


class WebhookState(Tolerant):
    """Delivery of one request's final body to its ``webhook_url`` (``gateway.webhooks`` owns it)."""

    v: int = CONTRACT_VERSION
    tenant: str
    url: str
    state: Literal["pending", "delivered", "failed"] = "pending"
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None


class BatchCounts(Tolerant):
    """OpenAI's ``request_counts`` of a batch."""

    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchRecord(Tolerant):
    """One Batch API batch (``gateway.batches`` owns it): OpenAI's batch object plus where its driver stands."""

    v: int = CONTRACT_VERSION
    tenant: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired",
                    "cancelling", "cancelled"] = "validating"
    metadata: dict[str, str] | None = None
    webhook_url: str | None = None
    created_at: float
    expires_at: float
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    # Errors of the input file as a whole (OpenAI's ``errors.data``), when the batch failed validating.
    errors: list[dict[str, Any]] = Field(default_factory=list)
    request_counts: BatchCounts = Field(default_factory=BatchCounts)
    # Input lines read so far and the byte offset after them: a driver that restarts goes on from here.
    submitted: int = 0
    offset: int = 0
