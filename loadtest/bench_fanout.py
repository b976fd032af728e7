"""Fan-out: one long-video question answered as windows on 4 workers, against the same question on 1 worker.

The stack (redis-server, the gateway, instant-engine workers that run one job at a time with
``DELAY_S`` per job, so each worker stands for a saturated GPU) is started once. A synthetic 20 s video is
uploaded at 1 fps and asked about with ``window_s`` 2: 10 window jobs and a merge job. The question is asked
with one worker up, then, with a new prompt (no cache hit), after three more workers joined. Reported:
submit -> done for each, and the speed-up (1-worker time ÷ 4-worker time). Ideal: 10 rounds against 3.
Goal: speed-up >= 2.5.
"""

from __future__ import annotations

import time

import httpx

from loadtest.bench_video import synthetic_h264
from loadtest.measure import Check, fmt, table
from loadtest.stack import LocalStack, wait_http

GOAL = 2.5
DELAY_S = 0.5
SECONDS = 20
WINDOW_S = 2
WORKERS = 4


def _ask(client: httpx.Client, media_id: str, question: str) -> tuple[float, int]:
    started = time.perf_counter()
    content = [{"type": "video_url", "video_url": {"url": f"vlq://media/{media_id}"}},
               {"type": "text", "text": question}]
    posted = client.post("/api/infer", json={"messages": [{"role": "user", "content": content}],
                                             "video": {"window_s": WINDOW_S}, "max_tokens": 8})
    posted.raise_for_status()
    request_id = posted.json()["request_id"]
    while True:
        body = client.get("/api/result", params={"request_id": request_id, "wait": 30}).json()
        if body.get("status") in ("done", "failed", "expired", "canceled"):
            break
    if body["status"] != "done" or body["result"].get("partial"):
        raise RuntimeError(f"the question ended {body['status']}: {body.get('error')}")
    return time.perf_counter() - started, len(body["result"]["segments"])


def run() -> list[Check]:
    """Start the stack, time the question on 1 worker and on 4, stop it."""
    env = {"VLQ_WORKER_INSTANT_DELAY_S": str(DELAY_S), "VLQ_WORKER_MAX_INFLIGHT": "1",
           "VLQ_WORKER_INTERACTIVE_RESERVE": "0"}
    with LocalStack(engine="instant", worker_env=env) as stack:
        stack.start()
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            uploaded = client.post("/api/media", data={"fps": "1"},
                                   files={"file": ("long.mp4", synthetic_h264(320, 240, SECONDS), "video/mp4")})
            uploaded.raise_for_status()
            media_id = uploaded.json()["media_id"]
            alone, windows = _ask(client, media_id, "What happens? (one worker)")
            for index in range(1, WORKERS):
                proc, healthz = stack.spawn_worker(f"worker-{index}")
                wait_http(healthz, proc, f"worker-{index}", 120)
            together, _ = _ask(client, media_id, f"What happens? ({WORKERS} workers)")
    speedup = alone / together
    print(f"\n## Fan-out: a {SECONDS} s video, {windows} windows of {WINDOW_S} s, instant engine {DELAY_S} s/job, "
          "one job at a time per worker\n")
    print(table(["workers", "submit->done s", "ideal s"],
                [["1", fmt(alone), fmt(windows * DELAY_S)],
                 [str(WORKERS), fmt(together), fmt(-(-windows // WORKERS) * DELAY_S)]]))
    return [Check(f"fan-out speed-up, {WORKERS} workers ÷ 1", speedup, GOAL, True)]
