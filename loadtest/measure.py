"""Measuring and reporting helpers shared by the benchmarks: closed-loop runs, percentiles, tables, goals."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

# A task gets (request index, slot index) and returns the request's latency in seconds. A slot is one of
# the ``concurrency`` lanes; each lane keeps its own connection.
Task = Callable[[int, int], Awaitable[float]]


@dataclass
class RunResult:
    """Latencies and wall time of one closed-loop run."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    # CPU seconds each named group of server processes used during the run (see ``measured``).
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU per completed request, all groups together."""
        return self.group_cpu_ms(*self.cpu)

    def group_cpu_ms(self, *groups: str) -> float:
        """CPU milliseconds per completed request of the named groups."""
        if not self.latencies or not self.cpu:
            return math.nan
        return sum(self.cpu[group] for group in groups) / len(self.latencies) * 1000

    @property
    def rate(self) -> float:
        """Completed requests per second of wall time."""
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float) -> float:
        """The ``q``-th percentile latency in milliseconds (nearest rank)."""
        return percentile(self.latencies, q) * 1000


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def closed_loop(task: Task, concurrency: int, count: int | None = None,
                      duration_s: float | None = None) -> RunResult:
    """Run ``task`` from ``concurrency`` lanes until ``count`` requests or ``duration_s`` seconds are done.

    Each lane starts its next request as soon as its last one ended (a closed loop: the in-flight count
    is the concurrency). Failures are recorded, not raised, so one bad request does not end the run.
    """
    if count is None and duration_s is None:
        raise ValueError("give a count or a duration")
    result = RunResult(concurrency=concurrency)
    next_index = 0
    started = time.perf_counter()
    stop_at = started + duration_s if duration_s is not None else math.inf

    async def lane(slot: int) -> None:
        nonlocal next_index
        while (count is None or next_index < count) and time.perf_counter() < stop_at:
            index = next_index
            next_index += 1
            try:
                result.latencies.append(await task(index, slot))
            except Exception as exc:  # recorded and reported; the run goes on
                result.errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(lane(slot) for slot in range(concurrency)))
    result.wall_s = time.perf_counter() - started
    return result


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (Linux ``/proc``).

    On a shared, noisy machine throughput swings with whatever else runs; CPU time per request barely does,
    so the benchmarks report it next to wall-clock rates.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended: its time is no longer counted anywhere we can read
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total / _TICK


def descendants(pid: int) -> list[int]:
    """``pid``'s child processes, recursively (vLLM's engine core and its workers are children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        kids = children.get(pending.pop(), [])
        found.extend(kids)
        pending.extend(kids)
    return found


def cpu_by_group(groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """CPU seconds used so far, per named group of PIDs."""
    return {name: cpu_seconds(pids) for name, pids in groups.items()}


async def measured(groups: Mapping[str, Sequence[int]], run: Awaitable[RunResult]) -> RunResult:
    """Await ``run`` and record the CPU each named group of server processes used meanwhile."""
    before = cpu_by_group(groups)
    result = await run
    after = cpu_by_group(groups)
    result.cpu = {name: after[name] - before[name] for name in groups}
    return result


@dataclass(frozen=True)
class Check:
    """One measured number against its goal."""

    name: str
    value: float
    goal: float
    higher_is_better: bool
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal

    def row(self) -> list[str]:
        sign = ">=" if self.higher_is_better else "<="
        verdict = "met" if self.met else f"MISSED ({self._gap()})"
        return [self.name, f"{fmt(self.value)}{self.unit}", f"{sign} {fmt(self.goal)}{self.unit}", verdict]

    def _gap(self) -> str:
        if not self.goal or math.isnan(self.value):
            return "no value"
        if self.higher_is_better:
            return f"{(1 - self.value / self.goal) * 100:.0f}% short"
        return f"{(self.value / self.goal - 1) * 100:.0f}% over"


def fmt(value: float) -> str:
    """Numbers with about three significant digits."""
    if math.isnan(value):
        return "n/a"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, aligned for reading in a terminal too."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)])


def checks_table(checks: Sequence[Check]) -> str:
    """Goals table: what, measured, goal, verdict."""
    return table(["check", "measured", "goal", "verdict"], [check.row() for check in checks])


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def run_summary_row(label: str, run: RunResult) -> list[str]:
    """label, in flight, requests, req/s, p50 ms, p99 ms, server CPU ms per request, errors."""
    return [label, str(run.concurrency), str(len(run.latencies)), fmt(run.rate), fmt(run.pct(50)),
            fmt(run.pct(99)), fmt(run.cpu_ms_per_request), str(len(run.errors))]


RUN_HEADERS = ["arm", "in flight", "requests", "req/s", "p50 ms", "p99 ms", "server CPU ms/req", "errors"]


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Ratios of runs taken next to each other (round by round), so slow drift in load cancels out.

    A round cut short (one arm missing) is left out.
    """
    return [a / b for a, b in zip(numerators, denominators, strict=False) if b]
