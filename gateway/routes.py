"""The HTTP API: submit, poll (and long-poll), health, readiness and metrics."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from gateway import metrics
from gateway.deps import BackendDep, TenantDep
from gateway.errors import BadRequestError, UnavailableError
from gateway.intake import read_submission
from gateway.limits import check_rate
from gateway.results import View, cancel, view, wait_for_end
from gateway.submit import Accepted, Answered, Replayed, idempotency_key, submit
from worker.contract import JobResult, JobState

router = APIRouter()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image", "prompt"],
                "properties": {
                    "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                              "description": "One or more JPEG, PNG or WebP images."},
                    "prompt": {"type": "string"}, "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "max_tokens": {"type": "integer", "minimum": 1}, "seed": {"type": "integer", "minimum": 0},
                    "cache": {"type": "string", "enum": ["exact", "near", "off"]},
                    "deadline_s": {"type": "number", "exclusiveMinimum": 0}}}},
            "application/json": {"schema": {
                "type": "object", "required": ["images", "prompt"],
                "properties": {"images": {"type": "array", "items": {"type": "string"},
                                          "description": "base64 data URLs: data:image/png;base64,..."},
                               "prompt": {"type": "string"}}}},
        },
    }
}


@router.post("/api/infer", status_code=202, openapi_extra=_INFER_BODY,
             responses={200: {"description": "Answered from cache"}, 202: {"description": "Queued"}})
async def infer(request: Request, backend: BackendDep, tenant: TenantDep,
                idempotency_key: Annotated[str | None, Header()] = None) -> JSONResponse:
    """Submit a question about one or more images.

    Answers 202 with a ``request_id`` to poll (``X-Cache: MISS``, or ``COALESCED`` when an identical
    request is already queued or running), or 200 with the result when the answer is cached
    (``X-Cache: HIT-L1`` or ``HIT-L2``). ``cache=near`` also accepts answers for near-identical images.
    A retried POST with the same ``Idempotency-Key`` returns the request the first one created.
    """
    idem_key = _idempotency(idempotency_key, tenant)
    await check_rate(backend.aredis, tenant, backend.settings.rate_limit_per_minute)
    if backend.settings.require_live_worker:
        await backend.presence.require(backend.aredis)
    submission = await read_submission(request, backend.settings)
    outcome = await submit(backend, submission, tenant, idem_key)
    if isinstance(outcome, Replayed):
        replay = _view_response(await view(backend, outcome.request_id, tenant))
        replay.headers["X-Cache"] = outcome.x_cache
        return replay
    request.state.log.update({"request": outcome.request_id, "x_cache": outcome.x_cache,
                              "images": [d[:16] for d in outcome.digests],
                              "image_bytes": [len(image) for image in submission.images],
                              "prompt_chars": len(submission.params.prompt)})
    headers = {"X-Cache": outcome.x_cache}
    if isinstance(outcome, Answered):
        if outcome.near_match:
            headers["X-Cache-Match"] = "near"
        body = _final_body(outcome.request_id, outcome.result, cached=True)
        return JSONResponse(body, status_code=200, headers=headers)
    return _accepted(outcome, headers)


def _idempotency(header: str | None, tenant: str) -> str | None:
    if header is None:
        return None
    if not 1 <= len(header) <= 255 or not header.isascii() or not header.isprintable():
        raise BadRequestError("invalid_idempotency_key", "Idempotency-Key is 1-255 printable ASCII characters",
                              "Idempotency-Key")
    return idempotency_key(tenant, header)


def _accepted(outcome: Accepted, headers: dict[str, str]) -> JSONResponse:
    url = f"/api/result?request_id={outcome.request_id}"
    body = {"request_id": outcome.request_id, "status": JobState.QUEUED.value, "result_url": url,
            "cached": False}
    return JSONResponse(body, status_code=202, headers={**headers, "Location": url})


@router.get("/api/result", responses={202: {"description": "Still queued or running"},
                                      404: {"description": "Unknown request id"},
                                      410: {"description": "The result expired"}})
async def get_result(request: Request, backend: BackendDep, tenant: TenantDep, request_id: str,
                     wait: Annotated[float, Query(ge=0, le=3600)] = 0.0) -> JSONResponse:
    """Where a request stands: 202 while ``queued``/``running``, 200 once it ended.

    ``wait=S`` holds the call until the request ends or S seconds pass (capped by the server), so a
    client needs no tight polling loop.
    """
    _check_request_id(request_id)
    request.state.log["request"] = request_id
    seconds = min(wait, backend.settings.max_wait_s)
    current = await (wait_for_end(backend, request_id, tenant, seconds) if seconds
                     else view(backend, request_id, tenant))
    return _view_response(current)


@router.delete("/api/result", responses={404: {"description": "Unknown request id"}})
async def cancel_result(request: Request, backend: BackendDep, tenant: TenantDep, request_id: str) -> JSONResponse:
    """Cancel a request: a queued job is dequeued, a running one aborted in the engine (once no other
    identical request shares it). A request that already ended is returned as it is."""
    _check_request_id(request_id)
    request.state.log["request"] = request_id
    return _view_response(await cancel(backend, request_id, tenant))


def _check_request_id(request_id: str) -> None:
    if not _REQUEST_ID.fullmatch(request_id):
        raise BadRequestError("invalid_request_id", "request_id is 16-64 characters of [A-Za-z0-9_-]",
                              "request_id")


def _view_response(current: View) -> JSONResponse:
    if current.result is not None and current.state.is_final:
        body = _final_body(current.request_id, current.result, cached=(current.x_cache or "MISS") != "MISS")
        return JSONResponse(body, status_code=200)
    body = {"request_id": current.request_id, "status": current.state.value, "position": current.position}
    return JSONResponse(body, status_code=202)


def _final_body(request_id: str, result: JobResult, cached: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": request_id, "status": result.state.value, "cached": cached,
                            "model": result.model, "timings": result.timings.model_dump()}
    if result.result is not None:
        body["result"] = result.result.model_dump()
    if result.error is not None:
        body["error"] = {"code": result.error.code.value, "message": result.error.message}
    return body


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis unreachable"}})
async def readyz(backend: BackendDep) -> dict[str, str]:
    """Readiness: Redis answers."""
    try:
        await backend.aredis.ping()
    except Exception as exc:
        raise UnavailableError("backend_unavailable", "Redis is unreachable", None) from exc
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    """Prometheus exposition."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
