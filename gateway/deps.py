"""FastAPI dependencies: routes reach the lifespan's objects through these."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.auth import resolve_tenant
from gateway.backend import Backend


async def get_backend(request: Request) -> Backend:
    # async: a plain def dependency would cost a thread-pool hop on every request.
    backend: Backend = request.app.state.backend
    return backend


async def get_tenant(request: Request) -> str:
    """The tenant the request's API key belongs to (401 without a valid key, unless auth is off)."""
    tenant = resolve_tenant(request.app.state.keyring, request.headers)
    request.state.log["tenant"] = tenant
    return tenant


BackendDep = Annotated[Backend, Depends(get_backend)]
TenantDep = Annotated[str, Depends(get_tenant)]
