"""Streaming on ÷ off: does asking vLLM for deltas cost the engine throughput?

One ``VllmEngine`` (the tiny Qwen3-VL, the worker's settings: ``stream_interval`` tokens per output) is
started once; each round runs the same workload twice back to back, ``stream=True`` (DELTA outputs, every
chunk consumed and handed to the worker's ``DeltaBuffer`` as the worker does) and ``stream=False``
(FINAL_ONLY), with distinct images so no cache helps. The ratio is the median of per-round throughput
ratios (this machine is noisy). Goal: >= 0.95. It also prints time to the first delta against time to
done for the streamed requests.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from loadtest.drive import requests_for
from loadtest.measure import Check, RunResult, closed_loop, fmt, median, paired_ratios, percentile, table
from worker.config import WorkerSettings
from worker.contract import SamplingParams
from worker.engine import Engine, EngineRequest

GOAL = 0.95


async def _arm(engine: Engine, stream: bool, seed: int, count: int, concurrency: int, max_tokens: int,
               firsts: list[float]) -> RunResult:
    pairs = requests_for(count, seed, (448, 336), 60)
    sampling = SamplingParams(max_tokens=max_tokens)
    loop = asyncio.get_running_loop()
    pending: dict[str, list[str]] = {}

    async def task(index: int, slot: int) -> float:
        image, text = pairs[index]
        request = EngineRequest.single(f"s{int(stream)}-{seed}-{index}", text, [image], sampling, stream=stream)
        started = loop.time()
        first = None
        async for chunk in engine.stream(request):
            if chunk.text:
                first = first or loop.time()
                pending.setdefault(request.request_id, []).append(chunk.text)  # what the worker buffers
        pending.pop(request.request_id, None)
        if stream and first is not None:
            firsts.append(first - started)
        return loop.time() - started

    return await closed_loop(task, concurrency, count=count)


async def _measure(settings: WorkerSettings, rounds: int, count: int, concurrency: int,
                   max_tokens: int) -> list[Check]:
    from worker.vllm_engine import VllmEngine

    started = time.monotonic()
    engine = await VllmEngine.start(settings)
    print(f"  engine started in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    on: list[RunResult] = []
    off: list[RunResult] = []
    firsts: list[float] = []
    try:
        await _arm(engine, True, 1, 4, 4, max_tokens, [])  # warm-up
        for round_index in range(rounds):
            on.append(await _arm(engine, True, 10 + round_index, count, concurrency, max_tokens, firsts))
            off.append(await _arm(engine, False, 100 + round_index, count, concurrency, max_tokens, []))
    finally:
        engine.shutdown()
    ratio = median(paired_ratios([r.rate for r in on], [r.rate for r in off]))
    done = [latency for run in on for latency in run.latencies]
    print(f"\n## Streaming on ÷ off, vLLM engine ({concurrency} in flight, {count} requests a round, "
          f"{max_tokens} tokens, stream_interval {settings.stream_interval})\n")
    print(table(["arm", "req/s per round", "p50 ms", "p99 ms"],
                [["stream on (DELTA)", ", ".join(fmt(r.rate) for r in on), fmt(percentile(done, 50) * 1000),
                  fmt(percentile(done, 99) * 1000)],
                 ["stream off (FINAL_ONLY)", ", ".join(fmt(r.rate) for r in off),
                  fmt(percentile([x for r in off for x in r.latencies], 50) * 1000),
                  fmt(percentile([x for r in off for x in r.latencies], 99) * 1000)]]))
    print(f"\ntime to first delta p50 {fmt(percentile(firsts, 50) * 1000)} ms vs time to done p50 "
          f"{fmt(percentile(done, 50) * 1000)} ms (streamed requests)")
    return [Check("engine throughput, streaming on ÷ off", ratio, GOAL, higher_is_better=True)]


def run(rounds: int = 5, count: int = 48, concurrency: int = 16, max_tokens: int = 64) -> list[Check]:
    """Start the engine, compare, stop it. Call under a ``__main__`` guard (vLLM spawns its core)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    settings = WorkerSettings(metrics_port=0, max_num_seqs=16, max_model_len=2048, enforce_eager=True)
    return asyncio.run(_measure(settings, rounds, count, concurrency, max_tokens))


if __name__ == "__main__":
    from loadtest.measure import checks_table

    print("\n" + checks_table(run()))
