"""The request record (contract ``RequestRecord``): its one reader and writer.

Each request id maps to a Redis hash: ``doc`` holds the record as JSON (written once, when the request is
accepted), ``canceled`` is set when the client cancels it. Coalesced requests share a job; the job keeps
the count of requests still wanting it (``JOB_REFS_PREFIX``) and the set of their ids
(``JOB_REQUESTS_PREFIX``), both written in the same transaction as the record, so that streams, webhooks
and batch lines can reach every request of a job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline

from cache.codec import as_text
from worker.constants import JOB_REFS_PREFIX, JOB_REQUESTS_PREFIX, REQUEST_PREFIX
from worker.contract import CacheMode, JobResult, RequestRecord
from worker.scripts import AsyncScripts


@dataclass(frozen=True)
class Stored:
    """A request record as read back, with whether the client canceled it."""

    request_id: str
    record: RequestRecord
    canceled: bool


def _key(request_id: str) -> str:
    return REQUEST_PREFIX + request_id


def write(pipe: Pipeline | AsyncPipeline, request_id: str, record: RequestRecord, ttl_s: int) -> None:
    """Queue the record's write into a transaction."""
    pipe.hset(_key(request_id), "doc", record.model_dump_json(exclude_none=True))
    pipe.expire(_key(request_id), ttl_s)


def first_of_job(pipe: Pipeline, job_id: str, request_id: str, ttl_s: int) -> None:
    """Queue: ``request_id`` is the first (and so far only) request wanting the new job ``job_id``."""
    pipe.set(JOB_REFS_PREFIX + job_id, 1, ex=ttl_s)
    pipe.sadd(JOB_REQUESTS_PREFIX + job_id, request_id)
    pipe.expire(JOB_REQUESTS_PREFIX + job_id, ttl_s)


def attach(pipe: Pipeline, job_id: str, request_id: str) -> None:
    """Queue: one more request wants the job (coalescing)."""
    pipe.incr(JOB_REFS_PREFIX + job_id)
    pipe.sadd(JOB_REQUESTS_PREFIX + job_id, request_id)


async def write_if_cached(scripts: AsyncScripts, request_id: str, record: RequestRecord, l1_key: str, ttl_s: int,
                          idem_key: str | None) -> bytes | None:
    """A cache hit in one round trip: the L1 answer under ``l1_key``, and if there is one the request's record
    holding it (``record`` with that result) and its idempotency key; None (nothing written) on a miss."""
    doc = record.model_dump_json(exclude_none=True)
    if record.result is not None or not doc.endswith("}"):
        raise ValueError("the record of a cache hit gets its result from the cache")
    raw = await scripts.serve_hit(keys=[l1_key, _key(request_id), idem_key or l1_key],
                                  args=[doc[:-1] + ',"result":', "}", ttl_s, "1" if idem_key else "0", request_id])
    return raw if isinstance(raw, bytes) else None


async def read(redis: AsyncRedis, request_id: str) -> Stored | None:
    """The record, or None if unknown (or unreadable: treated as unknown, never a crash)."""
    return _decode(request_id, await redis.hgetall(_key(request_id)))


def read_canceled(pipe: AsyncPipeline, request_id: str) -> None:
    """Queue a read of whether the request was canceled (its one field that changes after it is written)."""
    pipe.hexists(_key(request_id), "canceled")


async def read_many(redis: AsyncRedis, request_ids: list[str]) -> list[Stored | None]:
    """``read`` of each id, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for request_id in request_ids:
            pipe.hgetall(_key(request_id))
        replies = await pipe.execute()
    return [_decode(request_id, fields) for request_id, fields in zip(request_ids, replies, strict=True)]


def _decode(request_id: str, fields: Mapping[Any, Any]) -> Stored | None:
    if not fields:
        return None
    try:
        record = (RequestRecord.model_validate_json(fields[b"doc"]) if b"doc" in fields
                  else _legacy(fields))
    except (ValidationError, ValueError, KeyError):
        return None
    return Stored(request_id=request_id, record=record, canceled=b"canceled" in fields)


def _legacy(fields: Mapping[Any, Any]) -> RequestRecord:
    """A record written field by field by a gateway before the contract held it (version 1)."""
    result = fields.get(b"result")
    return RequestRecord.model_validate({
        "v": 1, "tenant": as_text(fields[b"tenant"]), "created_at": float(as_text(fields.get(b"created_at")) or 0),
        "job_id": as_text(fields.get(b"job_id")) or None, "x_cache": as_text(fields.get(b"x_cache")) or "MISS",
        "cache_key": as_text(fields.get(b"cache_key")) or None,
        "cache_mode": as_text(fields.get(b"cache_mode")) or CacheMode.EXACT.value,
        "near_bucket": as_text(fields.get(b"near_bucket")) or None,
        "deadline_at": float(as_text(fields[b"deadline_at"])) if b"deadline_at" in fields else None,
        "result": None if result is None else JobResult.model_validate_json(result)})


async def cancel(redis: AsyncRedis, request_id: str, job_id: str) -> int:
    """Mark the request canceled; returns how many requests still want its job."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(_key(request_id), "canceled", 1)
        pipe.decr(JOB_REFS_PREFIX + job_id)
        _, refs = await pipe.execute()
    return int(refs)


async def requests_of(redis: AsyncRedis, job_id: str) -> set[str]:
    """Every request id attached to a job."""
    return {as_text(member) for member in await redis.smembers(JOB_REQUESTS_PREFIX + job_id)}
