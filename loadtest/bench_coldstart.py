"""Cold start: a pool at zero workers gets a request; how long from the worker process's start to the job done?

A stack with Redis and the gateway but no worker takes one request (it is accepted and says ``warming``),
then ``python -m worker`` starts with the real vLLM engine (the tiny model); the clock runs from that
process start until the request is done. The worker's own measurement (process start to ready, which the
gateway then reports as ``cold_start_s``) is printed beside it. No goal: the number feeds the planner's
cold-start input and the chart's startup probe.
"""

from __future__ import annotations

import time

import httpx
from redis import Redis

from loadtest.images import solid_jpeg
from loadtest.measure import Check, fmt, table
from loadtest.stack import LocalStack
from worker.capacity import cold_start_key


def run() -> list[Check]:
    """Start the stack without a worker, submit, start the worker, wait for the answer."""
    with LocalStack(engine="vllm", worker_env={"VLQ_WORKER_ENFORCE_EAGER": "true",
                                               "VLQ_WORKER_MAX_MODEL_LEN": "2048"}) as stack:
        stack.start(worker=False)
        image = solid_jpeg((30, 120, 200))
        with httpx.Client(base_url=stack.base_url, timeout=60) as http:
            accepted = http.post("/api/infer", data={"prompt": "What is this?", "max_tokens": "8"},
                                 files=[("image", ("i.jpg", image, "image/jpeg"))]).json()
            started = time.monotonic()
            stack.start_worker()
            ready = time.monotonic() - started
            body = http.get(f"{accepted['result_url']}&wait=300").json()
            done = time.monotonic() - started
        redis = Redis.from_url(stack.redis_url)
        measured = float(redis.get(cold_start_key(stack.model)) or 0)
        redis.close()
    print("\n## Cold start: worker process start to the first job done (vLLM, tiny model)\n")
    print(table(["warming at submit", "process start -> /healthz", "worker's own cold start", "-> first job done",
                 "status"],
                [[str(accepted.get("warming")), f"{fmt(ready)} s", f"{fmt(measured)} s", f"{fmt(done)} s",
                  str(body.get("status"))]]))
    return []


if __name__ == "__main__":
    run()
