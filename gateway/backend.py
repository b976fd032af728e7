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
from cache.tiers import ExactCache
from gateway.config import GatewaySettings
from gateway.images import ImageLimits
from gateway.limits import WorkerPresence
from gateway.video import Decoder, VideoLimits
from gateway.waiter import ResultWaiter
from worker.constants import CACHE_PREFIX, NEAR_PREFIX
from worker.contract import Priority
from worker.rqjobs import open_queues
from worker.scripts import AsyncScripts, Scripts


@dataclass
class Backend:
    """What routes need: settings, both Redis clients, the RQ queue, the cache tiers, the result waiter and the
    Lua scripts."""

    settings: GatewaySettings
    aredis: AsyncRedis
    # For blocking stream reads: its read timeout outlasts the longest block.
    stream_redis: AsyncRedis
    redis: Redis
    # The inference queues of each served model, by priority (interactive first).
    queues: dict[str, dict[Priority, Queue]]
    l2: L2Cache
    cache: ExactCache
    waiter: ResultWaiter
    presence: WorkerPresence
    scripts: Scripts
    ascripts: AsyncScripts
    # Video decodes: bounded concurrency, each within its time limit.
    video_decoder: Decoder

    def queues_of(self, model: str | None) -> dict[Priority, Queue]:
        """A served model's queues (the default model's for None or a model no longer served)."""
        return self.queues.get(model or self.settings.model) or self.queues[self.settings.model]

    @property
    def all_queues(self) -> list[Queue]:
        """Every inference queue of every served model."""
        return [queue for queues in self.queues.values() for queue in queues.values()]

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels,
                           max_aspect_ratio=self.settings.max_aspect_ratio)


def video_limits(settings: GatewaySettings) -> VideoLimits:
    """The video caps of ``settings``."""
    return VideoLimits(max_bytes=settings.video_max_bytes, max_duration_s=settings.video_max_duration_s,
                       max_pixels=settings.video_max_pixels, max_frames=settings.video_max_frames,
                       max_source_fps=settings.video_max_source_fps,
                       max_sample_frames=settings.video_max_sample_frames,
                       frame_long_edge=settings.video_frame_long_edge,
                       decode_timeout_s=settings.video_decode_timeout_s)


def connect(settings: GatewaySettings) -> Backend:
    """Clients with short timeouts, so an unreachable Redis is a quick 503 and never a hang."""
    timeout = settings.redis_timeout_s
    # One immediate retry on a fresh connection: a pooled connection that died with a Redis restart is
    # replaced transparently, while a Redis that is really down still fails fast (connection refused).
    aredis = AsyncRedis.from_url(settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                 retry=AsyncRetry(NoBackoff(), 1))
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout,
                           retry=Retry(NoBackoff(), 1))
    stream_redis = AsyncRedis.from_url(settings.redis_url, socket_connect_timeout=timeout,
                                       socket_timeout=settings.stream_keepalive_s + timeout + 5,
                                       retry=AsyncRetry(NoBackoff(), 1))
    l2 = L2Cache(settings.l2_path, settings.l2_ttl_s, settings.l2_max_bytes)
    cache = ExactCache(aredis, l2, l1_prefix=CACHE_PREFIX, near_prefix=NEAR_PREFIX, l1_ttl_s=settings.l1_ttl_s)
    return Backend(settings=settings, aredis=aredis, stream_redis=stream_redis, redis=redis,
                   queues={model: open_queues(redis, model) for model in settings.served_models}, l2=l2, cache=cache,
                   waiter=ResultWaiter(settings.redis_url, cache), presence=WorkerPresence(),
                   scripts=Scripts(redis), ascripts=AsyncScripts(aredis),
                   video_decoder=Decoder(video_limits(settings), settings.video_decode_concurrency))
