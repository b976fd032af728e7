"""Admission control: per-tenant rate limit, and whether any worker is alive to take new work.

The in-flight quota is enforced inside the enqueue transaction (``gateway.submit``), where it is exact.
"""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis as AsyncRedis

from cache.codec import as_text
from gateway.errors import TooManyRequestsError, UnavailableError
from worker.constants import QUEUE_NAME, RATE_PREFIX

_WINDOW_S = 60
_WORKERS_KEY = f"rq:workers:{QUEUE_NAME}"


async def check_rate(redis: AsyncRedis, tenant: str, per_minute: int) -> None:
    """Fixed one-minute windows per tenant; 429 with Retry-After past the limit."""
    if per_minute <= 0:
        return
    now = time.time()
    window = int(now // _WINDOW_S)
    key = f"{RATE_PREFIX}{tenant}:{window}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, _WINDOW_S * 2)
        count, _ = await pipe.execute()
    if int(count) > per_minute:
        retry_after = max(1, math.ceil((window + 1) * _WINDOW_S - now))
        raise TooManyRequestsError("rate_limited", f"more than {per_minute} requests a minute for this tenant",
                                   None, {"Retry-After": str(retry_after)})


class WorkerPresence:
    """Whether any worker is registered and heart-beating, looked up at most once a second."""

    def __init__(self) -> None:
        self._checked_at = 0.0
        self._alive = True

    async def require(self, redis: AsyncRedis) -> None:
        if time.monotonic() - self._checked_at > 1.0:
            self._alive = await _any_worker_alive(redis)
            self._checked_at = time.monotonic()
        if not self._alive:
            raise UnavailableError("no_worker", "no worker is running; retry later", None, {"Retry-After": "10"})


async def _any_worker_alive(redis: AsyncRedis) -> bool:
    # RQ keeps a set of worker keys per queue; a key whose heartbeat lapsed has expired.
    for member in await redis.smembers(_WORKERS_KEY):
        if await redis.exists(as_text(member)):
            return True
    return False
