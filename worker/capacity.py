"""What live workers can take on, published for the gateway's wait estimate (``gateway.eta``).

Each worker keeps one field of its model's capacity hash current on its heartbeat: its in-flight slots, its
recent per-job service time (an exponentially weighted mean of queue-exit-to-result seconds, 0 before its
first job) and when the entry lapses. A worker that dies simply lapses; readers ignore lapsed entries.
This module owns the key.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline

from cache.codec import as_text
from worker.constants import CAPACITY_PREFIX, COLD_START_PREFIX


@dataclass(frozen=True)
class Capacity:
    """The live workers together: slots, and the mean service time of those that measured one."""

    workers: int
    slots: int
    service_s: float | None


class ServiceTime:
    """Exponentially weighted mean of per-job service times (recent jobs count most)."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.mean: float | None = None

    def observe(self, seconds: float) -> None:
        self.mean = seconds if self.mean is None else self.mean + self.weight * (seconds - self.mean)


def _key(model: str) -> str:
    return CAPACITY_PREFIX + model


def cold_start_key(model: str) -> str:
    """Where a model's last measured cold start is kept."""
    return COLD_START_PREFIX + model


def publish(redis: Redis, model: str, name: str, slots: int, service_s: float | None, ttl_s: float) -> None:
    """Blocking: (re)announce this worker's capacity for ``model`` for the next ``ttl_s`` seconds."""
    lapses = time.time() + ttl_s
    redis.hset(_key(model), name, f"{slots}|{service_s or 0:.6f}|{lapses:.3f}")


def record_cold_start(redis: Redis, model: str, seconds: float) -> None:
    """Blocking: this worker of ``model`` took ``seconds`` from process start to ready."""
    redis.set(cold_start_key(model), f"{seconds:.3f}")


def withdraw(redis: Redis, model: str, name: str) -> None:
    """Blocking: this worker takes no more work."""
    redis.hdel(_key(model), name)


def parse(entries: Mapping[Any, Any], now: float) -> Capacity:
    """The live part of the capacity hash."""
    workers = slots = 0
    services: list[float] = []
    for raw in entries.values():
        try:
            slot_text, service_text, lapses_text = as_text(raw).split("|")
            entry_slots, service, lapses = int(slot_text), float(service_text), float(lapses_text)
        except ValueError:
            continue  # a newer writer's format: skip it rather than guess
        if lapses < now:
            continue
        workers += 1
        slots += entry_slots
        if service > 0:
            services.append(service)
    return Capacity(workers=workers, slots=slots, service_s=sum(services) / len(services) if services else None)


def parse_cold_start(raw: object) -> float | None:
    try:
        return float(as_text(raw)) if raw is not None else None
    except ValueError:
        return None


def queue_reads(pipe: Pipeline | AsyncPipeline, model: str) -> None:
    """Queue the reads that ``from_replies`` turns into (``model``'s live capacity, its last cold start)."""
    pipe.hgetall(_key(model))
    pipe.get(cold_start_key(model))


def from_replies(entries: Mapping[Any, Any], cold_start: object) -> tuple[Capacity, float | None]:
    """What ``queue_reads`` read: the live workers' capacity now, and the last measured cold start."""
    return parse(entries, time.time()), parse_cold_start(cold_start)


def forget_lapsed(redis: Redis, model: str) -> int:
    """Blocking: drop entries of ``model``'s workers that stopped announcing (the janitor calls it)."""
    now = time.time()
    entries = redis.hgetall(_key(model))
    lapsed = [name for name, raw in entries.items() if parse({name: raw}, now).workers == 0]
    if lapsed:
        redis.hdel(_key(model), *[as_text(name) for name in lapsed])
    return len(lapsed)
