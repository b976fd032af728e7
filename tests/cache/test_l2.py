"""The SQLite L2 cache: TTL, size bound with LRU eviction, near-duplicate lookup, persistence."""

from __future__ import annotations

from pathlib import Path

from cache.l2 import L2Cache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_get_put_and_ttl(tmp_path: Path) -> None:
    clock = Clock()
    cache = L2Cache(tmp_path / "c.db", ttl_s=10, max_bytes=1 << 20, clock=clock)
    cache.put("k", b"v")
    assert cache.get("k") == b"v"
    clock.now += 11
    assert cache.get("k") is None
    assert cache.total_bytes == 0


def test_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    clock = Clock()
    cache = L2Cache(tmp_path / "c.db", ttl_s=100, max_bytes=1000, clock=clock)
    for n in range(5):
        clock.now += 1
        cache.put(f"k{n}", bytes(200))
    clock.now += 1
    assert cache.get("k0") is not None  # k0 is now the most recently used
    clock.now += 1
    cache.put("k5", bytes(200))
    assert cache.total_bytes <= 1000
    assert cache.get("k0") is not None
    assert cache.get("k1") is None


def test_near_lookup_within_bucket_only(tmp_path: Path) -> None:
    cache = L2Cache(tmp_path / "c.db", ttl_s=100, max_bytes=1 << 20)
    cache.put("a", b"A", near_bucket="b1", phashes=["ff00ff00ff00ff00"])
    assert cache.near("b1", ["ff00ff00ff00ff01"], 2) == ("a", b"A")
    assert cache.near("b1", ["00ff00ff00ff00ff"], 2) is None
    assert cache.near("b2", ["ff00ff00ff00ff00"], 2) is None


def test_entries_survive_a_restart(tmp_path: Path) -> None:
    L2Cache(tmp_path / "c.db", ttl_s=100, max_bytes=1 << 20).put("k", b"v")
    reopened = L2Cache(tmp_path / "c.db", ttl_s=100, max_bytes=1 << 20)
    assert reopened.get("k") == b"v"
    assert reopened.total_bytes == 1
