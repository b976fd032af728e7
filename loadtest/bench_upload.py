"""Cache-hit ``POST /api/infer`` of a 1080p JPEG, against a bare FastAPI endpoint receiving the same upload.

Both servers are uvicorn processes on loopback (the gateway with Redis and an instant-engine worker behind
it; the bare app from ``loadtest.bare_app``), driven by the same raw keep-alive client with the same
request bytes at the same concurrency. The arms alternate for several rounds and the ratio is of their
medians, because this machine is noisy. Goal: gateway ÷ bare >= 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

from loadtest.client import infer_request, submit_and_wait
from loadtest.images import Upload, photo_jpeg, prompt
from loadtest.measure import (
    RUN_HEADERS,
    Check,
    RunResult,
    checks_table,
    closed_loop,
    measured,
    median,
    paired_ratios,
    run_summary_row,
    table,
)
from loadtest.rawhttp import Connection, Response
from loadtest.stack import LOOPBACK, LocalStack, free_port, wait_http

GOAL = 0.8


class UnexpectedResponseError(RuntimeError):
    """A response that is not what a warm cache hit (or the bare app) answers."""


def _expect_hit(response: Response) -> None:
    if response.status != 200 or response.headers.get("x-cache") != "HIT-L1":
        raise UnexpectedResponseError(f"HTTP {response.status} X-Cache={response.headers.get('x-cache')}")


def _expect_ok(response: Response) -> None:
    if response.status != 200:
        raise UnexpectedResponseError(f"HTTP {response.status}")


@dataclass(frozen=True)
class _Arm:
    """One side of the comparison: where to send, what, and which server processes do the work."""

    port: int
    raw: bytes
    gateway: bool
    pids: dict[str, list[int]]


async def _run_arm(arm: _Arm, concurrency: int, duration_s: float) -> RunResult:
    conns = [Connection(LOOPBACK, arm.port) for _ in range(concurrency)]
    check = _expect_hit if arm.gateway else _expect_ok
    loop = asyncio.get_running_loop()

    async def task(index: int, slot: int) -> float:
        started = loop.time()
        check(await conns[slot].send(arm.raw))
        return loop.time() - started

    try:
        return await measured(arm.pids, closed_loop(task, concurrency, duration_s=duration_s))
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))


async def _measure(stack: LocalStack, bare_port: int, concurrency: int, duration_s: float,
                   rounds: int) -> list[Check]:
    image = [Upload(photo_jpeg(seed=7))]
    text = prompt(250, seed=7)
    gateway_raw = infer_request(f"{LOOPBACK}:{stack.gateway_port}", image, text, max_tokens="16")
    first = Connection(LOOPBACK, stack.gateway_port)
    await submit_and_wait(first, gateway_raw)  # the miss that fills the cache
    await first.close()
    # The gateway arm's server is the gateway plus the Redis it needs; the bare arm's is the bare app.
    arms = {"gateway": _Arm(stack.gateway_port, gateway_raw, True,
                            {"gateway": [stack.pids["gateway"]], "redis": [stack.pids["redis"]]}),
            "bare": _Arm(bare_port, infer_request(f"{LOOPBACK}:{bare_port}", image, text, max_tokens="16"), False,
                         {"bare": [stack.pids["bare"]]})}
    for arm in arms.values():
        await _run_arm(arm, concurrency, 1.0)  # warm-up, not counted
    runs: dict[str, list[RunResult]] = {"gateway": [], "bare": []}
    for round_no in range(rounds):
        for name in ("bare", "gateway") if round_no % 2 == 0 else ("gateway", "bare"):
            runs[name].append(await _run_arm(arms[name], concurrency, duration_s))
    return _report(runs, len(image[0].data), concurrency)


def _report(runs: dict[str, list[RunResult]], image_bytes: int, concurrency: int) -> list[Check]:
    print(f"\n## Cache-hit POST of a 1080p JPEG ({image_bytes / 1024:.0f} KiB) vs a bare FastAPI upload endpoint\n")
    rows = [run_summary_row(f"{arm} round {index + 1}", run)
            for arm, arm_runs in runs.items() for index, run in enumerate(arm_runs)]
    print(table(RUN_HEADERS, rows))
    errors = [error for arm_runs in runs.values() for run in arm_runs for error in run.errors]
    if errors:
        print(f"\n{len(errors)} errors, first: {errors[0]}", file=sys.stderr)
    ratio = median(paired_ratios([run.rate for run in runs["gateway"]], [run.rate for run in runs["bare"]]))
    cpu_ratio = median([run.cpu_ms_per_request for run in runs["bare"]]) / median(
        [run.cpu_ms_per_request for run in runs["gateway"]])
    print(f"\nat {concurrency} in flight: req/s gateway ÷ bare, median of {len(runs['bare'])} paired rounds: "
          f"{ratio:.2f}; server CPU per request, bare ÷ gateway (incl. Redis): {cpu_ratio:.2f}")
    gateway_ms = median([run.group_cpu_ms("gateway") for run in runs["gateway"]])
    redis_ms = median([run.group_cpu_ms("redis") for run in runs["gateway"]])
    print(f"gateway arm CPU per request: {gateway_ms:.2f} ms in the gateway, {redis_ms:.3f} ms in Redis")
    return [Check("cache-hit POST ÷ bare upload (req/s)", ratio, GOAL, higher_is_better=True),
            Check("  same, by server CPU per request", cpu_ratio, GOAL, higher_is_better=True)]


def run(concurrency: int = 16, duration_s: float = 2.0, rounds: int = 6) -> list[Check]:
    """Start the stack and the bare app, measure, stop everything."""
    with LocalStack(engine="instant") as stack:
        stack.start()
        bare_port = free_port()
        bare = stack.spawn("bare", [sys.executable, "-m", "loadtest.bare_app", "--port", str(bare_port)])
        wait_http(f"http://{LOOPBACK}:{bare_port}/healthz", bare, "bare app", 30)
        return asyncio.run(_measure(stack, bare_port, concurrency, duration_s, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per arm and round")
    parser.add_argument("--rounds", type=int, default=6)
    opts = parser.parse_args()
    print("\n" + checks_table(run(opts.concurrency, opts.duration, opts.rounds)))


if __name__ == "__main__":
    main()
