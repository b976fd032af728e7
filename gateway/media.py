"""Media uploaded once (``POST /api/media``) and referred to by id (``vlq://media/<id>``) in later turns.

An upload is validated fully once (the same checks as an inline image: magic bytes, size, a full decode,
pixel and aspect caps, no animation), and stored: the bytes under their content digest (shared, so a
repeat costs no second copy) and a record under a fresh random id bound to the tenant. Another tenant's
id is unknown (404), and the reply to an upload is the same whether the bytes were stored before or not,
so nobody learns what someone else uploaded. Using an id refreshes its TTL; deleting the last record that
holds some bytes deletes the bytes.

A video (``kind="video"``) keeps its sampled frames, not the file: each frame's JPEG is stored like an
image (by digest, shared, counted in the same digest -> media ids sets), and the record lists them with
their times. The decode is kept too (``VIDEO_DECODE_PREFIX``, per tenant), so a repeat upload of the same
file at the same ``fps`` costs no second decode while its frames are still stored.

This module owns the media records, the digest -> media ids sets, the stored bytes (``IMAGE_PREFIX``) and
the kept video decodes.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline
from starlette.concurrency import run_in_threadpool

from cache.codec import as_bytes
from cache.keys import image_digest
from gateway.backend import Backend
from gateway.errors import NotFoundError, UnprocessableError
from gateway.images import inspect
from gateway.video import Sampled
from worker.constants import IMAGE_MEDIA_PREFIX, IMAGE_PREFIX, MEDIA_PREFIX, VIDEO_DECODE_PREFIX
from worker.contract import ImageRef, MediaRecord, VideoDecode, VideoFrame
from worker.scripts import Scripts

_MEDIA_ID = re.compile(r"^med_[A-Za-z0-9_-]{22}$")


@dataclass(frozen=True)
class Media:
    """A media item as a client sees it."""

    media_id: str
    record: MediaRecord
    expires_at: float

    def body(self) -> dict[str, object]:
        record = self.record
        body: dict[str, object] = {"media_id": self.media_id, "kind": record.kind, "media_type": record.media_type,
                                   "width": record.width, "height": record.height, "bytes": record.size,
                                   "expires_at": round(self.expires_at, 3)}
        if record.kind == "video":
            body.update({"duration_s": record.duration_s, "fps": record.fps, "sample_fps": record.sample_fps,
                         "frames": len(record.frames), "codec": record.codec, "container": record.container})
        return body

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


async def upload_video(backend: Backend, tenant: str, data: bytes, fps: float) -> Media:
    """Check, sample and store a video (its frames); a new media id for it. A kept decode is reused."""
    digest = await run_in_threadpool(image_digest, data)
    decode_key = _decode_key(backend, tenant, digest, fps)
    decode = await _kept_decode(backend, decode_key)
    jpegs: dict[str, bytes] = {}
    if decode is None:
        sampled = await backend.video_decoder.sample(data, fps)
        decode = _decode_of(sampled)
        jpegs = {frame.digest: frame.jpeg for frame in sampled.frames}
    media_id = "med_" + secrets.token_urlsafe(16)
    record = MediaRecord(tenant=tenant, kind="video", digest=digest, media_type=decode.media_type,
                         width=decode.width, height=decode.height, size=len(data), created_at=time.time(),
                         duration_s=decode.duration_s, fps=decode.fps, sample_fps=decode.sample_fps,
                         codec=decode.codec, container=decode.container, frames=decode.frames)
    ttl = backend.settings.media_ttl_s
    async with backend.aredis.pipeline(transaction=True) as pipe:
        for frame_digest in record.blob_digests:
            if frame_digest in jpegs:
                await backend.ascripts.keep_bytes(keys=[blob_key(frame_digest)], args=[jpegs[frame_digest], ttl],
                                                  client=pipe)
            pipe.sadd(IMAGE_MEDIA_PREFIX + frame_digest, media_id)
            pipe.expire(IMAGE_MEDIA_PREFIX + frame_digest, ttl)
        pipe.set(_record_key(media_id), record.model_dump_json(), ex=ttl)
        pipe.set(decode_key, decode.model_dump_json(), ex=ttl)
        await pipe.execute()
    return Media(media_id=media_id, record=record, expires_at=time.time() + ttl)


def _decode_key(backend: Backend, tenant: str, digest: str, fps: float) -> str:
    scope = "shared" if backend.settings.shared_cache else f"tenant:{tenant}"
    return f"{VIDEO_DECODE_PREFIX}{scope}:{digest}:{fps:g}"


async def _kept_decode(backend: Backend, key: str) -> VideoDecode | None:
    """The kept decode under ``key`` if every frame it names is still stored (their TTLs refreshed)."""
    raw = await backend.aredis.get(key)
    if raw is None:
        return None
    try:
        decode = VideoDecode.model_validate_json(as_bytes(raw))
    except (ValidationError, TypeError):
        return None
    digests = list(dict.fromkeys(frame.digest for frame in decode.frames))
    ttl = backend.settings.media_ttl_s
    async with backend.aredis.pipeline(transaction=False) as pipe:
        for digest in digests:
            touch_bytes(pipe, digest, ttl)
        pipe.exists(*(blob_key(digest) for digest in digests))
        *_, present = await pipe.execute()
    return decode if digests and present == len(digests) else None


def _decode_of(sampled: Sampled) -> VideoDecode:
    frames = [VideoFrame(t=frame.t, digest=frame.digest, size=len(frame.jpeg), width=frame.width,
                         height=frame.height) for frame in sampled.frames]
    return VideoDecode(media_type=sampled.media_type, container=sampled.container, codec=sampled.codec,
                       width=sampled.width, height=sampled.height, fps=sampled.fps, duration_s=sampled.duration_s,
                       sample_fps=sampled.sample_fps, frames=frames)


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
    record = (await get(backend, tenant, media_id)).record
    keys = [_record_key(media_id)]
    for digest in record.blob_digests:
        keys += [blob_key(digest), IMAGE_MEDIA_PREFIX + digest]
    await backend.ascripts.delete_media(keys=keys, args=[media_id])
    if record.kind == "video" and record.sample_fps is not None:
        # Its frames may be gone now; the kept decode names them and is this tenant's: it goes too.
        await backend.aredis.delete(_decode_key(backend, tenant, record.digest, record.sample_fps))


async def resolve(backend: Backend, tenant: str, media_id: str, param: str,
                  kind: Literal["image", "video"] = "image") -> Media:
    """A media item of ``kind`` named in a request: refreshes its TTL (and its bytes'); a 4xx naming ``param``
    if it cannot be used."""
    record = None
    if _MEDIA_ID.fullmatch(media_id):
        record = _parse(await backend.aredis.get(_record_key(media_id)), tenant)
    if record is not None and record.kind != kind:
        raise UnprocessableError("wrong_media_kind", f"that media item is a {record.kind}; a {kind} is expected "
                                 "here", param)
    if record is not None:
        digests = record.blob_digests
        ttl = backend.settings.media_ttl_s
        async with backend.aredis.pipeline(transaction=False) as pipe:
            pipe.expire(_record_key(media_id), ttl)
            for digest in digests:
                touch_bytes(pipe, digest, ttl)
            pipe.exists(*(blob_key(digest) for digest in digests))
            *_, present = await pipe.execute()
        if digests and present == len(digests):
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
