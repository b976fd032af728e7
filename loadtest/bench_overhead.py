"""Submit -> done overhead with the instant test engine, through the gateway and through the queue alone.

The worker (``python -m worker`` with ``VLQ_WORKER_ENGINE=instant``) answers without a model, so what is
measured is vlq's own cost: HTTP, validation, Redis, RQ bookkeeping, the worker loop and the long-poll wake-up.

- latency, one request at a time: gateway (POST, then long-poll GET) and queue-only (enqueue a job on RQ as
  the gateway would, wait for its end event, read the result): their difference is the HTTP side's cost;
- jobs/s per worker: a burst of queue-only jobs enqueued at once, timed until the last one ended.

Each request uses a distinct small image (no cache hit, no coalescing). Goals (issue 13): gateway p50 <= 3 ms,
>= 1500 jobs/s per worker.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from itertools import pairwise

from loadtest.client import infer_request, submit_and_wait
from loadtest.images import Upload, noise_png
from loadtest.measure import Check, RunResult, checks_table, closed_loop, fmt, measured, table
from loadtest.rawhttp import Connection
from loadtest.rqclient import QueueClient, command_counts
from loadtest.stack import LOOPBACK, LocalStack

P50_GOAL_MS = 3.0
JOBS_GOAL = 1500.0
IMAGE_SIZE = (32, 32)
SERVERS = ("gateway", "redis", "worker")  # the stack's processes whose CPU is reported


def server_groups(stack: LocalStack) -> dict[str, list[int]]:
    """The stack's processes by name, for CPU accounting."""
    return {name: [stack.pids[name]] for name in SERVERS}


def gateway_requests(stack: LocalStack, count: int, seed: int) -> list[bytes]:
    """``count`` distinct ``POST /api/infer`` requests (small noise PNG, short prompt)."""
    host = f"{LOOPBACK}:{stack.gateway_port}"
    return [infer_request(host, [Upload(noise_png(seed + index, IMAGE_SIZE), "image/png")], f"overhead probe {index}",
                          max_tokens="16") for index in range(count)]


async def via_gateway(stack: LocalStack, count: int, concurrency: int, seed: int) -> RunResult:
    """Closed loop of POST + long-poll through the gateway; CPU of gateway, Redis and worker recorded."""
    raws = gateway_requests(stack, count, seed)
    conns = [Connection(LOOPBACK, stack.gateway_port) for _ in range(concurrency)]

    async def task(index: int, slot: int) -> float:
        return (await submit_and_wait(conns[slot], raws[index], wait_s=10)).latency_s

    try:
        return await measured(server_groups(stack), closed_loop(task, concurrency, count=count))
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))


async def queue_only(client: QueueClient, stack: LocalStack, count: int, concurrency: int) -> RunResult:
    """Closed loop of enqueue + wait, skipping HTTP; CPU of Redis and worker recorded."""
    async def task(index: int, slot: int) -> float:
        return await client.submit_and_wait(index)

    groups = {name: pids for name, pids in server_groups(stack).items() if name != "gateway"}
    return await measured(groups, closed_loop(task, concurrency, count=count))


async def drain(client: QueueClient, stack: LocalStack, count: int) -> RunResult:
    """``count`` jobs enqueued in one pipeline, timed until the last one ended; worker CPU recorded."""
    jobs = [client.make_job(index) for index in range(count)]
    futures = client.expect([job.id for job in jobs])

    async def burst() -> RunResult:
        started = time.perf_counter()
        client.enqueue(jobs)
        await asyncio.wait_for(asyncio.gather(*futures), timeout=120)
        wall_s = time.perf_counter() - started
        # One "latency" per job so that rate and CPU per job come out right; their spread means nothing here.
        return RunResult(concurrency=count, latencies=[wall_s] * count, wall_s=wall_s)

    return await measured({"worker": [stack.pids["worker"]], "redis": [stack.pids["redis"]]}, burst())


async def _measure(stack: LocalStack, count: int, burst: int) -> list[Check]:
    client = QueueClient(stack.redis_url, stack.model)
    await client.start(noise_png(0, IMAGE_SIZE), IMAGE_SIZE)
    try:
        await via_gateway(stack, 50, 4, seed=10_000_000)  # warm-up
        await queue_only(client, stack, 50, 4)
        counts = [command_counts(client.redis)]
        gateway = await via_gateway(stack, count, 1, seed=20_000_000)
        counts.append(command_counts(client.redis))
        queued = await queue_only(client, stack, count, 1)
        counts.append(command_counts(client.redis))
        drained = await drain(client, stack, burst)
    finally:
        await client.close()
    checks = _report(gateway, queued, drained)
    _report_commands(counts, count)
    return checks


def _report_commands(counts: list[dict[str, int]], count: int) -> None:
    """Redis commands per request on each path: where the round trips go."""
    paths = ("gateway", "queue only")
    per_request = [{name: (after.get(name, 0) - before.get(name, 0)) / count for name in after}
                   for before, after in pairwise(counts)]
    names = sorted(set(per_request[0]) | set(per_request[1]), key=lambda name: -per_request[0].get(name, 0))
    rows = [[name, *(fmt(path.get(name, 0.0)) for path in per_request)] for name in names
            if any(path.get(name, 0) >= 0.5 for path in per_request)]
    rows.append(["total", *(fmt(sum(path.values())) for path in per_request)])
    print("\n## Redis commands per request (INFO commandstats; inside MULTI and scripts included)\n")
    print(table(["command", *paths], rows))


def _row(label: str, run: RunResult) -> list[str]:
    cpu = [fmt(run.group_cpu_ms(group)) if group in run.cpu else "-" for group in SERVERS]
    return [label, str(len(run.latencies)), fmt(run.rate), fmt(run.pct(50)), fmt(run.pct(99)), *cpu,
            str(len(run.errors))]


def _report(gateway: RunResult, queued: RunResult, drained: RunResult) -> list[Check]:
    print("\n## Submit -> done overhead, instant test engine (one request at a time)\n")
    headers = ["path", "requests", "req/s", "p50 ms", "p99 ms", "CPU ms/req gateway", "CPU ms/req redis",
               "CPU ms/req worker", "errors"]
    print(table(headers, [_row("gateway: POST + long-poll", gateway),
                          _row("queue only: RQ enqueue + end event", queued)]))
    print(f"\nHTTP side (gateway p50 - queue-only p50): {fmt(gateway.pct(50) - queued.pct(50))} ms")
    jobs_per_s = len(drained.latencies) / drained.wall_s
    print(f"\n## Worker drain rate: {len(drained.latencies)} jobs enqueued at once\n")
    print(table(["jobs", "seconds", "jobs/s", "CPU ms/job worker", "CPU ms/job redis", "errors"],
                [[str(len(drained.latencies)), fmt(drained.wall_s), fmt(jobs_per_s),
                  fmt(drained.group_cpu_ms("worker")), fmt(drained.group_cpu_ms("redis")), str(len(drained.errors))]]))
    return [Check("submit -> done via gateway, p50", gateway.pct(50), P50_GOAL_MS, False, " ms"),
            Check("  queue only (no HTTP), p50", queued.pct(50), P50_GOAL_MS, False, " ms"),
            Check("jobs/s per worker (instant engine)", jobs_per_s, JOBS_GOAL, True)]


def run(count: int = 300, burst: int = 2000) -> list[Check]:
    """Start the instant-engine stack, measure, stop it."""
    with LocalStack(engine="instant") as stack:
        stack.start()
        return asyncio.run(_measure(stack, count, burst))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="sequential requests per path")
    parser.add_argument("--burst", type=int, default=2000, help="jobs enqueued at once for the drain rate")
    opts = parser.parse_args()
    print("\n" + checks_table(run(opts.count, opts.burst)))


if __name__ == "__main__":
    main()
