"""The media API: upload an image or a video once, then refer to it as ``vlq://media/<id>`` in later turns.

What an upload is, is sniffed from its bytes (never its name or part type): an image goes through
``gateway.images``, a video (MP4, MOV, WebM) through ``gateway.video`` and is kept as sampled frames.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from gateway import media, video
from gateway.config import GatewaySettings
from gateway.deps import BackendDep, TenantDep
from gateway.errors import BadRequestError, PayloadTooLargeError, UnprocessableError, UnsupportedMediaError
from gateway.intake import StrictMultiPartParser

router = APIRouter()

UPLOAD_PATH = "/api/media"
# Room for the multipart framing (boundary, part headers, the fps field) around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024
# Lowest sampling rate a client may ask for (one frame in 100 s); the highest is a setting.
_MIN_FPS = 0.01

_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "A JPEG, PNG or WebP image, or an MP4, MOV or WebM video."},
                   "fps": {"type": "number", "description": "Videos only: frames sampled a second "
                                                            "(default and bounds: the gateway's settings)."}}}}}}}


def body_limits(settings: GatewaySettings) -> dict[str, int]:
    """The body cap of the upload path (for ``BodyLimit``): videos may exceed ``max_body_bytes``."""
    return {UPLOAD_PATH: max(settings.video_max_bytes, settings.max_image_bytes) + _MULTIPART_OVERHEAD}


@router.post(UPLOAD_PATH, status_code=201, openapi_extra=_UPLOAD_BODY,
             responses={201: {"description": "Stored"}, 413: {"description": "Too large"},
                        415: {"description": "Not an accepted image or video type"},
                        422: {"description": "Corrupt, truncated, frameless or too slow to decode"}})
async def upload_media(request: Request, backend: BackendDep, tenant: TenantDep) -> JSONResponse:
    """Upload an image or a video (multipart part ``file``; for a video optionally ``fps``), kept for later turns.

    An image is validated fully once. A video is checked (container, codec, streams, size, duration, frame
    rate and count) and sampled at ``fps`` frames a second; its frames and their times are kept, not the
    file. Answers 201 with the ``media_id`` to use as ``vlq://media/<media_id>``, the item's kind, type,
    size in pixels and bytes, and when it expires (each use refreshes it); a video adds ``duration_s``,
    source ``fps``, ``sample_fps``, the number of ``frames`` kept, ``codec`` and ``container``.
    """
    settings = backend.settings
    data, fps_field = await _read_file(request, max(settings.max_image_bytes, settings.video_max_bytes))
    if video.sniff(data) is None:
        if fps_field is not None:
            raise UnprocessableError("invalid_parameter", "fps applies to videos only", "fps")
        item = await media.upload(backend, tenant, data)
        request.state.log.update({"media": item.media_id[:12], "image_bytes": [len(data)]})
    else:
        if len(data) > settings.video_max_bytes:
            raise PayloadTooLargeError("video_too_large", f"the video is larger than {settings.video_max_bytes} "
                                       "bytes", "file")
        item = await media.upload_video(backend, tenant, data, _fps(fps_field, settings))
        request.state.log.update({"media": item.media_id[:12], "video_bytes": len(data),
                                  "video_frames": len(item.record.frames)})
    return JSONResponse(item.body(), status_code=201)


def _fps(field: str | None, settings: GatewaySettings) -> float:
    if field is None:
        return settings.video_sample_fps
    try:
        fps = round(float(field), 3)
    except ValueError:
        fps = math.nan
    if not _MIN_FPS <= fps <= settings.video_max_sample_fps:
        raise UnprocessableError("invalid_parameter", f"fps must be a number from {_MIN_FPS:g} to "
                                 f"{settings.video_max_sample_fps:g}", "fps")
    return fps


@router.get("/api/media/{media_id}", responses={404: {"description": "Unknown media id"}})
async def get_media(backend: BackendDep, tenant: TenantDep, media_id: str) -> JSONResponse:
    """A media item's metadata (404 for unknown, expired, deleted or another tenant's ids)."""
    item = await media.get(backend, tenant, media_id)
    return JSONResponse(item.body())


@router.delete("/api/media/{media_id}", responses={404: {"description": "Unknown media id"}})
async def delete_media(backend: BackendDep, tenant: TenantDep, media_id: str) -> JSONResponse:
    """Delete a media item; requests naming it afterwards are refused."""
    await media.delete(backend, tenant, media_id)
    return JSONResponse({"media_id": media_id, "deleted": True})


async def _read_file(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The ``file`` part's bytes (at most ``max_bytes`` + 1 read) and the ``fps`` field, if sent."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaError("unsupported_content_type", "send multipart/form-data with a 'file' part", None)
    parser = StrictMultiPartParser(request.headers, request.stream(), max_files=1, max_fields=1,
                                   max_part_size=1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequestError("malformed_multipart", exc.message, None) from exc
    try:
        files = [value for name, value in form.multi_items() if name == "file" and isinstance(value, UploadFile)]
        fields = {name: value for name, value in form.multi_items() if isinstance(value, str)}
        if len(files) != 1 or len(form.multi_items()) != 1 + len(fields) or set(fields) - {"fps"}:
            raise BadRequestError("missing_file", "send exactly one file, in the part named 'file' (and for a "
                                  "video optionally 'fps')", "file")
        return await files[0].read(max_bytes + 1), fields.get("fps")
    finally:
        await form.close()
