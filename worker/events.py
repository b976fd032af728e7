"""A job's event stream: the one durable record of what happened to it, read by every interface.

One Redis Stream per job (``STREAM_PREFIX + job_id``) holds, in order: ``queued`` (written with the job by
the gateway), ``running`` (each time a worker starts it; a retried job starts its answer afresh), ``delta``
(streamed text, batched by the worker) and exactly one terminal event — ``done``, ``failed``, ``canceled``
or ``expired`` — written in the same atomic step as the result document (``worker/lua/finish.lua``), whose
JSON is its data. Stream ids are ``0-1``, ``0-2``, ...; the sequence number is the SSE event id, so
``Last-Event-ID: n`` resumes exactly after event n. Streams are bounded (``MAXLEN ~``) and expire with the
result.

This module owns the key family: everything that writes or reads a stream goes through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline

from cache.codec import as_text
from worker.constants import STREAM_PREFIX
from worker.contract import StreamEvent
from worker.scripts import Scripts

# Enough for the longest answer at the worker's batching (a few hundred delta events) and then some.
STREAM_MAXLEN = 10_000


@dataclass(frozen=True)
class Event:
    """One event of a job's stream: its sequence number, type and JSON data (as text)."""

    seq: int
    kind: StreamEvent
    data: str

    @property
    def is_terminal(self) -> bool:
        return self.kind.is_terminal


def stream_key(job_id: str) -> str:
    return STREAM_PREFIX + job_id


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def add_queued(pipe: Pipeline, job_id: str, data: dict[str, Any], ttl_s: int) -> None:
    """Queue the first event of a new job's stream into the gateway's enqueue transaction."""
    key = stream_key(job_id)
    pipe.xadd(key, {"e": StreamEvent.QUEUED.value, "d": dumps(data)}, id="0-1")
    pipe.expire(key, ttl_s)


def append(scripts: Scripts, client: Redis | Pipeline, job_id: str, events: list[tuple[StreamEvent, str]],
           ttl_s: int) -> Any:
    """Append events in order (nothing after a terminal one); returns the last sequence number or 0."""
    args: list[str | int] = [STREAM_MAXLEN, ttl_s]
    for kind, data in events:
        args.extend((kind.value, data))
    return scripts.append(keys=[stream_key(job_id)], args=args, client=client)


def _parse(entries: list[Any]) -> list[Event]:
    events = []
    for entry_id, fields in entries:
        seq = int(as_text(entry_id).rsplit("-", 1)[1])
        kind = StreamEvent(as_text(fields.get(b"e")))
        events.append(Event(seq=seq, kind=kind, data=as_text(fields.get(b"d")) or "{}"))
    return events


async def read(redis: AsyncRedis, job_id: str, after: int, block_ms: int, count: int = 512) -> list[Event]:
    """Events after sequence number ``after``, waiting up to ``block_ms`` for the first one."""
    reply: Any = await redis.xread({stream_key(job_id): f"0-{after}"}, count=count, block=block_ms)
    return _parse(reply[0][1]) if reply else []
