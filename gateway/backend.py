"""The connections and shared objects one gateway process holds, made in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq.queue import Queue

from cache.l2 import L2Cache
from gateway.config import GatewaySettings
from gateway.images import ImageLimits
from gateway.limits import WorkerPresence
from gateway.waiter import ResultWaiter
from worker.rqjobs import open_queue


@dataclass
class Backend:
    """What routes need: settings, both Redis clients, the RQ queue, the L2 cache and the result waiter."""

    settings: GatewaySettings
    aredis: AsyncRedis
    redis: Redis
    queue: Queue
    l2: L2Cache
    waiter: ResultWaiter
    presence: WorkerPresence

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels,
                           max_aspect_ratio=self.settings.max_aspect_ratio)


def connect(settings: GatewaySettings) -> Backend:
    """Clients with short timeouts, so an unreachable Redis is a quick 503 and never a hang."""
    timeout = settings.redis_timeout_s
    # One immediate retry on a fresh connection: a pooled connection that died with a Redis restart is
    # replaced transparently, while a Redis that is really down still fails fast (connection refused).
    aredis = AsyncRedis.from_url(settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                 retry=AsyncRetry(NoBackoff(), 1))
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout,
                           retry=Retry(NoBackoff(), 1))
    return Backend(settings=settings, aredis=aredis, redis=redis, queue=open_queue(redis),
                   l2=L2Cache(settings.l2_path, settings.l2_ttl_s, settings.l2_max_bytes),
                   waiter=ResultWaiter(settings.redis_url), presence=WorkerPresence())
