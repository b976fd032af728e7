"""``GET /api/stream`` behind the route: a request's events as Server-Sent Events.

A reader of the job's event stream (``worker.events``), nothing more: it replays the events from the start
(or from after ``Last-Event-ID``), follows new ones, and ends after the terminal event, whose data is the
same body ``GET /api/result`` answers with. Every request coalesced onto a job reads that job's stream; a
cache hit streams its answer as one ``delta`` and ``done``. Between durable events it sends, without an id
(so resuming is unaffected), a fresh ``queued`` position and estimate while the job waits, and a comment
line every ``stream_keepalive_s``. A request canceled while its job goes on for others, or one whose
deadline passed in the queue, ends with a terminal event of its own, also without an id.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from gateway import eta, records
from gateway.backend import Backend
from gateway.errors import NotFoundError
from gateway.results import final_body, view
from worker import events
from worker.contract import JobResult, JobState, RequestRecord, StreamEvent


def frame(kind: str, data: str, seq: int | None = None) -> bytes:
    """One SSE event."""
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n".encode()


async def open_stream(backend: Backend, request_id: str, tenant: str, after: int) -> AsyncIterator[bytes]:
    """Check the request (404 before any byte is sent) and return its event generator."""
    stored = await records.read(backend.aredis, request_id)
    if stored is None or stored.record.tenant != tenant:
        raise NotFoundError("request_not_found", "no such request", "request_id")
    if stored.record.result is not None:
        return _replay_hit(request_id, stored.record.result, stored.record.x_cache, after)
    if stored.record.job_id is None:
        raise NotFoundError("request_not_found", "no such request", "request_id")
    return _follow(backend, request_id, tenant, stored.record, after)


async def _replay_hit(request_id: str, result: JobResult, x_cache: str, after: int) -> AsyncIterator[bytes]:
    text = result.result.text if result.result is not None else ""
    if after < 1:
        yield frame(StreamEvent.DELTA.value, events.dumps({"text": text}), 1)
    if after < 2:
        yield frame(result.state.value, json.dumps(final_body(request_id, result, x_cache)), 2)


async def _follow(backend: Backend, request_id: str, tenant: str, record: RequestRecord,
                  after: int) -> AsyncIterator[bytes]:
    job_id = str(record.job_id)
    settings = backend.settings
    queued = True
    last_sent = time.monotonic()
    while True:
        block_s = settings.stream_position_interval_s if queued else settings.stream_keepalive_s
        batch = await events.read(backend.stream_redis, job_id, after, block_ms=int(block_s * 1000))
        for event in batch:
            after = event.seq
            queued = event.kind is StreamEvent.QUEUED
            yield _durable(request_id, record.x_cache, event)
            if event.is_terminal:
                return
        if batch:
            last_sent = time.monotonic()
            continue
        ending = await _own_ending(backend, request_id, tenant)
        if ending is not None:
            yield ending
            return
        if queued:
            standing = await eta.for_job(backend, job_id)
            if standing.position is not None:
                yield frame(StreamEvent.QUEUED.value, json.dumps(standing.body()))
                last_sent = time.monotonic()
                continue
        if time.monotonic() - last_sent >= settings.stream_keepalive_s - 0.5:
            yield b": keepalive\n\n"
            last_sent = time.monotonic()


def _durable(request_id: str, x_cache: str, event: events.Event) -> bytes:
    if event.is_terminal:
        result = JobResult.model_validate_json(event.data)
        return frame(event.kind.value, json.dumps(final_body(request_id, result, x_cache)), event.seq)
    return frame(event.kind.value, event.data, event.seq)


async def _own_ending(backend: Backend, request_id: str, tenant: str) -> bytes | None:
    """A terminal event for this request alone: canceled by its client, or expired in the queue."""
    current = await view(backend, request_id, tenant, with_standing=False)
    if current.state in (JobState.CANCELED, JobState.EXPIRED) and current.is_final and current.result is not None:
        return frame(current.state.value, json.dumps(current.body()))
    return None
