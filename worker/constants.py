"""Every Redis key prefix, channel and queue name vlq uses, in one place.

Gateway, worker and cache all import from here so that a key is spelled once. This module imports nothing
heavy: the gateway loads it.
"""

from typing import Final

# RQ queue the gateway enqueues inference jobs on (RQ stores it as ``rq:queue:<name>``).
QUEUE_NAME: Final = "vlq-infer"
# Dotted path of the job function; the gateway enqueues by this string and never imports worker code.
INFER_FUNC: Final = "worker.tasks.infer"

# Request record (contract ``RequestRecord``, owned by ``gateway.records``): request id -> its record.
REQUEST_PREFIX: Final = "vlq:req:"
# Job -> the set of request ids attached to it (coalescing), written with the JOB_REFS counter.
JOB_REQUESTS_PREFIX: Final = "vlq:job-reqs:"
# A job's event stream (Redis Stream, ids 0-1, 0-2, ...): queued, running, deltas, one terminal event.
# Written only through ``worker.events``.
STREAM_PREFIX: Final = "vlq:stream:"
# Uploaded media record (``gateway.media``): media id -> {tenant, digest, kind, size, ...}, with a TTL.
MEDIA_PREFIX: Final = "vlq:media:"
# Image digest -> set of media ids that hold it, so deleting the last one deletes the bytes.
IMAGE_MEDIA_PREFIX: Final = "vlq:img-media:"
# Live workers' capacity, for the ETA estimate: hash of worker name -> "<slots>|<service_s>|<lapses_at>".
CAPACITY_KEY: Final = "vlq:capacity"
# Seconds the most recent worker took from process start to ready (its cold start), for warming estimates.
COLD_START_KEY: Final = "vlq:stats:cold-start-s"
# Result document of a finished job (JSON), written once by whoever ends the job.
RESULT_PREFIX: Final = "vlq:result:"
# Uploaded image bytes, stored once by content digest; jobs carry the digest, not the bytes.
IMAGE_PREFIX: Final = "vlq:img:"
# L1 cache entry: cache key -> JSON result, with a TTL.
CACHE_PREFIX: Final = "vlq:cache:"
# In-flight marker: cache key -> job id while a job for that key is queued or running (coalescing).
INFLIGHT_PREFIX: Final = "vlq:inflight:"
# Near-duplicate index: bucket (scope, model, prompt, params) -> sorted set of {cache key, pHashes}.
NEAR_PREFIX: Final = "vlq:near:"
# Pub/sub channel on which the id of every job that reached a final state is published.
EVENTS_CHANNEL: Final = "vlq:events"
# Pub/sub channel on which a cacheable answer {"k": cache key, "r": result JSON, "b": near bucket,
# "p": pHashes} is published when its job ends, so that every gateway keeps it in its L2.
CACHED_CHANNEL: Final = "vlq:cached"
# Idempotency key -> request id, per tenant.
IDEMPOTENCY_PREFIX: Final = "vlq:idem:"
# Per-tenant fixed-window request counters (rate limit).
RATE_PREFIX: Final = "vlq:rate:"
# Per-tenant sorted set of job ids still queued or running (in-flight quota), scored by enqueue time.
TENANT_INFLIGHT_PREFIX: Final = "vlq:tenant-inflight:"
# Number of requests attached to a job (coalescing); a cancel only stops the job when it reaches zero.
JOB_REFS_PREFIX: Final = "vlq:job-refs:"
# Cancel flag for a job; the worker polls it to abort a running generation.
CANCEL_PREFIX: Final = "vlq:cancel:"
# Lock so that one janitor at a time sweeps, however many gateway replicas run.
JANITOR_LOCK: Final = "vlq:janitor:lock"
# Counter of engine calls made by all workers (tests and benchmarks read it).
ENGINE_CALLS: Final = "vlq:stats:engine-calls"
# Highest number of jobs one worker had in flight on its engine at once.
MAX_INFLIGHT_SEEN: Final = "vlq:stats:max-inflight"
