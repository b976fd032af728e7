"""Admission control: per-tenant rate limit, and whether any worker is alive to take new work.

The in-flight quota is enforced inside the enqueue transaction (``gateway.submit``), where it is exact.
"""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis as AsyncRedis

from cache.codec import as_text
from gateway.errors import TooManyRequestsError, UnavailableError
from worker.constants import RATE_PREFIX
from worker.contract import Priority
from worker.rqjobs import queue_names

_WINDOW_S = 60


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
    """Whether any worker of a model's pool is registered and heart-beating, looked up at most once a second
    per model."""

    def __init__(self) -> None:
        # model -> (when looked up, alive then)
        self._seen: dict[str, tuple[float, bool]] = {}

    async def require(self, redis: AsyncRedis, model: str) -> None:
        checked_at, alive = self._seen.get(model, (0.0, True))
        if time.monotonic() - checked_at > 1.0:
            alive = await _any_worker_alive(redis, model)
            self._seen[model] = (time.monotonic(), alive)
        if not alive:
            raise UnavailableError("no_worker", f"no worker of {model!r} is running; retry later", None,
                                   {"Retry-After": "10"})


async def _any_worker_alive(redis: AsyncRedis, model: str) -> bool:
    # RQ keeps a set of worker keys per queue; a key whose heartbeat lapsed has expired.
    for member in await redis.smembers(f"rq:workers:{queue_names(model)[Priority.INTERACTIVE]}"):
        if await redis.exists(as_text(member)):
            return True
    return False
