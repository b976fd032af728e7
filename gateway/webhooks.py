"""Webhooks: a request (or a batch) that names ``webhook_url`` gets its final body POSTed there, signed.

The one owner of ``WEBHOOK_PREFIX`` (request id or ``batch:<id>`` -> ``WebhookState``), ``JOB_HOOKS_PREFIX``
(job id -> request ids that carry a webhook) and the consumption of ``ENDED_STREAM``.

How an end becomes a delivery:
1. at submit, ``check_target`` refuses a URL the policy (``gateway.webhook_targets``) forbids, and
   ``register`` writes the pending state and the job's hook set in the submit transaction;
2. the finish script (``worker/lua/finish.lua``) appends ``job=<id>`` to ``ENDED_STREAM`` in the same atomic
   step as the result, only when the job has a hook set, so an end is never lost, even with every gateway
   down;
3. every gateway's ``Dispatcher`` reads that stream in one consumer group, builds each request's final body
   (what ``GET /api/result`` answers) and enqueues one RQ job on ``WEBHOOK_QUEUE_NAME`` per request, then
   acknowledges the entry; entries a dead gateway left unacknowledged are claimed by another
   (``XAUTOCLAIM``);
4. ``python -m gateway.webhook_worker`` runs ``deliver``: it signs, re-checks every address, connects to
   the address it checked, and lets RQ's own ``Retry`` back off exponentially on a non-2xx answer or a
   network error, up to ``webhook_max_attempts``.

Delivery is at least once, not exactly once: a gateway or worker that dies between sending and recording
may send again. ``X-Vlq-Delivery`` is the same for every attempt and every duplicate of one delivery, so a
receiver dedupes on it. ``X-Vlq-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.

Exceptions::

    DeliveryFailedError     an attempt failed (non-2xx or network error); raised so RQ retries it
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urljoin

from pydantic import TypeAdapter, ValidationError
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline
from redis.exceptions import RedisError, ResponseError
from rq.job import Job, Retry
from rq.queue import Queue
from rq.serializers import JSONSerializer
from starlette.concurrency import run_in_threadpool

from cache.codec import as_text
from gateway import webhook_targets
from gateway.backend import Backend
from gateway.config import GatewaySettings
from gateway.errors import ApiError, BadRequestError, UnprocessableError
from gateway.webhook_targets import Policy, Resolver, TargetRefusedError
from worker.constants import ENDED_STREAM, JOB_HOOKS_PREFIX, WEBHOOK_FUNC, WEBHOOK_PREFIX, WEBHOOK_QUEUE_NAME
from worker.contract import WebhookState

log = logging.getLogger("vlq.gateway.webhooks")

# The consumer group every gateway replica reads ENDED_STREAM in.
GROUP = "vlq-webhooks"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SECRETS = TypeAdapter(dict[str, str])
# Stream entries as redis-py parses them: (id, fields); fields is None for an entry trimmed while pending.
_Entries = list[tuple[bytes, dict[bytes, bytes] | None]]


class DeliveryFailedError(Exception):
    """One delivery attempt failed; RQ's Retry schedules the next one while attempts are left."""


# --- secrets and signatures -------------------------------------------------------------------------------

@cache
def _secrets_file(path: Path) -> Mapping[str, str]:
    secrets = _SECRETS.validate_json(path.read_bytes())
    return {tenant: secret for tenant, secret in secrets.items() if secret}


def load_secrets(settings: GatewaySettings) -> None:
    """Read the secrets file now (at start-up), so a bad file stops the service instead of a request."""
    if settings.webhook_secrets_file is not None:
        _secrets_file(settings.webhook_secrets_file)


def secret_for(settings: GatewaySettings, tenant: str) -> str | None:
    """The tenant's webhook secret: its entry in the secrets file, else the shared secret, else None."""
    if settings.webhook_secrets_file is not None:
        found = _secrets_file(settings.webhook_secrets_file).get(tenant)
        if found:
            return found
    return settings.webhook_secret or None


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Vlq-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def delivery_id(key: str) -> str:
    """``X-Vlq-Delivery`` (and the RQ job id): the same for every attempt and duplicate of one delivery."""
    return "dlv_" + hashlib.sha256(key.encode()).hexdigest()[:32]


# --- submit time ------------------------------------------------------------------------------------------

def policy_of(settings: GatewaySettings) -> Policy:
    return Policy.of(settings.webhook_allow_http, settings.webhook_allow_cidrs)


def require_secret(settings: GatewaySettings, tenant: str, param: str = "webhook_url") -> None:
    """400 ``webhook_not_configured`` if the tenant has no secret to sign with."""
    if secret_for(settings, tenant) is None:
        raise BadRequestError("webhook_not_configured", "webhooks are not configured for this tenant", param)


async def aresolve(host: str, port: int) -> list[str]:
    """The host's addresses through the event loop's resolver (a thread, never blocking the loop)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return webhook_targets.addresses_of(infos)


async def check_target(settings: GatewaySettings, url: str, param: str = "webhook_url",
                       tenant: str | None = None) -> None:
    """Refuse a webhook URL the policy forbids (400 malformed, 422 a forbidden address), and with ``tenant``
    also a tenant without a secret (400 ``webhook_not_configured``)."""
    if tenant is not None:
        require_secret(settings, tenant, param)
    policy = policy_of(settings)
    try:
        target = webhook_targets.parse(url, policy)
    except TargetRefusedError as exc:
        raise BadRequestError("webhook_url_refused", f"webhook_url refused: {exc}", param) from None
    try:
        addresses = await asyncio.wait_for(aresolve(target.host, target.port), settings.webhook_timeout_s)
    except TimeoutError:
        addresses = []
    try:
        webhook_targets.check_addresses(target, addresses, policy)
    except TargetRefusedError as exc:
        raise UnprocessableError("webhook_url_refused", f"webhook_url refused: {exc}", param) from None


def _key(key: str) -> str:
    return WEBHOOK_PREFIX + key


def register(pipe: Pipeline | AsyncPipeline, request_id: str, tenant: str, url: str, job_id: str | None,
             ttl_s: int) -> None:
    """Queue into the submit transaction: the pending state, and the request in its job's hook set."""
    pipe.set(_key(request_id), WebhookState(tenant=tenant, url=url).model_dump_json(), ex=ttl_s)
    if job_id is not None:
        pipe.sadd(JOB_HOOKS_PREFIX + job_id, request_id)
        pipe.expire(JOB_HOOKS_PREFIX + job_id, ttl_s)


def _parse_state(raw: bytes | str | None) -> WebhookState | None:
    if raw is None:
        return None
    try:
        return WebhookState.model_validate_json(raw)
    except ValidationError:
        return None


async def state_of(aredis: AsyncRedis, key: str) -> WebhookState | None:
    """The delivery state of a request id (or ``batch:<id>``); None if it has no webhook."""
    return _parse_state(await aredis.get(_key(key)))


def state_body(state: WebhookState) -> dict[str, Any]:
    """What a result shows of its webhook."""
    return {"state": state.state, "attempts": state.attempts, "last_status": state.last_status}


# --- enqueueing -------------------------------------------------------------------------------------------

def retry_of(settings: GatewaySettings) -> Retry | None:
    """RQ's Retry for one delivery: exponential intervals (base x 4^n), each at most the cap."""
    retries = settings.webhook_max_attempts - 1
    if retries < 1:
        return None
    base, cap = settings.webhook_retry_base_s, settings.webhook_retry_max_s
    return Retry(max=retries, interval=[int(min(cap, base * 4 ** n)) for n in range(retries)])


async def enqueue_delivery(backend: Backend, key: str, tenant: str, url: str, body: dict[str, Any]) -> None:
    """Queue the delivery of ``body`` to ``url`` (writes the pending state if none exists)."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    await run_in_threadpool(_enqueue, backend.redis, backend.settings, key, WebhookState(tenant=tenant, url=url),
                            text)


def _enqueue(redis: Redis, settings: GatewaySettings, key: str, state: WebhookState, text: str) -> None:
    redis.set(_key(key), state.model_dump_json(), nx=True, ex=settings.request_ttl_s)
    job_id = delivery_id(key)
    # Cheap duplicate guard (a re-read stream entry, a cancel and an end): the RQ job of a delivery is kept
    # as long as its state, so a second enqueue is dropped; a race past it only costs a duplicate send.
    if Job.exists(job_id, connection=redis):
        return
    per_attempt = settings.webhook_timeout_s * 2 * (settings.webhook_max_redirects + 1)
    queue = Queue(WEBHOOK_QUEUE_NAME, connection=redis, serializer=JSONSerializer)
    queue.enqueue_call(WEBHOOK_FUNC, kwargs={"key": key, "url": state.url, "tenant": state.tenant, "body": text},
                       timeout=int(per_attempt) + 10, result_ttl=settings.request_ttl_s,
                       failure_ttl=settings.request_ttl_s, ttl=settings.request_ttl_s, job_id=job_id,
                       retry=retry_of(settings))


# --- the dispatcher: ended jobs -> deliveries -------------------------------------------------------------

class Dispatcher:
    """Turns ``ENDED_STREAM`` entries into deliveries; one per gateway process, all in one consumer group."""

    def __init__(self, backend: Backend, consumer: str | None = None, block_ms: int = 2000,
                 claim_idle_ms: int = 60_000, claim_every_s: float = 15.0) -> None:
        self.backend = backend
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.claim_every_s = claim_every_s
        self._next_claim = 0.0
        self._grouped = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                while True:
                    await self.step()
            except (RedisError, OSError) as exc:
                log.warning("webhook dispatcher: Redis unavailable (%s); retrying", type(exc).__name__)
            except Exception:
                log.exception("webhook dispatcher step failed")
            self._grouped = False  # the stream may be gone (NOGROUP): make sure again
            await asyncio.sleep(1.0)

    async def ensure_group(self) -> bool:
        """Join the group once the stream exists. Not before: a gateway writes nothing to Redis just by
        starting. From id 0, so the ends logged before the group existed are delivered too."""
        if self._grouped:
            return True
        if not await self.backend.aredis.exists(ENDED_STREAM):
            return False
        try:
            await self.backend.aredis.xgroup_create(ENDED_STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped = True
        return True

    async def step(self) -> int:
        """One round: reclaim what dead consumers left (every so often), then read new ends. Entries handled."""
        if not await self.ensure_group():
            await asyncio.sleep(self.block_ms / 1000)
            return 0
        handled = 0
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_every_s
            handled += await self.reclaim()
        answer: Any = await self.backend.stream_redis.xreadgroup(GROUP, self.consumer, {ENDED_STREAM: ">"},
                                                                 count=50, block=self.block_ms)
        streams: list[tuple[bytes, _Entries]] = answer or []
        for _stream, entries in streams:
            for entry_id, fields in entries:
                await self._handle(entry_id, fields)
                handled += 1
        return handled

    async def reclaim(self) -> int:
        """Take over entries pending longer than ``claim_idle_ms`` (their consumer died mid-way)."""
        answer: Any = await self.backend.aredis.xautoclaim(ENDED_STREAM, GROUP, self.consumer,
                                                      min_idle_time=self.claim_idle_ms, start_id="0-0", count=50)
        entries: _Entries = answer[1] if answer else []
        for entry_id, fields in entries:
            await self._handle(entry_id, fields)
        return len(entries)

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        job_id = as_text((fields or {}).get(b"job"))
        if job_id:
            hooks = JOB_HOOKS_PREFIX + job_id
            for request_id in sorted(as_text(member) for member in await self.backend.aredis.smembers(hooks)):
                try:
                    await self.deliver_request(request_id)
                except (RedisError, OSError):
                    raise  # the entry stays pending and is retried (reclaimed)
                except Exception:  # one unreadable request must not hold back its job's others forever
                    log.exception("webhook of %s could not be queued", request_id)
            await self.backend.aredis.delete(hooks)
        await self.backend.aredis.xack(ENDED_STREAM, GROUP, entry_id)

    async def deliver_request(self, request_id: str) -> None:
        """Queue the delivery of an ended request's final body, unless it was delivered or failed already."""
        state = await state_of(self.backend.aredis, request_id)
        if state is None or state.state != "pending":
            return
        # Imported here: gateway.results shows webhook states, so it imports this module.
        from gateway import results

        try:
            current = await results.view(self.backend, request_id, state.tenant, with_standing=False)
        except ApiError as exc:  # the request expired before its end could be read
            log.warning("webhook of %s not sent: %s", request_id, exc.code)
            await self.backend.aredis.set(_key(request_id), _ended(state, exc.code).model_dump_json(), keepttl=True)
            return
        if not current.is_final:
            log.warning("webhook of %s: its job ended but the request reads %s", request_id, current.state.value)
            return
        await enqueue_delivery(self.backend, request_id, state.tenant, state.url, current.body())


def _ended(state: WebhookState, error: str) -> WebhookState:
    return state.model_copy(update={"state": "failed", "last_error": error})


# --- delivery (the webhook worker process) ----------------------------------------------------------------

@dataclass
class Delivery:
    """What the webhook worker needs to deliver: settings, Redis, TLS trust and a resolver (tests swap them)."""

    settings: GatewaySettings
    redis: Redis
    context: ssl.SSLContext = field(default_factory=ssl.create_default_context)
    resolve: Resolver = webhook_targets.resolve

    current: ClassVar[Delivery | None] = None

    def install(self) -> Delivery:
        """Make this the one ``deliver`` uses in this process (the webhook worker's entry point calls it)."""
        Delivery.current = self
        return self

    def run(self, key: str, url: str, tenant: str, body: str) -> None:
        """One attempt; raises DeliveryFailedError (RQ retries) unless delivered or refused for good."""
        state = self._state(key, tenant, url)
        if state.state != "pending":
            return  # a duplicate of a delivery that already ended
        secret = secret_for(self.settings, tenant)
        if secret is None:
            self._save(key, _ended(state, "webhook_not_configured"))
            return
        state.attempts += 1
        try:
            status = self._send(url, body.encode(), secret, delivery_id(key))
        except TargetRefusedError as exc:
            log.warning("webhook %s refused: %s", delivery_id(key), exc)
            self._save(key, _ended(state, f"refused: {exc}"))
            return
        except OSError as exc:
            state.last_status, state.last_error = None, f"network error: {type(exc).__name__}"
        else:
            state.last_status, state.last_error = status, None if 200 <= status < 300 else f"HTTP {status}"
            if state.last_error is None:
                state.state = "delivered"
                self._save(key, state)
                return
        self._fail_attempt(key, state)

    def _fail_attempt(self, key: str, state: WebhookState) -> None:
        if state.attempts >= self.settings.webhook_max_attempts:
            state.state = "failed"
        self._save(key, state)
        raise DeliveryFailedError(f"attempt {state.attempts} of {delivery_id(key)}: {state.last_error}")

    def _send(self, url: str, body: bytes, secret: str, delivery: str) -> int:
        policy = policy_of(self.settings)
        headers = {"Content-Type": "application/json", "User-Agent": "vlq-webhooks/1",
                   "X-Vlq-Signature": sign(secret, body, int(time.time())), "X-Vlq-Delivery": delivery}
        for _hop in range(self.settings.webhook_max_redirects + 1):
            target = webhook_targets.parse(url, policy)
            address = webhook_targets.check_addresses(target, self.resolve(target.host, target.port), policy)
            reply = webhook_targets.post(target, address, body, headers, self.settings.webhook_timeout_s,
                                         self.context)
            if reply.status not in _REDIRECTS or not reply.location:
                return reply.status
            url = urljoin(url, reply.location)
        raise TargetRefusedError(f"more than {self.settings.webhook_max_redirects} redirects")

    def _state(self, key: str, tenant: str, url: str) -> WebhookState:
        return _parse_state(self.redis.get(_key(key))) or WebhookState(tenant=tenant, url=url)

    def _save(self, key: str, state: WebhookState) -> None:
        # KEEPTTL: the state lives as long as the request; a missing one (expired) gets the request TTL.
        if not self.redis.set(_key(key), state.model_dump_json(), keepttl=True, xx=True):
            self.redis.set(_key(key), state.model_dump_json(), ex=self.settings.request_ttl_s)


def deliver(key: str, url: str, tenant: str, body: str) -> None:
    """The RQ job function (``WEBHOOK_FUNC``): one delivery attempt of ``body`` (JSON text) to ``url``."""
    if Delivery.current is None:
        raise RuntimeError("gateway.webhooks.deliver runs in the webhook worker (python -m gateway.webhook_worker)")
    Delivery.current.run(key, url, tenant, body)
