"""The media API: upload an image once, then refer to it as ``vlq://media/<id>`` in any later turn."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from gateway import media
from gateway.deps import BackendDep, TenantDep
from gateway.errors import BadRequestError, UnsupportedMediaError
from gateway.intake import StrictMultiPartParser

router = APIRouter()

_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "A JPEG, PNG or WebP image."}}}}}}}


@router.post("/api/media", status_code=201, openapi_extra=_UPLOAD_BODY,
             responses={201: {"description": "Stored"}, 413: {"description": "Too large"},
                        415: {"description": "Not an accepted image type"}})
async def upload_media(request: Request, backend: BackendDep, tenant: TenantDep) -> JSONResponse:
    """Upload an image (multipart part ``file``); it is validated fully once and kept for later turns.

    Answers 201 with the ``media_id`` to use as ``vlq://media/<media_id>`` in ``image_url`` parts, and the
    image's kind, type, size in pixels and bytes, and when it expires (each use refreshes it).
    """
    data = await _read_file(request, backend.settings.max_image_bytes)
    item = await media.upload(backend, tenant, data)
    request.state.log.update({"media": item.media_id[:12], "image_bytes": [len(data)]})
    return JSONResponse(item.body(), status_code=201)


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


async def _read_file(request: Request, max_bytes: int) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaError("unsupported_content_type", "send multipart/form-data with a 'file' part", None)
    parser = StrictMultiPartParser(request.headers, request.stream(), max_files=1, max_fields=0,
                                   max_part_size=1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequestError("malformed_multipart", exc.message, None) from exc
    try:
        items = form.multi_items()
        if len(items) != 1 or items[0][0] != "file" or not isinstance(items[0][1], UploadFile):
            raise BadRequestError("missing_file", "send exactly one file, in the part named 'file'", "file")
        return await items[0][1].read(max_bytes + 1)
    finally:
        await form.close()
