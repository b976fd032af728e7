"""Throughput and latency as concurrency grows (1, 4, 16, 64 in flight), instant test engine.

The cost curve of vlq itself: through the gateway (POST + long-poll) and through the queue alone (RQ enqueue
+ end event), each at every level, with the CPU each server process spent per request. Distinct small
images, so neither cache nor coalescing helps. The tiny vLLM model's curve is part of ``bench_engine``.
"""

from __future__ import annotations

import argparse
import asyncio

from loadtest.bench_overhead import IMAGE_SIZE, SERVERS, queue_only, via_gateway
from loadtest.images import noise_png
from loadtest.measure import Check, RunResult, fmt, table
from loadtest.rqclient import QueueClient
from loadtest.stack import LocalStack

LEVELS = ((1, 200), (4, 400), (16, 800), (64, 1280))  # (in flight, requests)


async def _measure(stack: LocalStack, levels: tuple[tuple[int, int], ...]) -> list[tuple[str, RunResult]]:
    client = QueueClient(stack.redis_url, stack.model)
    await client.start(noise_png(0, IMAGE_SIZE), IMAGE_SIZE)
    results: list[tuple[str, RunResult]] = []
    try:
        await via_gateway(stack, 50, 4, seed=30_000_000)  # warm-up
        for level, (concurrency, count) in enumerate(levels):
            results.append(("gateway", await via_gateway(stack, count, concurrency, seed=40_000_000 + level * 10_000)))
            results.append(("queue only", await queue_only(client, stack, count, concurrency)))
    finally:
        await client.close()
    return results


def _report(results: list[tuple[str, RunResult]]) -> None:
    print("\n## Cost curve, instant test engine: throughput and latency by requests in flight\n")
    headers = ["path", "in flight", "requests", "req/s", "p50 ms", "p99 ms", "CPU ms/req gateway",
               "CPU ms/req redis", "CPU ms/req worker", "errors"]
    rows = []
    for path, run in sorted(results, key=lambda item: (item[0], item[1].concurrency)):
        cpu = [fmt(run.group_cpu_ms(group)) if group in run.cpu else "-" for group in SERVERS]
        rows.append([path, str(run.concurrency), str(len(run.latencies)), fmt(run.rate), fmt(run.pct(50)),
                     fmt(run.pct(99)), *cpu, str(len(run.errors))])
    print(table(headers, rows))


def run(levels: tuple[tuple[int, int], ...] = LEVELS) -> list[Check]:
    """Start the instant-engine stack, walk the levels, stop it. No goal: the table is the result."""
    with LocalStack(engine="instant") as stack:
        stack.start()
        _report(asyncio.run(_measure(stack, levels)))
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts")
    scale = parser.parse_args().scale
    run(tuple((concurrency, max(concurrency, int(count * scale))) for concurrency, count in LEVELS))


if __name__ == "__main__":
    main()
