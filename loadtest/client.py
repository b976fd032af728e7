"""Benchmark-side vlq client: submit a pre-built ``POST /api/infer``, then long-poll ``GET /api/result``.

Same protocol as the locust personas, on the raw client of ``loadtest.rawhttp`` so that the measuring side
stays cheap.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from loadtest.images import Upload, multipart
from loadtest.rawhttp import Connection, HttpError, build_request


class RequestFailedError(RuntimeError):
    """The gateway answered with an error, or the job did not end ``done``."""


@dataclass(frozen=True)
class Outcome:
    """How one submitted request went."""

    latency_s: float
    x_cache: str
    polls: int


def auth_headers() -> dict[str, str]:
    """``Authorization: Bearer $VLQ_API_KEY`` when that variable is set."""
    key = os.environ.get("VLQ_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def infer_request(host: str, images: list[Upload], prompt: str, **fields: str) -> bytes:
    """The bytes of a multipart ``POST /api/infer``."""
    body, content_type = multipart({"prompt": prompt, **fields}, images)
    return build_request("POST", host, "/api/infer", body, content_type, auth_headers())


async def submit_and_wait(conn: Connection, raw_post: bytes, wait_s: float = 30.0,
                          timeout_s: float = 600.0) -> Outcome:
    """Submit, then long-poll until the request ends; raises ``RequestFailedError`` unless it ended ``done``."""
    started = time.perf_counter()
    response = await conn.send(raw_post)
    x_cache = response.headers.get("x-cache", "")
    polls = 0
    if response.status == 202:
        request_id = response.json()["request_id"]
        path = f"/api/result?request_id={request_id}&wait={wait_s:g}"
        while response.status == 202:
            if time.perf_counter() - started > timeout_s:
                raise RequestFailedError(f"request {request_id} still pending after {timeout_s:.0f} s")
            response = await conn.get(path, auth_headers())
            polls += 1
    if response.status != 200:
        raise RequestFailedError(f"HTTP {response.status}: {response.body[:200]!r}")
    status = response.json().get("status")
    if status != "done":
        raise RequestFailedError(f"request ended {status}: {response.body[:200]!r}")
    return Outcome(latency_s=time.perf_counter() - started, x_cache=x_cache, polls=polls)


__all__ = ["HttpError", "Outcome", "RequestFailedError", "auth_headers", "infer_request", "submit_and_wait"]
