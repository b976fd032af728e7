"""OpenAI's Files API (``/v1/files``): upload a JSONL file for a batch, list, read and delete files.

An upload is checked while it streams in, never after the fact: its bytes against ``file_max_bytes`` as
each piece arrives (413 before the rest is read), and its lines, every few hundred KiB, against
``file_max_lines`` and for being UTF-8 JSON objects (400 ``invalid_jsonl`` naming the line). Lines are
parsed in a worker thread, so a large file never holds the event loop. Records and bytes are kept by
``gateway.files``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from gateway import files
from gateway.config import GatewaySettings
from gateway.deps import BackendDep, TenantDep
from gateway.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaError
from gateway.intake import StrictMultiPartParser

router = APIRouter()

UPLOAD_PATH = "/v1/files"
# Room for the multipart framing (boundaries, part headers, the purpose field) around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024
# Lines are checked once this much of the file is unchecked: few thread hops, and an early refusal.
_CHECK_EVERY = 256 * 1024
_MAX_FILENAME = 255
_PURPOSES = ("batch",)  # what clients may upload; batch_output and batch_error are written by batches

_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "A JSONL file: UTF-8, one JSON object per line."},
                   "purpose": {"type": "string", "enum": list(_PURPOSES)}}}}}}}


def body_limits(settings: GatewaySettings) -> dict[str, int]:
    """The body cap of each path here whose body may exceed ``max_body_bytes`` (for ``BodyLimit``)."""
    return {UPLOAD_PATH: settings.file_max_bytes + _MULTIPART_OVERHEAD}


@router.post(UPLOAD_PATH, openapi_extra=_UPLOAD_BODY,
             responses={400: {"description": "Not JSONL, empty, a bad purpose or too many files"},
                        413: {"description": "Too many bytes or lines"}})
async def create_file(request: Request, backend: BackendDep, tenant: TenantDep) -> JSONResponse:
    """Upload a JSONL file (multipart parts ``file`` and ``purpose``, which must be ``batch``).

    Each non-empty line must be a JSON object (a batch request). Answers OpenAI's file object; the ``id`` is
    what ``POST /v1/batches`` takes as ``input_file_id``. The file expires at ``expires_at``.
    """
    settings = backend.settings
    upload = JsonlUpload(settings.file_max_bytes, settings.file_max_lines)
    purpose, filename = await _read_upload(request, upload)
    item = await files.create(backend, tenant, purpose, filename, bytes(upload.data), upload.lines)
    request.state.log.update({"file": item.file_id[:12], "file_bytes": item.record.bytes,
                              "file_lines": item.record.lines})
    return JSONResponse(item.body())


@router.get("/v1/files")
async def list_files(backend: BackendDep, tenant: TenantDep, purpose: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
                     after: str | None = None) -> JSONResponse:
    """The tenant's files, newest first, of one ``purpose`` if given; page on with ``after`` (a file id)."""
    found = await files.list_files(backend, tenant, purpose, limit + 1, after)
    page = [item.body() for item in found[:limit]]
    return JSONResponse({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                         "last_id": page[-1]["id"] if page else None, "has_more": len(found) > limit})


@router.get("/v1/files/{file_id}", responses={404: {"description": "Unknown file id"}})
async def get_file(backend: BackendDep, tenant: TenantDep, file_id: str) -> JSONResponse:
    """A file's object (404 for unknown, expired, deleted or another tenant's ids)."""
    item = await files.get(backend, tenant, file_id)
    return JSONResponse(item.body())


@router.get("/v1/files/{file_id}/content", response_class=Response,
            responses={200: {"content": {"application/jsonl": {}}}, 404: {"description": "Unknown file id"}})
async def get_file_content(backend: BackendDep, tenant: TenantDep, file_id: str) -> Response:
    """A file's bytes, as uploaded or as a batch wrote them (JSONL)."""
    data = await files.content(backend, tenant, file_id)
    return Response(data, media_type="application/jsonl")


@router.delete("/v1/files/{file_id}", responses={404: {"description": "Unknown file id"}})
async def delete_file(backend: BackendDep, tenant: TenantDep, file_id: str) -> JSONResponse:
    """Delete a file and its bytes; the id is unknown afterwards."""
    await files.delete(backend, tenant, file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


class JsonlUpload:
    """A JSONL file as it streams in: its bytes so far, and how many of its lines passed the checks."""

    def __init__(self, max_bytes: int, max_lines: int) -> None:
        self.data = bytearray()
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        self.lines = 0  # non-empty lines checked
        self._line = 0  # lines checked, blank ones too (error messages count these)
        self._checked = 0  # bytes checked: whole lines only
        self._scanned = 0  # bytes searched for a newline, so a long line is not searched again and again

    def add(self, piece: bytes) -> None:
        """Take the next piece of the file; 413 as soon as the file is over its cap."""
        if len(self.data) + len(piece) > self.max_bytes:
            raise PayloadTooLargeError("file_too_large", f"the file is larger than {self.max_bytes} bytes", "file")
        self.data += piece

    async def check(self, final: bool = False) -> None:
        """Check the lines that arrived whole since the last check (all of the rest when ``final``)."""
        if final:
            end = len(self.data)
        elif len(self.data) - self._checked < _CHECK_EVERY:
            return
        else:
            newline = self.data.rfind(b"\n", self._scanned)
            self._scanned = len(self.data)
            end = newline + 1
        if end <= self._checked:
            return
        segment = self.data[self._checked:end]
        seen, lines = await run_in_threadpool(check_lines, segment, self._line + 1, self.lines, self.max_lines)
        self._checked, self._line, self.lines = end, self._line + seen, self.lines + lines


def check_lines(segment: bytearray, first_line: int, lines_before: int, max_lines: int) -> tuple[int, int]:
    """How many lines (all, non-empty) ``segment`` holds: whole JSONL lines, the first numbered ``first_line``.

    400 ``invalid_jsonl`` for the first that is not UTF-8 or not a JSON object; 413 ``too_many_lines`` when
    the non-empty lines of the file so far pass ``max_lines``.
    """
    # A newline byte is never inside a UTF-8 sequence, so a segment of whole lines decodes on its own.
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + segment.count(b"\n", 0, exc.start)
        raise BadRequestError("invalid_jsonl", f"line {line} is not valid UTF-8", "file") from exc
    rows = text.split("\n")
    if text.endswith("\n"):
        rows.pop()
    lines = 0
    for number, row in enumerate(rows, start=first_line):
        if row.strip(" \t\r"):
            lines += 1
            if lines_before + lines > max_lines:
                raise PayloadTooLargeError("too_many_lines", f"the file has more than {max_lines} lines", "file")
            _check_object(row, number)
    return len(rows), lines


def _check_object(row: str, number: int) -> None:
    # ValueError covers bad syntax and over-long integers; RecursionError, deep nesting.
    try:
        value = json.loads(row)
    except (ValueError, RecursionError) as exc:
        raise BadRequestError("invalid_jsonl", f"line {number} is not valid JSON", "file") from exc
    if not isinstance(value, dict):
        raise BadRequestError("invalid_jsonl", f"line {number} is not a JSON object", "file")


class _UploadParser(StrictMultiPartParser):
    # The file part goes to a JsonlUpload, not a temporary file, and the upload is checked between the
    # pieces of the body the parser reads.
    def __init__(self, request: Request, upload: JsonlUpload) -> None:
        self.upload = upload
        # Two fields, so that a second one is refused by name below rather than as "too many fields".
        super().__init__(request.headers, self._checked(request.stream()), max_files=1, max_fields=2,
                         max_part_size=1024)

    async def _checked(self, stream: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        async for piece in stream:
            await self.upload.check()
            yield piece

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        part = self._current_part
        if part.file is not None and part.field_name != "file":
            raise BadRequestError("unexpected_field", f"unexpected file part {part.field_name!r}", part.field_name)
        if part.file is None and part.field_name == "file":
            raise BadRequestError("missing_file", "the 'file' part must be a file (give it a filename)", "file")
        if part.file is None and (part.field_name != "purpose" or self._current_fields > 1):
            raise BadRequestError("unexpected_field", f"unexpected or repeated field {part.field_name!r}",
                                  part.field_name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is None:
            super().on_part_data(data, start, end)
        else:
            self.upload.add(data[start:end])


async def _read_upload(request: Request, upload: JsonlUpload) -> tuple[str, str]:
    """The upload's purpose and filename, its file read into ``upload`` and checked."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaError("unsupported_content_type",
                                    "send multipart/form-data with parts 'file' and 'purpose'", None)
    try:
        form = await _UploadParser(request, upload).parse()
    except MultiPartException as exc:
        raise BadRequestError("malformed_multipart", exc.message, None) from exc
    try:
        parts = dict(form.multi_items())
        file, purpose = parts.get("file"), parts.get("purpose")
        if not isinstance(file, UploadFile):
            raise BadRequestError("missing_file", "send the JSONL file in a part named 'file'", "file")
        chosen = _purpose(purpose)
        filename = file.filename or ""
        if len(filename) > _MAX_FILENAME:
            raise BadRequestError("invalid_filename", f"the filename is longer than {_MAX_FILENAME} characters",
                                  "file")
        await upload.check(final=True)
        if upload.lines == 0:
            raise BadRequestError("empty_file", "the file has no lines", "file")
        return chosen, filename
    finally:
        await form.close()


def _purpose(purpose: object) -> str:
    if purpose is None:
        raise BadRequestError("missing_purpose", "a 'purpose' part is required ('batch')", "purpose")
    if not isinstance(purpose, str) or purpose not in _PURPOSES:
        raise BadRequestError("invalid_purpose", f"purpose must be one of: {', '.join(_PURPOSES)}", "purpose")
    return purpose
