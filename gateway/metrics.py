"""Prometheus metrics of the gateway.

Correct under several uvicorn worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``python -m
gateway`` sets it whenever it starts more than one process), every process writes its samples to files
there and ``/metrics`` merges them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("vlq_http_requests_total", "HTTP requests by route, method and status",
                   ["route", "method", "status"])
LATENCY = Histogram("vlq_http_request_duration_seconds", "HTTP request latency by route and method",
                    ["route", "method"], buckets=_BUCKETS)
CACHE_HITS = Counter("vlq_cache_hits_total", "Requests answered from cache, by tier", ["tier"])
CACHE_MISSES = Counter("vlq_cache_misses_total", "Requests that enqueued a new job")
COALESCED = Counter("vlq_coalesced_total", "Requests attached to an identical job in flight")
REFUSED = Counter("vlq_refused_total", "Requests refused, by reason (error code)", ["reason"])
JANITOR = Counter("vlq_janitor_actions_total", "Abandoned jobs the janitor retried or failed", ["action"])
# Queue gauges are set by the janitor from Redis: every process reports the same value, so take the latest.
# Labelled by served model: each worker pool scales on its own model's queued + running jobs.
QUEUE_DEPTH = Gauge("vlq_queue_depth", "Jobs waiting in a model's queues (interactive + batch)", ["model"],
                    multiprocess_mode="mostrecent")
QUEUE_STARTED = Gauge("vlq_queue_started_jobs", "Jobs of a model running on its workers", ["model"],
                      multiprocess_mode="mostrecent")
QUEUE_OLDEST_AGE = Gauge("vlq_queue_oldest_age_seconds", "Age of the oldest job in a model's interactive queue",
                         ["model"], multiprocess_mode="mostrecent")


def render() -> tuple[bytes, str]:
    """The exposition text, merged across processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
