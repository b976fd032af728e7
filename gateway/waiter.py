"""Long-poll support: one pub/sub subscription per gateway process wakes every waiting request.

Workers publish a job's id on ``EVENTS_CHANNEL`` when it ends. Waiters register before they re-check the
job's state, so an end between the check and the wait is never missed; a lost subscription wakes everyone
(they re-check and, at worst, wait again until their own deadline).

The same subscription hears ``CACHED_CHANNEL``: a cacheable answer (published by the finish script only
when it wrote the result, so L1 and every L2 hold the same answer), which this gateway keeps in its L2,
however (or whether) the answer is delivered to a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from cache.tiers import ExactCache
from worker.constants import CACHED_CHANNEL, EVENTS_CHANNEL

log = logging.getLogger("vlq.gateway")


class ResultWaiter:
    """Maps job ids to the events of the requests waiting for them."""

    def __init__(self, redis_url: str, cache: ExactCache | None = None) -> None:
        self._redis_url = redis_url
        self._cache = cache
        self._remembering: set[asyncio.Task[None]] = set()
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    @asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set when ``job_id`` ends; register it before checking the job's state."""
        event = asyncio.Event()
        self._events[job_id].add(event)
        try:
            yield event
        finally:
            waiting = self._events.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[job_id]

    def _wake(self, job_id: str) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                log.warning("result subscription lost (%s); resubscribing", type(exc).__name__)
                self._wake_all()
                await asyncio.sleep(1.0)

    def _remember(self, data: bytes) -> None:
        if self._cache is None:
            return
        try:
            entry = json.loads(data)
            key, raw, bucket, phashes = str(entry["k"]), str(entry["r"]).encode(), entry.get("b"), entry.get("p")
        except (ValueError, KeyError, TypeError):
            return
        task = asyncio.create_task(self._cache.remember(key, raw, bucket, phashes))
        self._remembering.add(task)
        task.add_done_callback(self._remembered)

    def _remembered(self, task: asyncio.Task[None]) -> None:
        self._remembering.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not keep an answer in L2 (%s)", type(task.exception()).__name__)

    async def _listen(self) -> None:
        # A connection of its own without a read timeout: a quiet channel is not an error.
        client = AsyncRedis.from_url(self._redis_url, socket_connect_timeout=2, health_check_interval=15)
        try:
            async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(EVENTS_CHANNEL, CACHED_CHANNEL)
                self._wake_all()
                async for message in pubsub.listen():
                    data = message.get("data")
                    if not isinstance(data, bytes):
                        continue
                    if message.get("channel") == CACHED_CHANNEL.encode():
                        self._remember(data)
                    else:
                        self._wake(data.decode())
        finally:
            await client.aclose()
