"""Pure-ASGI middleware: request ids, access log and metrics; body size and body read-time limits."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics
from gateway.errors import PayloadTooLargeError, RequestTimeoutError, envelope

access_log = logging.getLogger("vlq.access")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Observe:
    """Gives each request an id (X-Request-ID), counts and times it, and logs one JSON line for it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["log"] = {}
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _record(scope, request_id, status, time.perf_counter() - started)


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _CLIENT_ID.fullmatch(text) else None
    return None


def _route(scope: Scope) -> str:
    route = scope.get("route")
    # Unmatched paths share one label, so scanners cannot blow up the metric's cardinality.
    return str(getattr(route, "path", "unmatched"))


def _record(scope: Scope, request_id: str, status: int, seconds: float) -> None:
    route, method = _route(scope), scope["method"]
    metrics.REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    metrics.LATENCY.labels(route=route, method=method).observe(seconds)
    if route in ("/healthz", "/readyz", "/metrics"):
        return
    line: dict[str, Any] = {"event": "request", "request_id": request_id, "method": method, "route": route,
                            "status": status, "duration_ms": round(seconds * 1000, 2)}
    line.update(scope["state"].get("log", {}))
    access_log.info(json.dumps(line, separators=(",", ":")))


class BodyLimit:
    """Refuses bodies over their cap (declared or streamed) and bodies whose reads stall.

    The cap is ``max_bytes``, or ``path_caps[path]`` for the few paths that take larger bodies (file uploads).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float, deadline_s: float,
                 path_caps: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.deadline_s = deadline_s
        self.path_caps = dict(path_caps or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.path_caps.get(scope["path"], self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            request_id = scope.get("state", {}).get("request_id")
            response = envelope(413, "invalid_request_error", "body_too_large",
                                f"the request body is larger than {cap} bytes", None, request_id,
                                {"Connection": "close"})
            metrics.REFUSED.labels(reason="body_too_large").inc()
            await response(scope, receive, send)
            return
        await self.app(scope, self._limited(receive, cap), send)

    def _limited(self, receive: Receive, cap: int) -> Receive:
        seen = 0
        deadline = time.monotonic() + self.deadline_s

        async def limited_receive() -> Message:
            nonlocal seen
            # Each read may stall at most read_timeout_s, and all reads together end by the deadline.
            timeout = min(self.read_timeout_s, max(deadline - time.monotonic(), 0.0))
            # asyncio.timeout, not wait_for: on 3.11 wait_for wraps every read in a new task.
            try:
                async with asyncio.timeout(timeout):
                    message = await receive()
            except TimeoutError as exc:
                raise RequestTimeoutError("body_timeout", "the request body arrived too slowly", None,
                                          {"Connection": "close"}) from exc
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise PayloadTooLargeError("body_too_large",
                                               f"the request body is larger than {cap} bytes", None,
                                               {"Connection": "close"})
            return message

        return limited_receive


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
