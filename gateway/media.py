"""Media uploaded once (``POST /api/media``) and referred to by id (``vlq://media/<id>``) in later turns.

An upload is validated fully once (the same checks as an inline image: magic bytes, size, a full decode,
pixel and aspect caps, no animation), and stored: the bytes under their content digest (shared, so a
repeat costs no second copy) and a record under a fresh random id bound to the tenant. Another tenant's
id is unknown (404), and the reply to an upload is the same whether the bytes were stored before or not,
so nobody learns what someone else uploaded. Using an id refreshes its TTL; deleting the last record that
holds some bytes deletes the bytes. ``kind`` leaves room for video.

This module owns the media records, the digest -> media ids sets and the stored bytes (``IMAGE_PREFIX``).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from pydantic import ValidationError
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline
from starlette.concurrency import run_in_threadpool

from cache.codec import as_bytes
from cache.keys import image_digest
from gateway.backend import Backend
from gateway.errors import NotFoundError, UnprocessableError
from gateway.images import inspect
from worker.constants import IMAGE_MEDIA_PREFIX, IMAGE_PREFIX, MEDIA_PREFIX
from worker.contract import ImageRef, MediaRecord
from worker.scripts import Scripts

_MEDIA_ID = re.compile(r"^med_[A-Za-z0-9_-]{22}$")


@dataclass(frozen=True)
class Media:
    """A media item as a client sees it."""

    media_id: str
    record: MediaRecord
    expires_at: float

    def body(self) -> dict[str, object]:
        return {"media_id": self.media_id, "kind": self.record.kind, "media_type": self.record.media_type,
                "width": self.record.width, "height": self.record.height, "bytes": self.record.size,
                "expires_at": round(self.expires_at, 3)}

    def image_ref(self) -> ImageRef:
        record = self.record
        return ImageRef(digest=record.digest, media_type=record.media_type, size=record.size,
                        width=record.width, height=record.height)


def _record_key(media_id: str) -> str:
    return MEDIA_PREFIX + media_id


def blob_key(digest: str) -> str:
    return IMAGE_PREFIX + digest


def keep_bytes(pipe: Pipeline, scripts: Scripts, digest: str, data: bytes, ttl_s: int) -> None:
    """Queue: store these bytes under their digest (or keep the stored copy) for at least ``ttl_s``."""
    scripts.keep_bytes(keys=[blob_key(digest)], args=[data, ttl_s], client=pipe)


def touch_bytes(pipe: Pipeline | AsyncPipeline, digest: str, ttl_s: int) -> None:
    """Queue: the stored bytes live at least ``ttl_s`` more (they are known to exist)."""
    pipe.expire(blob_key(digest), ttl_s, gt=True)


async def upload(backend: Backend, tenant: str, data: bytes, param: str = "file") -> Media:
    """Validate and store an image; a new media id for it."""
    # The full decode runs in a thread anyway: the digest goes with it, in the same hop.
    info, digest = await run_in_threadpool(lambda: (inspect(data, backend.image_limits, param), image_digest(data)))
    media_id = "med_" + secrets.token_urlsafe(16)
    record = MediaRecord(tenant=tenant, digest=digest, media_type=info.media_type, width=info.width,
                         height=info.height, size=len(data), created_at=time.time())
    ttl = backend.settings.media_ttl_s
    async with backend.aredis.pipeline(transaction=True) as pipe:
        await backend.ascripts.keep_bytes(keys=[blob_key(digest)], args=[data, ttl], client=pipe)
        pipe.set(_record_key(media_id), record.model_dump_json(), ex=ttl)
        pipe.sadd(IMAGE_MEDIA_PREFIX + digest, media_id)
        pipe.expire(IMAGE_MEDIA_PREFIX + digest, ttl)
        await pipe.execute()
    return Media(media_id=media_id, record=record, expires_at=time.time() + ttl)


async def get(backend: Backend, tenant: str, media_id: str) -> Media:
    """A media item's metadata; 404 if unknown, expired, deleted or another tenant's."""
    if _MEDIA_ID.fullmatch(media_id):
        async with backend.aredis.pipeline(transaction=False) as pipe:
            pipe.get(_record_key(media_id))
            pipe.ttl(_record_key(media_id))
            raw, ttl = await pipe.execute()
        record = _parse(raw, tenant)
        if record is not None:
            return Media(media_id=media_id, record=record, expires_at=time.time() + max(int(ttl), 0))
    raise NotFoundError("media_not_found", "no such media", "media_id")


async def delete(backend: Backend, tenant: str, media_id: str) -> None:
    """Delete a media item (and its bytes, unless another media item holds the same bytes)."""
    found = await get(backend, tenant, media_id)
    await backend.ascripts.delete_media(
        keys=[_record_key(media_id), blob_key(found.record.digest), IMAGE_MEDIA_PREFIX + found.record.digest],
        args=[media_id])


async def resolve(backend: Backend, tenant: str, media_id: str, param: str) -> Media:
    """A media item named in a request: refreshes its TTL; a 4xx naming ``param`` if it cannot be used."""
    record = None
    if _MEDIA_ID.fullmatch(media_id):
        record = _parse(await backend.aredis.get(_record_key(media_id)), tenant)
    if record is not None:
        ttl = backend.settings.media_ttl_s
        async with backend.aredis.pipeline(transaction=False) as pipe:
            pipe.expire(_record_key(media_id), ttl)
            touch_bytes(pipe, record.digest, ttl)
            pipe.exists(blob_key(record.digest))
            *_, present = await pipe.execute()
        if present:
            return Media(media_id=media_id, record=record, expires_at=time.time() + ttl)
    raise UnprocessableError("media_not_found", "no such media (unknown, expired or deleted)", param)


def _parse(raw: object, tenant: str) -> MediaRecord | None:
    if raw is None or raw is False:
        return None
    try:
        record = MediaRecord.model_validate_json(as_bytes(raw))
    except (ValidationError, TypeError):
        return None
    return record if record.tenant == tenant else None
