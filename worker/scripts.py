"""vlq's Lua scripts, loaded once from ``worker/lua/*.lua``; each file names its KEYS and ARGV at the top.

Scripts that write a job's event stream get ``_events.lua`` (the stream-id and terminal-event rules)
prepended, and those that store content-addressed bytes ``_blobs.lua``, so those rules are written once. Both
services use these: import-light (redis only).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline
from redis.typing import EncodableT, KeyT

# The shared pieces each script is prepended with: the event-stream rules, the content-addressed bytes.
_PRELUDES = {"append": "_events", "claim": "_events", "finish": "_events", "window_done": "_events",
             "keep_bytes": "_blobs", "enqueue": "_blobs"}


def _text(name: str) -> str:
    return (files("worker") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@cache
def source(name: str) -> str:
    """The text of script ``name`` as Redis runs it."""
    prelude = _PRELUDES.get(name)
    return _text(name) if prelude is None else _text(prelude) + "\n" + _text(name)


class Lua:
    """One script, sent whole with EVAL (Redis caches it compiled by its SHA1).

    Not redis-py's ``Script``: inside a pipeline that one first asks ``SCRIPT EXISTS`` for every script the
    pipeline uses, one more round trip per pipeline (four per request on the hot path). EVAL needs no such
    check, and cannot hit ``NOSCRIPT`` inside a MULTI after Redis restarted with an empty script cache. The
    bodies are a few KiB on loopback or the pod network: far cheaper than a round trip.
    """

    def __init__(self, redis: Redis, source: str) -> None:
        self.redis = redis
        self.source = source

    def __call__(self, keys: Sequence[KeyT] = (), args: Sequence[EncodableT] = (),
                 client: Redis | Pipeline | None = None) -> Any:
        return (client or self.redis).eval(self.source, len(keys), *keys, *args)


class AsyncLua:
    """``Lua`` on the asyncio client (and its pipelines)."""

    def __init__(self, redis: AsyncRedis, source: str) -> None:
        self.redis = redis
        self.source = source

    async def __call__(self, keys: Sequence[KeyT] = (), args: Sequence[EncodableT] = (),
                       client: AsyncRedis | AsyncPipeline | None = None) -> Any:
        return await (client or self.redis).eval(self.source, len(keys), *keys, *args)


class Scripts:
    """The scripts, bound to one blocking client (usable in its pipelines too)."""

    def __init__(self, redis: Redis) -> None:
        self.append = Lua(redis, source("append"))
        self.finish = Lua(redis, source("finish"))
        self.high_water = Lua(redis, source("high_water"))
        self.requeue_popped = Lua(redis, source("requeue_popped"))
        self.keep_bytes = Lua(redis, source("keep_bytes"))
        self.claim = Lua(redis, source("claim"))
        self.heartbeat = Lua(redis, source("heartbeat"))
        self.window_done = Lua(redis, source("window_done"))


class AsyncScripts:
    """The scripts the gateway runs on its asyncio client."""

    def __init__(self, redis: AsyncRedis) -> None:
        self.delete_media = AsyncLua(redis, source("delete_media"))
        self.enqueue = AsyncLua(redis, source("enqueue"))
        self.keep_bytes = AsyncLua(redis, source("keep_bytes"))
        self.release_lock = AsyncLua(redis, source("release_lock"))
        self.serve_hit = AsyncLua(redis, source("serve_hit"))
