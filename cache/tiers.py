"""The exact cache: one owner for looking answers up and remembering them, across both tiers.

- L1: Redis, shared by every gateway replica, short TTL. The worker's finish script fills it in the same
  atomic step that writes the result (that is what makes coalescing exact), under ``l1_key(key)``.
- L2: SQLite on the gateway's disk (``cache.l2``), longer TTL; a hit is promoted to L1. Every gateway fills
  its L2 when a job ends (``remember``), however the answer is delivered (polled, streamed, webhook or not
  at all).
- Near mode (opt-in): pHashes in a Redis sorted set per bucket, then L2's own index.

Fed plain values (key strings, bytes, pHashes) and given its key prefixes by the caller, so ``cache/``
imports nothing of the rest of vlq.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis
from starlette.concurrency import run_in_threadpool

from cache.codec import as_bytes, as_text
from cache.l2 import L2Cache
from cache.near import within

# How many entries of one near bucket are compared at most (newest first).
NEAR_SCAN = 256


@dataclass(frozen=True)
class Hit:
    """A cached answer (the result document's bytes) and the tier it came from."""

    raw: bytes
    tier: str
    near: bool = False


class ExactCache:
    """Lookup and remember over L1 (Redis) and L2 (SQLite)."""

    def __init__(self, aredis: AsyncRedis, l2: L2Cache, l1_prefix: str, near_prefix: str, l1_ttl_s: int) -> None:
        self._redis = aredis
        self._l2 = l2
        self._l1_prefix = l1_prefix
        self._near_prefix = near_prefix
        self._l1_ttl_s = l1_ttl_s

    def l1_key(self, key: str) -> str:
        """The Redis key of an L1 entry."""
        return self._l1_prefix + key

    def near_key(self, bucket: str) -> str:
        """The Redis key of a near-duplicate bucket."""
        return self._near_prefix + bucket

    async def lookup(self, key: str, read_l1: Callable[[str], Awaitable[bytes | None]] | None = None) -> Hit | None:
        """L1, then L2 (promoted to L1 on a hit). ``read_l1`` reads the L1 entry instead of a plain GET (the
        gateway's reads it and records the request in the same round trip)."""
        raw = await (read_l1 or self._redis.get)(self.l1_key(key))
        if raw is not None:
            return Hit(as_bytes(raw), "HIT-L1")
        found = await run_in_threadpool(self._l2.get, key)
        if found is None:
            return None
        await self._redis.set(self.l1_key(key), found, ex=self._l1_ttl_s)
        return Hit(found, "HIT-L2")

    async def lookup_near(self, bucket: str, phashes: Sequence[str], max_distance: int) -> Hit | None:
        """An answer for images within ``max_distance`` pHash bits of these, in the same bucket."""
        members = await self._redis.zrevrange(self.near_key(bucket), 0, NEAR_SCAN - 1)
        for member in members:
            entry = json.loads(as_text(member))
            if within(entry["p"], phashes, max_distance):
                raw = await self._redis.get(self.l1_key(entry["k"]))
                if raw is not None:
                    return Hit(as_bytes(raw), "HIT-L1", near=True)
        found = await run_in_threadpool(self._l2.near, bucket, list(phashes), max_distance)
        return None if found is None else Hit(found[1], "HIT-L2", near=True)

    async def remember(self, key: str, raw: bytes, bucket: str | None, phashes: Sequence[str] | None) -> None:
        """Keep an answer in L2 (when its job ended; L1 got it in the same step)."""
        await run_in_threadpool(self._l2.put, key, raw, bucket, list(phashes) if phashes else None)


def near_member(key: str, phashes: Sequence[str]) -> str:
    """The near-index entry for an answer under ``key`` (the worker's finish script adds it)."""
    return json.dumps({"k": key, "p": list(phashes)}, separators=(",", ":"))
