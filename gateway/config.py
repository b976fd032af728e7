"""Settings of the gateway service, read from ``VLQ_GATEWAY_*`` environment variables."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.config import DEFAULT_MODEL


class GatewaySettings(BaseSettings):
    """Everything the gateway can be told; built once by the entry point and passed in."""

    model_config = SettingsConfigDict(env_prefix="VLQ_GATEWAY_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = Field(default=2.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    # Threads for blocking work (image decode, sync Redis, SQLite). More than a few per core only fight over
    # the GIL: at 64 requests in flight, 40 threads served 43 req/s where 4 served 153.
    threads: int = Field(default=8, ge=1, le=256)
    # The default served model (requests that name none); part of every cache key.
    model: str = DEFAULT_MODEL
    # Every served model, each with its own queues and worker pool (empty: just ``model``). JSON list.
    models: list[str] = Field(default_factory=list)
    # LoRA adapters per served model (JSON object model -> adapter names); requests name "<model>:<adapter>".
    adapters: dict[str, list[str]] = Field(default_factory=dict)

    # Tenants: API keys from a JSON file of hashes (a mounted Secret). Off only when set false explicitly.
    auth_enabled: bool = True
    api_keys_file: Path | None = None

    # Per-tenant limits, held in Redis so they hold across gateway replicas (0 = unlimited).
    rate_limit_per_minute: int = Field(default=0, ge=0)
    tenant_max_inflight: int = Field(default=0, ge=0)
    # Refuse new work (503) while no worker is alive; leave off when workers scale to zero on demand.
    require_live_worker: bool = False

    # Input limits: a request outside them gets a 4xx and nothing is written to Redis.
    max_images: int = Field(default=4, ge=1, le=64)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1024)
    max_aspect_ratio: float = Field(default=100.0, ge=1.0)
    # Characters of text in one request, all turns of a conversation together.
    max_prompt_chars: int = Field(default=16_000, ge=1)
    max_messages: int = Field(default=64, ge=1, le=10_000)
    # A client's JSON Schema (response_format): serialized size and nesting depth.
    max_schema_bytes: int = Field(default=32 * 1024, ge=256)
    max_schema_depth: int = Field(default=32, ge=2, le=64)
    # Request bodies: a larger one is refused while it streams in, a slower one when a read stalls.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    body_read_timeout_s: float = Field(default=15.0, gt=0)
    # The whole body must arrive within this, however it trickles in (slowloris).
    body_deadline_s: float = Field(default=120.0, gt=0)
    max_tokens_limit: int = Field(default=4096, ge=1)
    default_max_tokens: int = Field(default=256, ge=1)

    # Cache tiers.
    l1_ttl_s: int = Field(default=600, ge=1)
    l2_ttl_s: int = Field(default=86_400, ge=1)
    l2_path: Path = Path(".cache/l2-cache.sqlite3")
    l2_max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    near_max_distance: int = Field(default=6, ge=0, le=64)
    # Cache entries are per tenant unless this is set: then tenants can learn what others asked.
    shared_cache: bool = False

    # Queue and result lifetimes.
    job_timeout_s: int = Field(default=600, ge=1)
    result_ttl_s: int = Field(default=3600, ge=60)
    # How long a request id is known; past result_ttl_s (and before this) polling it answers 410.
    request_ttl_s: int = Field(default=86_400, ge=60)
    max_queue_depth: int = Field(default=10_000, ge=1)
    # The batch queue's own cap (Batch API lines, priority=batch): batch work never fills the interactive one.
    max_batch_queue_depth: int = Field(default=100_000, ge=1)
    image_ttl_s: int = Field(default=7200, ge=60)
    # Uploaded media (POST /api/media) live this long after their last use.
    media_ttl_s: int = Field(default=86_400, ge=60)
    job_retries: int = Field(default=2, ge=0, le=10)
    max_wait_s: float = Field(default=60.0, ge=0)
    # POST /v1/chat/completions without stream holds the call this long for the answer, then answers 504.
    openai_wait_s: float = Field(default=120.0, gt=0)
    # Wait estimates before any worker measured its service time (seconds a job holds a slot).
    eta_prior_service_s: float = Field(default=2.0, gt=0)
    # How long a worker takes to start, before one measured it (requests waiting while the pool scales from 0).
    cold_start_prior_s: float = Field(default=120.0, gt=0)
    # A comment line on every open event stream this often, so proxies keep it open.
    stream_keepalive_s: float = Field(default=15.0, gt=0)
    # While a request is queued, its stream sends a fresh position and estimate this often.
    stream_position_interval_s: float = Field(default=2.0, gt=0)
    janitor_interval_s: float = Field(default=5.0, gt=0)
    # A started job whose worker stopped heart-beating for this long is swept (retried or failed).
    stale_after_s: int = Field(default=30, ge=5)

    # Files API (POST /v1/files): caps checked while the upload streams in; files live this long.
    file_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    file_max_lines: int = Field(default=50_000, ge=1)
    file_ttl_s: int = Field(default=30 * 86_400, ge=60)
    # Files per tenant (0 = unlimited).
    tenant_max_files: int = Field(default=1000, ge=0)

    # Batch API: each gateway's driver submits lines and collects answers this often, at most this many
    # lines per step (a step is short, so many batches and replicas share the work).
    batch_poll_s: float = Field(default=1.0, gt=0)
    batch_step_lines: int = Field(default=500, ge=1)
    # Lines of one batch queued or running at once; the rest wait in its input file for their turn.
    batch_max_open_lines: int = Field(default=5000, ge=1)

    # Webhooks: per-tenant HMAC secrets (a JSON object tenant -> secret, a mounted Secret), or one secret for
    # every tenant (development); a request naming webhook_url from a tenant without a secret is refused.
    webhook_secrets_file: Path | None = None
    webhook_secret: str | None = None
    # https only unless set; private, loopback, link-local and metadata addresses are always refused except
    # those in webhook_allow_cidrs (an in-cluster receiver, tests).
    webhook_allow_http: bool = False
    webhook_allow_cidrs: list[str] = Field(default_factory=list)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=5, ge=1, le=20)
    webhook_max_redirects: int = Field(default=3, ge=0, le=10)
    # RQ's Retry waits base x 4^n seconds before retry n+1 (2, 8, 32, 128, ...), each at most the cap; the
    # webhook worker runs RQ's scheduler for the waits (0 retries at once: tests).
    webhook_retry_base_s: int = Field(default=2, ge=0)
    webhook_retry_max_s: int = Field(default=900, ge=0)

    # Videos (POST /api/media): checked on what the file declares before decoding, and again while decoding.
    # The body cap of /api/media is the larger of this and max_image_bytes.
    video_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    video_max_duration_s: float = Field(default=3600.0, gt=0)
    # Pixels of one source frame (4K UHD).
    video_max_pixels: int = Field(default=3840 * 2160, ge=1024)
    # Source frames decoded (an hour at 60 frames a second), and source frames a second.
    video_max_frames: int = Field(default=3600 * 60, ge=1)
    video_max_source_fps: float = Field(default=240.0, gt=0)
    # Frames sampled a second (the form field ``fps``), and the most frames one video keeps.
    video_sample_fps: float = Field(default=2.0, gt=0)
    video_max_sample_fps: float = Field(default=4.0, gt=0)
    video_max_sample_frames: int = Field(default=7200, ge=1)
    # A video longer than one window (``video.window_s``) becomes one job per window and a merge job; this
    # many windows at most per request (an hour at the default 60 s is 60).
    video_max_windows: int = Field(default=120, ge=1, le=3600)
    # Kept frames are shrunk so that their long edge is at most this (JPEG; what the model gets anyway).
    video_frame_long_edge: int = Field(default=448, ge=32, le=4096)
    # A decode taking longer is refused (422) and nothing is stored; at most this many decode at once. On 2
    # cores a 720p video-second costs about 0.11 s, 1080p 0.2 s (make bench: video): 300 s holds ~45 min of 720p.
    video_decode_timeout_s: float = Field(default=300.0, gt=0)
    video_decode_concurrency: int = Field(default=2, ge=1, le=64)

    @field_validator("webhook_allow_cidrs", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        """Each entry a network (checked now, not at the first delivery); a JSON list as text is read too."""
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            for cidr in value:
                ipaddress.ip_network(str(cidr).strip(), strict=False)
            return [str(cidr).strip() for cidr in value]
        return value

    @property
    def served_models(self) -> list[str]:
        """The served models, the default first."""
        return [self.model, *(name for name in self.models if name != self.model)]

    @model_validator(mode="after")
    def _video_sampling(self) -> GatewaySettings:
        if self.video_sample_fps > self.video_max_sample_fps:
            raise ValueError("video_sample_fps is over video_max_sample_fps")
        return self

    @model_validator(mode="after")
    def _adapters_of_served_models(self) -> GatewaySettings:
        unknown = set(self.adapters) - set(self.served_models)
        if unknown:
            raise ValueError(f"adapters name models that are not served: {sorted(unknown)}")
        return self
