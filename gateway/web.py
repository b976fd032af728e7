"""The web page: ``GET /``, its static files under ``/static/`` and ``GET /api/info``, which it reads first.

The page is plain files in ``gateway/static/`` (HTML, CSS, ES modules; vendored libraries under ``vendor/``),
with no build step and nothing from a CDN. Only files with a known type are served, from a list made once
from that folder, so no path a client sends reaches the file system. Every page and static response carries
a strict Content-Security-Policy (no inline script or style, no eval, nothing from another origin).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from gateway import models
from gateway.deps import BackendDep
from gateway.errors import NotFoundError
from worker.presets import Task

router = APIRouter()

STATIC = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate every time (the ETag makes that a 304): a new release is seen at the next reload.
    "Cache-Control": "no-cache",
}
# What may be served, by suffix; anything else in the folder (the re-vendor script, checksums) is not.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@cache
def static_files() -> dict[str, Path]:
    """Servable files by their path under ``/static/``: made once, on first use."""
    files = {}
    for path in sorted(STATIC.rglob("*")):
        relative = path.relative_to(STATIC)
        if path.is_file() and path.suffix in CONTENT_TYPES and not any(p.startswith(".") for p in relative.parts):
            files[relative.as_posix()] = path
    return files


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The web page: upload images, ask, watch the answer stream in, read the log."""
    return _file(STATIC / "index.html")


@router.get("/static/{path:path}", include_in_schema=False)
async def static(path: str) -> FileResponse:
    """One of the page's files (scripts, styles, icons), with the page's security headers."""
    found = static_files().get(path)
    if found is None:
        raise NotFoundError("static_not_found", "no such file", "path")
    return _file(found)


@router.get("/api/info")
async def info(request: Request, backend: BackendDep) -> dict[str, Any]:
    """What a client needs before its first request: the default model and every name a request may use,
    whether an API key is required, the input
    limits (images per request, bytes per image, the largest ``max_tokens``, prompt length) and the tasks.

    Needs no API key, so a page can say that one is needed before it asks for one.
    """
    settings = backend.settings
    return {
        "model": settings.model,
        "models": models.names(settings),
        "auth_required": not request.app.state.keyring.open,
        "limits": {"max_images": settings.max_images, "max_image_bytes": settings.max_image_bytes,
                   "max_tokens_limit": settings.max_tokens_limit, "max_prompt_chars": settings.max_prompt_chars},
        "tasks": [task.value for task in Task],
    }
