"""Prometheus metrics of one worker process, and the tiny HTTP server that serves them with /healthz."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from worker.contract import JobResult, JobState

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)

JOBS_INFLIGHT = Gauge("vlq_worker_jobs_inflight", "Jobs this worker has on its engine right now")
QUEUE_WAIT = Histogram("vlq_worker_job_queue_wait_seconds", "Time a job waited in the queue",
                       buckets=_LATENCY_BUCKETS)
ENGINE_TIME = Histogram("vlq_worker_job_engine_seconds", "Time a job spent in the engine",
                        buckets=_LATENCY_BUCKETS)
JOBS = Counter("vlq_worker_jobs_total", "Jobs ended by this worker", ["outcome"])
FAILURES = Counter("vlq_worker_failures_total", "Failed jobs by error code", ["code"])
PROMPT_TOKENS = Counter("vlq_worker_prompt_tokens_total", "Prompt tokens processed")
GENERATED_TOKENS = Counter("vlq_worker_generated_tokens_total", "Tokens generated")
GPU_USED = Gauge("vlq_worker_gpu_memory_used_bytes", "GPU memory in use (absent without a GPU)")
GPU_TOTAL = Gauge("vlq_worker_gpu_memory_total_bytes", "GPU memory in all (absent without a GPU)")


def observe_ending(result: JobResult) -> None:
    """Count one ended job."""
    JOBS.labels(outcome=result.state.value).inc()
    if result.error is not None:
        FAILURES.labels(code=result.error.code).inc()
    if result.timings.queue_wait_s is not None:
        QUEUE_WAIT.observe(max(result.timings.queue_wait_s, 0.0))
    if result.state is JobState.DONE and result.result is not None:
        if result.timings.engine_s is not None:
            ENGINE_TIME.observe(result.timings.engine_s)
        PROMPT_TOKENS.inc(result.result.usage.prompt_tokens)
        GENERATED_TOKENS.inc(result.result.usage.completion_tokens)


@dataclass
class Health:
    """What /healthz and the GPU gauges read; the entry point fills it in as start-up proceeds."""

    ready: bool = False
    gpu_memory: Callable[[], tuple[int, int] | None] | None = None


def serve(port: int, health: Health) -> ThreadingHTTPServer:
    """Serve /healthz (200 once ``health.ready``) and /metrics on ``port`` from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok = health.ready
                self._reply(200 if ok else 503, b"ok\n" if ok else b"loading\n", "text/plain")
            elif self.path == "/metrics":
                _update_gpu(health.gpu_memory)
                self._reply(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                return  # the prober gave up waiting; nothing to tell it

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: stay quiet
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - probes come from the kubelet
    threading.Thread(target=server.serve_forever, name="vlq-metrics", daemon=True).start()
    return server


def _update_gpu(gpu_memory: Callable[[], tuple[int, int] | None] | None) -> None:
    reading = gpu_memory() if gpu_memory is not None else None
    if reading is not None:
        GPU_USED.set(reading[0])
        GPU_TOTAL.set(reading[1])
