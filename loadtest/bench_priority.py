"""Priorities: an interactive request's wait with 500 Batch API lines queued, against the idle case.

One instant-engine worker (``VLQ_WORKER_INSTANT_DELAY_S`` per job, 8 slots, the default interactive
reserve of 2) behind the gateway. Each probe is an interactive ``POST /api/infer`` (a distinct prompt: no cache
hit) followed by a long-poll for its answer; probes go one at a time, a fixed pause apart.

- idle: the probes alone;
- loaded: a batch of 500 lines is uploaded and started first (``/v1/files``, ``/v1/batches``), and the
  probes run while its lines are queued and running (the batch queue's depth is reported at the end, so
  the run shows the batch was still there).

Reported: the probes' submit -> done p50/p95 and the queue wait p95 (``timings.queue_wait_s``). Goal:
loaded ÷ idle p95 of submit -> done <= 1.5.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import redis

from loadtest.measure import Check, fmt, percentile, table
from loadtest.stack import LocalStack

GOAL = 1.5
DELAY_S = 0.3
LINES = 500
PROBES = 30
PAUSE_S = 0.25
# 8 slots, 2 kept for interactive work: the 500 lines take about 500 * 0.3 / 6 = 25 s, longer than the probes.
SLOTS = 8


async def _probe(client: httpx.AsyncClient, index: int, label: str) -> tuple[float, float]:
    started = time.perf_counter()
    posted = await client.post("/api/infer", json={"messages": [{"role": "user", "content": f"{label} probe {index}"}],
                                                   "max_tokens": 8})
    posted.raise_for_status()
    request_id = posted.json()["request_id"]
    while True:
        got = await client.get("/api/result", params={"request_id": request_id, "wait": 30})
        body = got.json()
        if body.get("status") in ("done", "failed", "expired", "canceled"):
            break
    if body["status"] != "done":
        raise RuntimeError(f"probe {index} ended {body['status']}")
    return time.perf_counter() - started, float(body["timings"].get("queue_wait_s") or 0.0)


async def _probes(client: httpx.AsyncClient, label: str) -> list[tuple[float, float]]:
    found = []
    for index in range(PROBES):
        found.append(await _probe(client, index, label))
        await asyncio.sleep(PAUSE_S)
    return found


async def _start_batch(client: httpx.AsyncClient, model: str) -> str:
    lines = "".join(json.dumps({"custom_id": f"line-{n}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": model, "max_tokens": 8,
                                         "messages": [{"role": "user", "content": f"batch line {n}"}]}}) + "\n"
                    for n in range(LINES))
    uploaded = await client.post("/v1/files", data={"purpose": "batch"},
                                 files={"file": ("lines.jsonl", lines.encode(), "application/jsonl")})
    uploaded.raise_for_status()
    created = await client.post("/v1/batches", json={"input_file_id": uploaded.json()["id"],
                                                     "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    created.raise_for_status()
    return str(created.json()["id"])


async def _measure(stack: LocalStack) -> tuple[list[tuple[float, float]], list[tuple[float, float]], int, int]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client:
        await _probes(client, "warm-up")
        idle = await _probes(client, "idle")
        await _start_batch(client, stack.model)
        await asyncio.sleep(2.0)  # the driver submits the lines
        queue = redis.Redis.from_url(stack.redis_url)
        depth_before = int(queue.llen("rq:queue:vlq-infer-batch"))
        loaded = await _probes(client, "loaded")
        depth_after = int(queue.llen("rq:queue:vlq-infer-batch"))
        queue.close()
    return idle, loaded, depth_before, depth_after


def run() -> list[Check]:
    """Start the instant-engine stack with a per-job delay, measure both cases, stop it."""
    with LocalStack(engine="instant", worker_env={"VLQ_WORKER_INSTANT_DELAY_S": str(DELAY_S),
                                                  "VLQ_WORKER_MAX_INFLIGHT": str(SLOTS)}) as stack:
        stack.start()
        idle, loaded, before, after = asyncio.run(_measure(stack))
    rows = []
    for label, runs in (("idle", idle), (f"{LINES} batch lines queued", loaded)):
        totals = [total * 1000 for total, _ in runs]
        waits = [wait * 1000 for _, wait in runs]
        rows.append([label, str(len(runs)), fmt(percentile(totals, 50)), fmt(percentile(totals, 95)),
                     fmt(percentile(waits, 95))])
    print(f"\n## Priorities: interactive probes, instant engine {DELAY_S} s/job, {SLOTS} slots\n")
    print(table(["case", "probes", "submit->done p50 ms", "p95 ms", "queue wait p95 ms"], rows))
    print(f"\nbatch queue depth: {before} when the probes began, {after} when they ended")
    ratio = percentile([t for t, _ in loaded], 95) / percentile([t for t, _ in idle], 95)
    return [Check("interactive p95 with 500 batch lines ÷ idle", ratio, GOAL, False)]
