"""Arrival streams of the capacity planner's model (``loadtest.sim``): each submits jobs of one class to one pool.

Poisson at a rate; piecewise-constant stages of Poisson rates (bursts; Locust's stats history becomes
stages); closed-loop users as Locust runs them (ask, wait for the answer, think uniform(lo, hi) seconds); and
jobs at given times (recorded traces from ``loadtest.traces``, or a batch submitted at once).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import simpy

# How a stream hands a job to its pool: the job's class, and an event to fire when it ends (closed loops only).
Submit = Callable[[str, simpy.Event | None], None]


@dataclass(frozen=True)
class Poisson:
    """Poisson arrivals at ``rate`` per second from ``start`` to ``end`` (None: the scenario's duration)."""

    rate: float
    start: float = 0.0
    end: float | None = None
    cls: str = "interactive"
    pool: str = ""


@dataclass(frozen=True)
class Stages:
    """Poisson arrivals whose rate changes in steps: (duration_s, rate) one after another from ``start``."""

    stages: tuple[tuple[float, float], ...]
    start: float = 0.0
    cls: str = "interactive"
    pool: str = ""


@dataclass(frozen=True)
class Users:
    """Closed-loop users (Locust's): each asks, waits for the answer, then thinks uniform(lo, hi) seconds."""

    users: int
    think_s: tuple[float, float]
    ramp_s: float = 0.0
    start: float = 0.0
    end: float | None = None
    cls: str = "interactive"
    pool: str = ""


@dataclass(frozen=True)
class Times:
    """Arrivals at given times (a recorded trace, or a batch of jobs submitted at once)."""

    times: tuple[float, ...]
    cls: str = "interactive"
    pool: str = ""


Arrival = Poisson | Stages | Users | Times


def _poisson(env: simpy.Environment, submit: Callable[[], None], rate: float, start: float, end: float,
             rng: random.Random) -> Generator[simpy.Event, Any, None]:
    at = start
    while rate > 0:
        at += rng.expovariate(rate)
        if at >= end:
            return
        yield env.timeout(at - env.now)
        submit()


def _stages(env: simpy.Environment, submit: Callable[[], None], spec: Stages, end: float,
            rng: random.Random) -> Generator[simpy.Event, Any, None]:
    begin = spec.start
    for duration, rate in spec.stages:
        if begin >= end:
            return
        yield env.process(_poisson(env, submit, rate, max(begin, env.now), min(begin + duration, end), rng))
        yield env.timeout(max(begin + duration - env.now, 0.0))
        begin += duration


def _times(env: simpy.Environment, submit: Callable[[], None], times: tuple[float, ...],
           end: float) -> Generator[simpy.Event, Any, None]:
    for at in sorted(times):
        if at >= end:
            return
        yield env.timeout(max(at - env.now, 0.0))
        submit()


def _user(env: simpy.Environment, submit: Submit, spec: Users, begin: float, end: float,
          rng: random.Random) -> Generator[simpy.Event, Any, None]:
    yield env.timeout(begin)
    # Locust runs the task first and waits after it.
    while env.now < end:
        done = env.event()
        submit(spec.cls, done)
        yield done
        yield env.timeout(rng.uniform(*spec.think_s))


def start(env: simpy.Environment, submit_to: Submit, spec: Arrival, end: float, rng: random.Random) -> None:
    """Start the processes of one arrival stream; ``end`` is when every stream stops."""

    def submit() -> None:
        submit_to(spec.cls, None)

    if isinstance(spec, Poisson):
        env.process(_poisson(env, submit, spec.rate, spec.start, min(spec.end or end, end), rng))
    elif isinstance(spec, Stages):
        env.process(_stages(env, submit, spec, end, rng))
    elif isinstance(spec, Times):
        env.process(_times(env, submit, spec.times, end))
    else:
        stop = min(spec.end or end, end)
        for index in range(spec.users):
            begin = spec.start + spec.ramp_s * index / max(spec.users, 1)
            env.process(_user(env, submit_to, spec, begin, stop, random.Random(rng.random())))
