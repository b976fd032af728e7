"""Batch API records: ``POST/GET /v1/batches`` and cancel, over batches kept in Redis.

This module is the one owner of a batch's keys: its record (contract ``BatchRecord``), its copy of the
input file, its line map (line -> custom_id and request id), its set of open lines and its output and
error lines. ``gateway.batch_driver`` advances batches through these functions; routes are in
``gateway.batches_routes``. Every line of a batch is an ordinary request on the batch queue, submitted by
the driver through ``gateway.submit``: cache, coalescing and tenants apply as to any other request.

Lifecycle (OpenAI's statuses): ``validating`` (the input file is read once: lines counted, custom_ids
unique) -> ``in_progress`` (lines submitted as room allows, counted as they end) -> ``finalizing`` (output
and error files written) -> ``completed``; or ``failed`` (the file as a whole is unusable), ``expired``
(past ``expires_at``), ``cancelling`` -> ``cancelled``. Nothing lives in a gateway's memory: a gateway that
restarts mid-batch loses nothing, and any replica's driver goes on where another stopped.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.exceptions import WatchError

from cache.codec import as_text
from gateway import files
from gateway.backend import Backend
from gateway.errors import BadRequestError, NotFoundError
from gateway.intake import param_name
from worker.constants import (
    ACTIVE_BATCHES_KEY,
    BATCH_ERRORS_PREFIX,
    BATCH_INPUT_PREFIX,
    BATCH_LINES_PREFIX,
    BATCH_OPEN_PREFIX,
    BATCH_OUTPUT_PREFIX,
    BATCH_PREFIX,
    TENANT_BATCHES_PREFIX,
)
from worker.contract import BatchRecord

ENDPOINT = "/v1/chat/completions"
WINDOW_S = {"24h": 86_400}
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class BatchIn(BaseModel):
    """``POST /v1/batches``; ``webhook_url`` is vlq's addition (the batch object, signed, when it ends)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
        for key, item in (value or {}).items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return value


@dataclass(frozen=True)
class Batch:
    """A batch as read back."""

    batch_id: str
    record: BatchRecord

    @property
    def is_final(self) -> bool:
        return self.record.status in FINAL

    def body(self) -> dict[str, Any]:
        """OpenAI's batch object."""
        r = self.record
        times = {name: _int(getattr(r, name)) for name in (
            "created_at", "expires_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
            "expired_at", "cancelling_at", "cancelled_at")}
        return {"id": self.batch_id, "object": "batch", "endpoint": r.endpoint,
                "errors": {"object": "list", "data": r.errors} if r.errors else None,
                "input_file_id": r.input_file_id, "completion_window": r.completion_window, "status": r.status,
                "output_file_id": r.output_file_id, "error_file_id": r.error_file_id, **times,
                "request_counts": r.request_counts.model_dump(), "metadata": r.metadata}


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def record_key(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id


def input_key(batch_id: str) -> str:
    return BATCH_INPUT_PREFIX + batch_id


def lines_key(batch_id: str) -> str:
    return BATCH_LINES_PREFIX + batch_id


def open_key(batch_id: str) -> str:
    return BATCH_OPEN_PREFIX + batch_id


def output_key(batch_id: str) -> str:
    return BATCH_OUTPUT_PREFIX + batch_id


def errors_key(batch_id: str) -> str:
    return BATCH_ERRORS_PREFIX + batch_id


def _index_key(tenant: str) -> str:
    return TENANT_BATCHES_PREFIX + tenant


def _ttl(record: BatchRecord, settings_ttl_s: int) -> int:
    """Keys live until the batch's window closes plus the files' lifetime, so a result outlives its batch."""
    return int(max(record.expires_at - time.time(), 0)) + settings_ttl_s


def parse_body(raw: dict[str, Any]) -> BatchIn:
    """The create body, or a 400 naming the first bad field."""
    try:
        body = BatchIn.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = param_name(first["loc"]) or None
        code = "unknown_parameter" if first["type"] == "extra_forbidden" else "invalid_parameter"
        raise BadRequestError(code, f"{param}: {first['msg']}", param) from exc
    if body.endpoint != ENDPOINT:
        raise BadRequestError("unsupported_endpoint", f"only {ENDPOINT} is supported", "endpoint")
    if body.completion_window not in WINDOW_S:
        raise BadRequestError("invalid_parameter", "completion_window must be 24h", "completion_window")
    return body


async def create(backend: Backend, tenant: str, body: BatchIn) -> Batch:
    """A new batch over the tenant's input file, copied so the client may delete the file meanwhile."""
    try:
        source = await files.get(backend, tenant, body.input_file_id)
    except NotFoundError as exc:
        raise NotFoundError(exc.code, exc.message, "input_file_id") from exc
    if source.record.purpose != "batch":
        raise BadRequestError("invalid_file_purpose", "the input file's purpose must be batch", "input_file_id")
    now = time.time()
    batch_id = "batch_" + secrets.token_urlsafe(16)
    record = BatchRecord(tenant=tenant, input_file_id=body.input_file_id, endpoint=body.endpoint,
                         completion_window=body.completion_window, metadata=body.metadata,
                         webhook_url=body.webhook_url, created_at=now,
                         expires_at=now + WINDOW_S[body.completion_window])
    ttl = _ttl(record, backend.settings.file_ttl_s)
    if not await files.copy_content(backend, tenant, body.input_file_id, input_key(batch_id), ttl):
        raise NotFoundError("file_not_found", "no such file (unknown, expired or deleted)", "input_file_id")
    async with backend.aredis.pipeline(transaction=True) as pipe:
        pipe.set(record_key(batch_id), record.model_dump_json(exclude_none=True), ex=ttl)
        pipe.zadd(_index_key(tenant), {batch_id: now})
        pipe.expire(_index_key(tenant), ttl)
        pipe.sadd(ACTIVE_BATCHES_KEY, batch_id)
        await pipe.execute()
    return Batch(batch_id, record)


def _parse(raw: object, tenant: str | None) -> BatchRecord | None:
    if raw is None:
        return None
    try:
        record = BatchRecord.model_validate_json(raw if isinstance(raw, bytes | str) else b"")
    except ValidationError:
        return None
    return record if tenant is None or record.tenant == tenant else None


def _valid_id(batch_id: str) -> bool:
    return batch_id.startswith("batch_") and len(batch_id) <= 64 and set(batch_id) <= _ID_CHARS


async def read(backend: Backend, batch_id: str, tenant: str | None = None) -> Batch | None:
    """The batch (None if unknown, expired, or — with ``tenant`` — another tenant's)."""
    if not _valid_id(batch_id):
        return None
    record = _parse(await backend.aredis.get(record_key(batch_id)), tenant)
    return Batch(batch_id, record) if record is not None else None


async def get(backend: Backend, tenant: str, batch_id: str) -> Batch:
    """The tenant's batch; 404 ``batch_not_found`` otherwise."""
    batch = await read(backend, batch_id, tenant)
    if batch is None:
        raise NotFoundError("batch_not_found", "no such batch", "batch_id")
    return batch


async def list_batches(backend: Backend, tenant: str, limit: int, after: str | None) -> tuple[list[Batch], bool]:
    """The tenant's batches, newest first, after the ``after`` cursor; and whether more follow."""
    index = _index_key(tenant)
    stop = "+inf"
    if after is not None:
        score = await backend.aredis.zscore(index, after)
        if score is None:
            raise BadRequestError("invalid_parameter", "after names no batch of this tenant", "after")
        stop = f"({score}"
    ids = await backend.aredis.zrevrangebyscore(index, stop, "-inf", start=0, num=limit + 1)
    found = [batch for batch in [await read(backend, as_text(raw), tenant) for raw in ids[:limit]] if batch]
    return found, len(ids) > limit


async def cancel(backend: Backend, tenant: str, batch_id: str) -> Batch:
    """Ask a batch to stop: ``cancelling`` now, ``cancelled`` once its driver has stopped its lines."""
    batch = await get(backend, tenant, batch_id)
    if batch.record.status in ("cancelling", "cancelled"):
        return batch
    if batch.is_final:
        raise BadRequestError("batch_not_cancellable", f"the batch is already {batch.record.status}", "batch_id")
    return await update(backend, batch, status="cancelling", cancelling_at=time.time())


async def update(backend: Backend, batch: Batch, *, also: Callable[[AsyncPipeline], None] | None = None,
                 **changes: Any) -> Batch:
    """The record with ``changes`` written back, with ``also``'s writes in the same transaction.

    The driver and a client's cancel both write the record: this reads it afresh under WATCH and applies
    ``changes`` to what is there, so neither overwrites the other, and a ``cancelling`` a client set is kept
    until the batch reaches a final state.
    """
    key = record_key(batch.batch_id)
    async with backend.aredis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                fresh = _parse(await pipe.get(key), None) or batch.record
                if fresh.status == "cancelling" and changes.get("status") not in FINAL:
                    changes = {name: value for name, value in changes.items() if name != "status"}
                record = fresh.model_copy(update=changes)
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(key, record.model_dump_json(exclude_none=True), ex=_ttl(record, backend.settings.file_ttl_s))
                if also is not None:
                    also(pipe)
                await pipe.execute()
                return Batch(batch.batch_id, record)
            except WatchError:
                continue


async def active_ids(backend: Backend) -> list[str]:
    """Batches not yet final, for the drivers."""
    return [as_text(raw) for raw in await backend.aredis.smembers(ACTIVE_BATCHES_KEY)]


def retire(pipe: AsyncPipeline, batch_id: str) -> None:
    """Queue: the batch is final; its working keys go (the record and its files stay)."""
    pipe.srem(ACTIVE_BATCHES_KEY, batch_id)
    pipe.delete(input_key(batch_id), open_key(batch_id), lines_key(batch_id), output_key(batch_id),
                errors_key(batch_id))


def line_entry(custom_id: str, request_id: str) -> str:
    return json.dumps({"c": custom_id, "r": request_id}, separators=(",", ":"))


def read_entries(raw: Iterable[object]) -> list[tuple[str, str] | None]:
    """(custom_id, request id) of each line-map entry read back."""
    found: list[tuple[str, str] | None] = []
    for item in raw:
        try:
            entry = json.loads(as_text(item)) if item is not None else None
            found.append((str(entry["c"]), str(entry["r"])) if isinstance(entry, dict) else None)
        except (ValueError, KeyError):
            found.append(None)
    return found
