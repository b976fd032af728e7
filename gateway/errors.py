"""The gateway's errors and the one envelope every error response uses.

Exceptions::

    ApiError                      (status, type, code, message, param)
    ├── BadRequestError           400: malformed request, missing part, bad id
    ├── UnauthorizedError         401: missing or wrong API key
    ├── NotFoundError             404: unknown request id (or another tenant's)
    ├── GoneError                 410: the result existed and expired
    ├── RequestTimeoutError       408: the body arrived too slowly
    ├── PayloadTooLargeError      413: body, image or pixel count over its cap
    ├── UnsupportedMediaError     415: not a JPEG, PNG or WebP
    ├── UnprocessableError        422: readable but unacceptable (corrupt, animated, out of range)
    ├── TooManyRequestsError      429: tenant rate limit or in-flight quota
    └── UnavailableError          503: Redis down, backlog full, no worker alive

Every error response is ``{"error": {"message", "type", "param", "code", "request_id"}}``. A 500 never
carries the exception's text or a traceback: it is logged with the request id and answered generically.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import metrics

log = logging.getLogger("vlq.gateway")


class ApiError(Exception):
    """An error the client is told about, with its HTTP status."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


class BadRequestError(ApiError):
    status = 400


class UnauthorizedError(ApiError):
    status = 401
    type = "authentication_error"


class NotFoundError(ApiError):
    status = 404
    type = "not_found_error"


class RequestTimeoutError(ApiError):
    status = 408


class GoneError(ApiError):
    status = 410
    type = "not_found_error"


class PayloadTooLargeError(ApiError):
    status = 413


class UnsupportedMediaError(ApiError):
    status = 415


class UnprocessableError(ApiError):
    status = 422


class TooManyRequestsError(ApiError):
    status = 429
    type = "rate_limit_error"


class UnavailableError(ApiError):
    status = 503
    type = "service_unavailable_error"


def envelope(status: int, type_: str, code: str, message: str, param: str | None,
             request_id: str | None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error response shape."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code,
                      "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    metrics.REFUSED.labels(reason=exc.code).inc()
    return envelope(exc.status, exc.type, exc.code, exc.message, exc.param, _request_id(request), exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "header")]
    message = str(first.get("msg", "invalid request"))
    metrics.REFUSED.labels(reason="invalid_parameter").inc()
    return envelope(422, "invalid_request_error", "invalid_parameter", message,
                    ".".join(location) or None, _request_id(request))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    return envelope(exc.status_code, "invalid_request_error", code, message, None, _request_id(request),
                    dict(exc.headers or {}))


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", type(exc).__name__, extra={"request_id": _request_id(request)})
    return envelope(503, "service_unavailable_error", "backend_unavailable",
                    "the queue backend is unreachable; retry shortly", None, _request_id(request),
                    {"Retry-After": "2"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc, extra={"request_id": _request_id(request)})
    return envelope(500, "internal_error", "internal_error", "internal error; it has been logged",
                    None, _request_id(request))


def install(app: FastAPI) -> None:
    """Route every error through the envelope."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
