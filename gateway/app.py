"""The gateway application factory.

``create_app(settings)`` builds the app; connections are made in the lifespan and kept on
``app.state``. This module imports neither vllm nor torch (a test proves it): the gateway image is slim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from gateway import batches_routes, errors, files_routes, media_routes, openai_api, routes, web
from gateway.auth import Keyring
from gateway.backend import connect
from gateway.batch_driver import Driver
from gateway.config import GatewaySettings
from gateway.janitor import Janitor
from gateway.middleware import BodyLimit, Observe
from gateway.webhooks import Dispatcher, load_secrets

log = logging.getLogger("vlq.gateway")
# Seconds one shutdown step may take.
_STOP_S = 5.0


def build_keyring(settings: GatewaySettings) -> Keyring:
    """The tenants' keys; refuses to start with auth on and no key file."""
    if not settings.auth_enabled:
        log.warning("AUTH IS OFF: every request is served as tenant 'public' (VLQ_GATEWAY_AUTH_ENABLED=false)")
        return Keyring(entries=(), open=True)
    if settings.api_keys_file is None:
        raise ValueError("auth is on but VLQ_GATEWAY_API_KEYS_FILE is not set "
                         "(set it, or VLQ_GATEWAY_AUTH_ENABLED=false to run open)")
    return Keyring.load(settings.api_keys_file)


async def _settle(what: str, awaitable: Awaitable[object], timeout_s: float = _STOP_S) -> None:
    """Wait for one shutdown step, at most ``timeout_s``: a step stuck on a dead connection must not hold the
    process past its grace period (or a test's teardown). ``asyncio.wait`` returns at the timeout even if the
    step ignores its cancellation."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        log.warning("shutdown: %s did not stop within %.0f s; left behind", what, timeout_s)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("shutdown: %s failed (%s)", what, type(task.exception()).__name__)


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway app for ``settings``."""
    keyring = build_keyring(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        to_thread.current_default_thread_limiter().total_tokens = settings.threads
        backend = connect(settings)
        app.state.backend = backend
        backend.waiter.start()
        load_secrets(settings)
        dispatcher = Dispatcher(backend)
        dispatcher.start()
        janitor = Janitor(backend.redis, backend.queues, settings.stale_after_s, settings.janitor_interval_s)
        sweeping = asyncio.create_task(janitor.run())
        # Every replica drives batches; a per-batch lock makes one of them advance each batch at a time.
        driving = asyncio.create_task(Driver(backend).run())
        try:
            yield
        finally:
            for task in (sweeping, driving):
                task.cancel()
            await _settle("the janitor and the batch driver", asyncio.gather(sweeping, driving, return_exceptions=True))
            await _settle("the webhook dispatcher", dispatcher.stop())
            await _settle("the result waiter", backend.waiter.stop())
            await _settle("the Redis clients", asyncio.gather(backend.aredis.aclose(), backend.stream_redis.aclose()))
            backend.redis.close()
            backend.l2.close()

    app = FastAPI(title="vlq", summary="Queue-based inference for vision-language models", version="0.1.0",
                  lifespan=lifespan)
    app.state.keyring = keyring
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(media_routes.router)
    app.include_router(files_routes.router)
    app.include_router(batches_routes.router)
    app.include_router(openai_api.router)
    app.include_router(web.router)
    path_caps = files_routes.body_limits(settings) | media_routes.body_limits(settings)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s,
                       deadline_s=settings.body_deadline_s, path_caps=path_caps)
    app.add_middleware(Observe)  # outermost: every response, refusals included, gets an id and a log line
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn (``--factory``): settings from the environment."""
    return create_app(GatewaySettings())
