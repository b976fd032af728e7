"""OpenAI's Batch API: ``/v1/batches`` over ``gateway.batches`` (records) and ``gateway.batch_driver``.

Each input line (``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``) becomes an
ordinary request at batch priority: cached, coalesced and tenant-bound like any other. The output file
holds one line per answered request, the error file one per failed or refused line, each with its
``custom_id``; ``request_counts`` move as lines end. ``webhook_url`` (vlq's addition) gets the batch
object, signed, when the batch ends.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from gateway import batches, webhooks
from gateway.deps import BackendDep, TenantDep
from gateway.errors import BadRequestError
from gateway.intake import read_json_object

router = APIRouter()

_CREATE_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["input_file_id", "endpoint", "completion_window"],
    "properties": {
        "input_file_id": {"type": "string", "description": "A file uploaded with purpose batch (JSONL)."},
        "endpoint": {"type": "string", "enum": [batches.ENDPOINT]},
        "completion_window": {"type": "string", "enum": list(batches.WINDOW_S)},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "webhook_url": {"type": "string", "description": "vlq: POSTed the batch object, signed, when it ends."}}}}}}}


@router.post("/v1/batches", openapi_extra=_CREATE_BODY,
             responses={400: {"description": "Bad parameter"}, 404: {"description": "Unknown input file"}})
async def create_batch(request: Request, backend: BackendDep, tenant: TenantDep) -> JSONResponse:
    """Start a batch over an uploaded JSONL file; it is ``validating``, then ``in_progress``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise BadRequestError("unsupported_content_type", "send application/json", None)
    body = batches.parse_body(await read_json_object(request))
    if body.webhook_url is not None:
        await webhooks.check_target(backend.settings, body.webhook_url, "webhook_url", tenant)
    batch = await batches.create(backend, tenant, body)
    request.state.log.update({"batch": batch.batch_id})
    return JSONResponse(batch.body())


@router.get("/v1/batches/{batch_id}", responses={404: {"description": "Unknown batch"}})
async def get_batch(backend: BackendDep, tenant: TenantDep, batch_id: str) -> JSONResponse:
    """A batch object: status, request_counts, and the output and error file ids once it ended (and, for a
    batch with ``webhook_url``, vlq's ``webhook`` delivery state)."""
    body = (await batches.get(backend, tenant, batch_id)).body()
    state = await webhooks.state_of(backend.aredis, f"batch:{batch_id}")
    if state is not None:
        body["webhook"] = webhooks.state_body(state)
    return JSONResponse(body)


@router.get("/v1/batches")
async def list_batches(backend: BackendDep, tenant: TenantDep, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                       after: Annotated[str | None, Query(max_length=64)] = None) -> JSONResponse:
    """The tenant's batches, newest first (``after``: the last id of the previous page)."""
    found, more = await batches.list_batches(backend, tenant, limit, after)
    data = [batch.body() for batch in found]
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": more})


@router.post("/v1/batches/{batch_id}/cancel", responses={404: {"description": "Unknown batch"}})
async def cancel_batch(backend: BackendDep, tenant: TenantDep, batch_id: str) -> JSONResponse:
    """Cancel a batch: ``cancelling`` at once, ``cancelled`` when its open lines have stopped; the lines that
    finished before stay in the output file."""
    return JSONResponse((await batches.cancel(backend, tenant, batch_id)).body())
