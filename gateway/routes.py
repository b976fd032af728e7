"""The HTTP API: submit, poll (and long-poll), stream, cancel, health, readiness and metrics."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gateway import eta, metrics, webhooks
from gateway.backend import Backend
from gateway.deps import BackendDep, TenantDep
from gateway.errors import BadRequestError, UnavailableError
from gateway.intake import read_submission
from gateway.results import View, cancel, final_body, final_body_json, view, wait_for_end
from gateway.streams import open_stream
from gateway.submit import Accepted, Answered, Replayed, admit, idempotency_of, submit
from worker.contract import JobState

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
                    "deadline_s": {"type": "number", "exclusiveMinimum": 0},
                    "task": {"type": "string", "enum": ["vqa", "ocr", "gui"]}}}},
            "application/json": {"schema": {
                "type": "object",
                "properties": {
                    "messages": {"type": "array", "description": (
                        "The conversation (OpenAI's shape): {role: system|user|assistant, content: text or "
                        "[{type: text, text}, {type: image_url, image_url: {url: data:... or "
                        "vlq://media/<id>}}]}. The last turn is the user's.")},
                    "task": {"type": "string", "enum": ["vqa", "ocr", "gui"]},
                    "response_format": {"type": "object", "description": (
                        "{type: text} | {type: json_object} | {type: json_schema, json_schema: {name, schema}}")},
                    "images": {"type": "array", "items": {"type": "string"},
                               "description": "Older shape, with prompt: base64 data URLs"},
                    "prompt": {"type": "string"}, "temperature": {"type": "number"}, "top_p": {"type": "number"},
                    "max_tokens": {"type": "integer"}, "seed": {"type": "integer"},
                    "cache": {"type": "string", "enum": ["exact", "near", "off"]},
                    "deadline_s": {"type": "number"}}}},
        },
    }
}


@router.post("/api/infer", status_code=202, openapi_extra=_INFER_BODY,
             responses={200: {"description": "Answered from cache"}, 202: {"description": "Queued"}})
async def infer(request: Request, backend: BackendDep, tenant: TenantDep,
                idempotency_key: Annotated[str | None, Header()] = None) -> Response:
    """Submit a question about one or more images.

    Answers 202 with a ``request_id`` to poll (``X-Cache: MISS``, or ``COALESCED`` when an identical
    request is already queued or running), or 200 with the result when the answer is cached
    (``X-Cache: HIT-L1`` or ``HIT-L2``). ``cache=near`` also accepts answers for near-identical images.
    A retried POST with the same ``Idempotency-Key`` returns the request the first one created.
    """
    idem_key = idempotency_of(idempotency_key, tenant)
    await admit(backend, tenant)
    submission = await read_submission(request, backend.settings)
    outcome = await submit(backend, submission, tenant, idem_key)
    if isinstance(outcome, Replayed):
        current = await view(backend, outcome.request_id, tenant)
        return JSONResponse(current.body(), status_code=200 if current.is_final else 202,
                            headers={"X-Cache": outcome.x_cache})
    request.state.log.update({"request": outcome.request_id, "x_cache": outcome.x_cache,
                              "images": [d[:16] for d in outcome.digests], **submission.log_fields()})
    headers = {"X-Cache": outcome.x_cache}
    if isinstance(outcome, Answered):
        if outcome.near_match:
            headers["X-Cache-Match"] = "near"
        raw = final_body_json(outcome.request_id, outcome.raw, outcome.x_cache)
        if raw is not None:
            return Response(raw, status_code=200, headers=headers, media_type="application/json")
        return JSONResponse(final_body(outcome.request_id, outcome.result, outcome.x_cache), status_code=200,
                            headers=headers)
    return await _accepted(backend, outcome, headers, submission.params.deadline_s)


async def _accepted(backend: Backend, outcome: Accepted, headers: dict[str, str],
                    deadline_s: float | None) -> JSONResponse:
    url = f"/api/result?request_id={outcome.request_id}"
    # A new job's position is exact as of its enqueue (a worker may have taken it since); an attached
    # request gets its job's position now.
    standing = outcome.standing or await eta.for_job(backend, outcome.job_id, outcome.model)
    body: dict[str, Any] = {"request_id": outcome.request_id, "status": JobState.QUEUED.value, **standing.body(),
                            "result_url": url, "stream_url": f"/api/stream?request_id={outcome.request_id}",
                            "cached": False, "x_cache": outcome.x_cache}
    if standing.warming and deadline_s and standing.cold_start_s and deadline_s < standing.cold_start_s:
        # Accepted all the same (a worker may be starting already); the client can cancel now.
        body["warning"] = (f"no worker is up and one takes about {standing.cold_start_s:g} s to start: "
                           f"the deadline of {deadline_s:g} s will likely pass first")
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
    return await _with_webhook(backend, current)


@router.delete("/api/result", responses={404: {"description": "Unknown request id"}})
async def cancel_result(request: Request, backend: BackendDep, tenant: TenantDep, request_id: str) -> JSONResponse:
    """Cancel a request: a queued job is dequeued, a running one aborted in the engine (once no other
    identical request shares it). A request that already ended is returned as it is."""
    _check_request_id(request_id)
    request.state.log["request"] = request_id
    return await _with_webhook(backend, await cancel(backend, request_id, tenant))


def _check_request_id(request_id: str) -> None:
    if not _REQUEST_ID.fullmatch(request_id):
        raise BadRequestError("invalid_request_id", "request_id is 16-64 characters of [A-Za-z0-9_-]",
                              "request_id")


def _view_response(current: View, extra: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({**current.body(), **(extra or {})}, status_code=200 if current.is_final else 202)


async def _with_webhook(backend: Backend, current: View) -> JSONResponse:
    """The view, with its webhook's delivery state when the request asked for one. Not part of ``View.body``:
    that body is what the webhook itself delivers. Read only when the record does not say there is none."""
    if current.has_webhook is False:
        return _view_response(current)
    state = await webhooks.state_of(backend.aredis, current.request_id)
    return _view_response(current, {"webhook": webhooks.state_body(state)} if state is not None else None)


@router.get("/api/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "The request's events: queued, running, delta..., then one of "
                                            "done, failed, canceled, expired"},
                       404: {"description": "Unknown request id"}})
async def stream(request: Request, backend: BackendDep, tenant: TenantDep, request_id: str,
                 last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Follow a request as Server-Sent Events.

    Replays the job's events from the start, then follows them, and ends after the terminal event (whose
    data is the body ``GET /api/result`` answers with). ``Last-Event-ID: n`` resumes exactly after event n.
    Events without an id are live updates (a fresh queue position) that need no resuming; a comment line
    keeps the connection open every 15 s.
    """
    _check_request_id(request_id)
    request.state.log["request"] = request_id
    after = _last_event_id(last_event_id)
    frames = await open_stream(backend, request_id, tenant, after)
    return StreamingResponse(frames, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _last_event_id(header: str | None) -> int:
    if header is None or header == "":
        return 0
    if not header.isdigit() or len(header) > 12:
        raise BadRequestError("invalid_last_event_id", "Last-Event-ID is the number of an event of this stream",
                              "Last-Event-ID")
    return int(header)


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
