"""Every Redis key prefix, channel and queue name vlq uses, in one place.

Gateway, worker and cache all import from here so that a key is spelled once. This module imports nothing
heavy: the gateway loads it.
"""

from typing import Final

# RQ queues of interactive inference jobs, one per served model: ``<QUEUE_NAME>:<served model name>`` (RQ
# stores it as ``rq:queue:<name>``; ``worker.rqjobs.queue_names`` spells them).
QUEUE_NAME: Final = "vlq-infer"
# RQ queues of batch-priority jobs (Batch API lines, ``priority=batch``), ``<BATCH_QUEUE_NAME>:<model>``;
# a model's workers take them after its interactive queue.
BATCH_QUEUE_NAME: Final = "vlq-infer-batch"
# RQ queue of webhook deliveries, run by ``python -m gateway.webhook_worker`` (RQ's Retry backs off).
WEBHOOK_QUEUE_NAME: Final = "vlq-webhooks"
# Dotted path of the webhook delivery function (run by the webhook worker, never by inference workers).
WEBHOOK_FUNC: Final = "gateway.webhooks.deliver"
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
# A video's sampled frames and timing (contract ``VideoDecode``, owned by ``gateway.media``), by
# ``<scope>:<file digest>:<sample fps>``, scope a tenant (or "shared"), so a repeat upload skips the decode
# and no tenant learns from the speed of its upload that another sent the same file. Same TTL as media.
VIDEO_DECODE_PREFIX: Final = "vlq:video-decode:"
# Live workers' capacity per served model, for the ETA estimate (``<prefix><model>``): hash of worker name
# -> "<slots>|<service_s>|<lapses_at>".
CAPACITY_PREFIX: Final = "vlq:capacity:"
# Seconds the most recent worker of a model took from process start to ready (``<prefix><model>``: its cold
# start), for warming estimates.
COLD_START_PREFIX: Final = "vlq:stats:cold-start-s:"
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
# Files API: file id -> its record (contract ``FileRecord``, owned by ``gateway.files``), with a TTL.
FILE_PREFIX: Final = "vlq:file:"
# Files API: file id -> the file's bytes (JSONL), beside its record and with the same TTL.
FILE_DATA_PREFIX: Final = "vlq:file-data:"
# Per-tenant sorted set of file ids by creation time (GET /v1/files lists it).
TENANT_FILES_PREFIX: Final = "vlq:tenant-files:"
# Batch id -> its record (contract ``BatchRecord``, owned by ``gateway.batches``).
BATCH_PREFIX: Final = "vlq:batch:"
# Batch id -> hash of input line number -> {"c": custom_id, "r": request id} for each submitted line.
BATCH_LINES_PREFIX: Final = "vlq:batch-lines:"
# Batch id -> its own copy of the input file's bytes (the client may delete the file mid-batch).
BATCH_INPUT_PREFIX: Final = "vlq:batch-input:"
# Batch id -> set of line numbers submitted and not yet ended.
BATCH_OPEN_PREFIX: Final = "vlq:batch-open:"
# Batch id -> list of output-file lines (ended answers) / error-file lines, appended as lines end.
BATCH_OUTPUT_PREFIX: Final = "vlq:batch-out:"
BATCH_ERRORS_PREFIX: Final = "vlq:batch-err:"
# Per-tenant sorted set of batch ids by creation time (GET /v1/batches lists it).
TENANT_BATCHES_PREFIX: Final = "vlq:tenant-batches:"
# Set of batch ids not yet in a final state: every gateway's batch driver takes them in turn.
ACTIVE_BATCHES_KEY: Final = "vlq:batches:active"
# Lock on one batch's driver step, so one gateway replica at a time advances it.
BATCH_LOCK_PREFIX: Final = "vlq:batch-lock:"
# Request id -> its webhook delivery state (contract ``WebhookState``, owned by ``gateway.webhooks``).
WEBHOOK_PREFIX: Final = "vlq:webhook:"
# Job id -> set of request ids attached to it that carry a webhook; the finish script logs the job's end
# to ENDED_STREAM only when this exists.
JOB_HOOKS_PREFIX: Final = "vlq:job-hooks:"
# Durable log (Redis Stream) of ended jobs that someone asked to hear about; gateways read it in a consumer
# group (``gateway.webhooks``) so that an end is delivered even if every gateway was down when it happened.
ENDED_STREAM: Final = "vlq:ended"
# Hash per merge job of a long video: windows in total, ended so far, and each window still awaited
# (worker.merges owns it).
MERGE_PREFIX: Final = "vlq:merge:"
