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
from dataclasses import dataclass
from typing import Any

from gateway import eta, records
from gateway.backend import Backend
from gateway.errors import ApiError, NotFoundError
from gateway.results import final_body, view
from worker import events
from worker.contract import JobResult, JobState, RequestRecord, StreamEvent


@dataclass(frozen=True)
class Item:
    """One event as a reader sees it: its id (None for live updates), type and JSON data.

    A terminal event's data is the request's final body (``gateway.results.final_body``).
    """

    seq: int | None
    kind: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        return self.kind in _TERMINAL


_TERMINAL = frozenset(kind.value for kind in StreamEvent if kind.is_terminal)


def frame(item: Item) -> bytes:
    """One SSE event."""
    head = f"id: {item.seq}\n" if item.seq is not None else ""
    return f"{head}event: {item.kind}\ndata: {json.dumps(item.data, ensure_ascii=False)}\n\n".encode()


KEEPALIVE = Item(seq=None, kind="keepalive", data={})


async def open_stream(backend: Backend, request_id: str, tenant: str, after: int) -> AsyncIterator[bytes]:
    """Check the request (404 before any byte is sent) and return its SSE byte stream."""
    items = await open_events(backend, request_id, tenant, after)

    async def frames() -> AsyncIterator[bytes]:
        async for item in items:
            yield b": keepalive\n\n" if item is KEEPALIVE else frame(item)

    return frames()


async def open_events(backend: Backend, request_id: str, tenant: str, after: int) -> AsyncIterator[Item]:
    """Check the request (404 if unknown or another tenant's) and return its events after ``after``.

    ``KEEPALIVE`` items come when nothing happened for ``stream_keepalive_s``; the iterator ends after the
    terminal event. Every interface that streams (the API, the OpenAI facade) reads this.
    """
    stored = await records.read(backend.aredis, request_id)
    if stored is None or stored.record.tenant != tenant:
        raise NotFoundError("request_not_found", "no such request", "request_id")
    if stored.record.result is not None:
        return _replay_hit(request_id, stored.record.result, stored.record.x_cache, after)
    if stored.record.job_id is None:
        raise NotFoundError("request_not_found", "no such request", "request_id")
    # A request whose job and result expired is a 410 now, before the stream starts.
    await view(backend, request_id, tenant, with_standing=False)
    return _follow(backend, request_id, tenant, stored.record, after)


async def _replay_hit(request_id: str, result: JobResult, x_cache: str, after: int) -> AsyncIterator[Item]:
    text = result.result.text if result.result is not None else ""
    if after < 1:
        yield Item(1, StreamEvent.DELTA.value, {"text": text})
    if after < 2:
        yield Item(2, result.state.value, final_body(request_id, result, x_cache))


async def _follow(backend: Backend, request_id: str, tenant: str, record: RequestRecord,
                  after: int) -> AsyncIterator[Item]:
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
            standing = await eta.for_job(backend, job_id, record.model)
            if standing.position is not None:
                yield Item(None, StreamEvent.QUEUED.value, standing.body())
                last_sent = time.monotonic()
                continue
        if time.monotonic() - last_sent >= settings.stream_keepalive_s - 0.5:
            yield KEEPALIVE
            last_sent = time.monotonic()


def _durable(request_id: str, x_cache: str, event: events.Event) -> Item:
    if event.is_terminal:
        result = JobResult.model_validate_json(event.data)
        return Item(event.seq, event.kind.value, final_body(request_id, result, x_cache))
    return Item(event.seq, event.kind.value, json.loads(event.data))


async def _own_ending(backend: Backend, request_id: str, tenant: str) -> Item | None:
    """A terminal event for this request alone: canceled by its client, expired in the queue, or its job
    gone from Redis while the stream was open (a job that ended has its terminal event in the stream)."""
    try:
        current = await view(backend, request_id, tenant, with_standing=False)
    except ApiError as exc:
        return Item(None, "failed", {"request_id": request_id, "status": "failed",
                                     "error": {"code": exc.code, "message": exc.message}})
    if current.state in (JobState.CANCELED, JobState.EXPIRED) and current.is_final and current.result is not None:
        return Item(None, current.state.value, current.body())
    return None
