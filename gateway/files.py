"""Files of the Files API (``/v1/files``): JSONL uploads for batches, and the output files batches write.

Each file has a fresh random id (``file-<token>``) bound to its tenant; another tenant's id, an expired id
and a deleted id all read as unknown (404), so nobody learns what ids exist. A file is three keys written in
one transaction, each with the file's TTL: its record (contract ``FileRecord``), its bytes, and its id in
the tenant's index (a sorted set by creation time, which lists the files and counts them against
``tenant_max_files``). Ids of files that expired stay in the index until an upload or a listing prunes
them; a listing skips any whose record is gone.

This module is the one reader and writer of ``FILE_PREFIX``, ``FILE_DATA_PREFIX`` and
``TENANT_FILES_PREFIX``. Uploads are validated before they get here (``gateway.files_routes``).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from pydantic import ValidationError
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.exceptions import WatchError

from cache.codec import as_bytes
from gateway.backend import Backend
from gateway.errors import BadRequestError, NotFoundError, UnavailableError
from worker.constants import FILE_DATA_PREFIX, FILE_PREFIX, TENANT_FILES_PREFIX
from worker.contract import FileRecord

_FILE_ID = re.compile(r"^file-[A-Za-z0-9_-]{22}$")
# Concurrent uploads of one tenant race on its index; optimistic retries settle it (each round one wins).
_CREATE_ATTEMPTS = 10
# Only what clients upload counts against tenant_max_files: a batch's output must never fail for want of room.
_CAPPED_PURPOSES = frozenset({"batch"})
_LIST_PAGE = 200


@dataclass(frozen=True)
class FileRecordView:
    """A file as a client sees it: its id and record."""

    file_id: str
    record: FileRecord

    def body(self) -> dict[str, object]:
        """OpenAI's file object."""
        record = self.record
        return {"id": self.file_id, "object": "file", "bytes": record.bytes, "created_at": int(record.created_at),
                "expires_at": int(record.expires_at), "filename": record.filename, "purpose": record.purpose,
                "status": "processed"}


def _record_key(file_id: str) -> str:
    return FILE_PREFIX + file_id


def _data_key(file_id: str) -> str:
    return FILE_DATA_PREFIX + file_id


def _index_key(tenant: str) -> str:
    return TENANT_FILES_PREFIX + tenant


def _not_found(param: str = "file_id") -> NotFoundError:
    return NotFoundError("file_not_found", "no such file (unknown, expired or deleted)", param)


async def create(backend: Backend, tenant: str, purpose: str, filename: str, data: bytes,
                 lines: int) -> FileRecordView:
    """Store a file (already validated) for ``tenant``.

    An upload (purpose ``batch``) past ``tenant_max_files`` live files is refused with 400 ``too_many_files``;
    files a batch writes (``batch_output``, ``batch_error``) are always stored, though they count.
    """
    ttl = backend.settings.file_ttl_s
    cap = backend.settings.tenant_max_files if purpose in _CAPPED_PURPOSES else 0
    now = time.time()
    file_id = "file-" + secrets.token_urlsafe(16)
    # Validated from a dict: ``purpose`` is a plain string here and the model checks it is one it knows.
    record = FileRecord.model_validate({"tenant": tenant, "purpose": purpose, "filename": filename,
                                        "bytes": len(data), "lines": lines, "created_at": now,
                                        "expires_at": now + ttl})
    index = _index_key(tenant)
    for _ in range(_CREATE_ATTEMPTS):
        async with backend.aredis.pipeline(transaction=True) as pipe:
            try:
                # WATCH makes the count and the write one decision: a concurrent upload retries instead.
                await pipe.watch(index)
                await _check_room(pipe, cap, index, now - ttl)
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(_record_key(file_id), record.model_dump_json(), ex=ttl)
                pipe.set(_data_key(file_id), data, ex=ttl)
                pipe.zremrangebyscore(index, "-inf", f"({now - ttl}")
                pipe.zadd(index, {file_id: now})
                pipe.expire(index, ttl)
                await pipe.execute()
            except WatchError:
                continue
        return FileRecordView(file_id=file_id, record=record)
    raise UnavailableError("files_busy", "too many concurrent uploads; retry shortly", None, {"Retry-After": "1"})


async def _check_room(pipe: AsyncPipeline, cap: int, index: str, oldest_live: float) -> None:
    if cap == 0:
        return
    # Ids of expired files still in the index are not counted (they are pruned in the same transaction).
    live = await pipe.zcount(index, f"({oldest_live}", "+inf")
    if live >= cap:
        raise BadRequestError("too_many_files", f"at most {cap} files per tenant; delete some first", None)


async def get(backend: Backend, tenant: str, file_id: str) -> FileRecordView:
    """A file's record; 404 ``file_not_found`` if unknown, expired, deleted or another tenant's."""
    record = None
    if _FILE_ID.fullmatch(file_id):
        record = _parse(await backend.aredis.get(_record_key(file_id)), tenant)
    if record is None:
        raise _not_found()
    return FileRecordView(file_id=file_id, record=record)


async def content(backend: Backend, tenant: str, file_id: str) -> bytes:
    """A file's bytes; 404 ``file_not_found`` under the same rule as ``get``."""
    if _FILE_ID.fullmatch(file_id):
        async with backend.aredis.pipeline(transaction=False) as pipe:
            pipe.get(_record_key(file_id))
            pipe.get(_data_key(file_id))
            raw, data = await pipe.execute()
        if _parse(raw, tenant) is not None and data is not None:
            return as_bytes(data)
    raise _not_found()


async def delete(backend: Backend, tenant: str, file_id: str) -> None:
    """Delete a file (record, bytes and index entry); 404 under the same rule as ``get``."""
    await get(backend, tenant, file_id)
    async with backend.aredis.pipeline(transaction=True) as pipe:
        pipe.delete(_record_key(file_id), _data_key(file_id))
        pipe.zrem(_index_key(tenant), file_id)
        await pipe.execute()


async def list_files(backend: Backend, tenant: str, purpose: str | None, limit: int,
                     after: str | None) -> list[FileRecordView]:
    """Up to ``limit`` of the tenant's files, newest first, of ``purpose`` if given, after the file ``after``."""
    index = _index_key(tenant)
    start = 0
    if after is not None:
        rank = await backend.aredis.zrevrank(index, after)
        if not isinstance(rank, int):
            raise _not_found("after")
        start = rank + 1
    found: list[FileRecordView] = []
    while len(found) < limit:
        ids = [as_bytes(raw).decode() for raw in await backend.aredis.zrevrange(index, start, start + _LIST_PAGE - 1)]
        if not ids:
            break
        found.extend(await _page(backend, tenant, ids, purpose))
        start += len(ids)
    return found[:limit]


async def _page(backend: Backend, tenant: str, ids: list[str], purpose: str | None) -> list[FileRecordView]:
    raws = await backend.aredis.mget([_record_key(file_id) for file_id in ids])
    views = []
    for file_id, raw in zip(ids, raws, strict=True):
        record = _parse(raw, tenant)
        if record is not None and (purpose is None or record.purpose == purpose):
            views.append(FileRecordView(file_id=file_id, record=record))
    return views


def _parse(raw: object, tenant: str) -> FileRecord | None:
    if raw is None or raw is False:
        return None
    try:
        record = FileRecord.model_validate_json(as_bytes(raw))
    except (ValidationError, TypeError):
        return None
    if record.tenant != tenant or record.expires_at <= time.time():
        return None
    return record


async def copy_content(backend: Backend, tenant: str, file_id: str, dest_key: str, ttl_s: int) -> bool:
    """Copy a file's bytes to ``dest_key`` inside Redis (COPY: nothing crosses the network), for a batch that
    must outlive a client deleting its input file; False if the file is unknown under ``get``'s rule."""
    await get(backend, tenant, file_id)
    async with backend.aredis.pipeline(transaction=True) as pipe:
        pipe.copy(_data_key(file_id), dest_key, replace=True)
        pipe.expire(dest_key, ttl_s)
        copied, _ = await pipe.execute()
    return bool(copied)
