"""L2 cache: a size-bounded SQLite file local to one gateway, with a TTL per entry.

L1 (Redis) is shared by every gateway replica and short-lived; L2 outlives it on local disk. An L2 hit is
promoted back to L1 by the caller. All methods block (sqlite3): call them from a thread pool.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cache.near import within

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    near_bucket TEXT,
    phashes TEXT,
    expires_at REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_bucket ON entries (near_bucket);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used);
"""
# How many candidates of one near-duplicate bucket are compared at most (newest first).
NEAR_SCAN_LIMIT = 256


class L2Cache:
    """SQLite-backed cache; safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: Path, ttl_s: int, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._total = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])

    @property
    def total_bytes(self) -> int:
        return self._total

    def get(self, key: str) -> bytes | None:
        """The live value under ``key``, or None."""
        now = self._clock()
        with self._lock:
            row = self._db.execute("SELECT value, expires_at FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            if row[1] <= now:
                self._delete(key)
                return None
            self._db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (now, key))
            return bytes(row[0])

    def near(self, bucket: str, phashes: list[str], max_distance: int) -> tuple[str, bytes] | None:
        """The newest live entry of ``bucket`` whose images are all within ``max_distance`` bits."""
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value, phashes FROM entries WHERE near_bucket = ? AND expires_at > ? "
                "ORDER BY last_used DESC LIMIT ?", (bucket, now, NEAR_SCAN_LIMIT)).fetchall()
        for key, value, stored in rows:
            if stored and within(json.loads(stored), phashes, max_distance):
                return str(key), bytes(value)
        return None

    def put(self, key: str, value: bytes, near_bucket: str | None = None,
            phashes: list[str] | None = None) -> None:
        """Store ``value`` under ``key`` for the TTL, evicting least-recently-used entries past the bound."""
        if len(value) > self._max_bytes:
            return
        now = self._clock()
        with self._lock:
            self._delete(key)
            self._db.execute(
                "INSERT INTO entries (key, value, size, near_bucket, phashes, expires_at, last_used) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, value, len(value), near_bucket, json.dumps(phashes) if phashes else None,
                 now + self._ttl_s, now))
            self._total += len(value)
            if self._total > self._max_bytes:
                self._evict(now)

    def _delete(self, key: str) -> None:
        row = self._db.execute("DELETE FROM entries WHERE key = ? RETURNING size", (key,)).fetchone()
        if row is not None:
            self._total -= int(row[0])

    def _evict(self, now: float) -> None:
        # Expired entries go first, then the least recently used, down to 90% so eviction is not per put.
        self._db.execute("DELETE FROM entries WHERE expires_at <= ?", (now,))
        target = int(self._max_bytes * 0.9)
        self._total = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])
        excess = self._total - target
        victims: list[str] = []
        for key, size in self._db.execute("SELECT key, size FROM entries ORDER BY last_used"):
            if excess <= 0:
                break
            victims.append(key)
            excess -= int(size)
        for key in victims:
            self._delete(key)

    def close(self) -> None:
        with self._lock:
            self._db.close()
