"""Queue-fed throughput through gateway + RQ + worker, against the same vLLM engine driven directly.

One ``VllmEngine`` (the tiny Qwen3-VL of ``make model``, the worker's settings) is started once in this
process, and both arms use that very engine, one after the other, for several rounds:

- direct: ``engine.generate()`` called from here, ``concurrency`` calls in flight;
- queue:  a client process (``loadtest.drive``) POSTs to a gateway process and long-polls; the gateway
  enqueues on RQ in a redis-server process; ``worker.runner.Runner`` (the worker's own job loop, as run by
  ``python -m worker``) takes the jobs in this process and feeds them to the same engine.

Requests are the seed scenario (distinct 1080p JPEG, ~256-token prompt, 16 output tokens) unless told
otherwise; no two requests share an image, so no cache helps either arm. The ratio is the median of
per-round ratios (each round runs both arms back to back), because this machine is noisy. Goals: >= 0.95,
and the worker process's CPU per request at most 5 ms above the direct arm's.
Then the same comparison at 1 and 4 in flight shows the cost curve. Per-process CPU per request says
where the time goes on a machine where every process competes for two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Coroutine
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from loadtest.drive import parse_size, requests_for
from loadtest.images import FULL_HD
from loadtest.measure import (
    Check,
    RunResult,
    checks_table,
    closed_loop,
    descendants,
    fmt,
    measured,
    median,
    paired_ratios,
    table,
)
from loadtest.stack import LocalStack
from worker.config import WorkerSettings
from worker.contract import SamplingParams
from worker.engine import Engine, EngineRequest, generate

GOAL = 0.95
# The worker process's CPU per request may exceed the direct arm's (the same process driving the engine) by this.
WORKER_CPU_GAP_GOAL_MS = 5.0
# (in flight, requests) beyond the main comparison. No 64: by then the engine core has cached ~330 distinct
# processed 1080p images (vLLM's mm processor cache, 4 GiB by default) and, on a 24 GiB machine shared with
# other engines, was OOM-killed every time; the instant-engine curve covers 64 in flight.
CURVE = ((1, 6), (4, 16))
START_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Workload:
    """What each arm is asked to do."""

    count: int
    concurrency: int
    size: tuple[int, int]
    max_tokens: int
    words: int


@dataclass
class ArmRun:
    """One arm's run (with the CPU each process group spent on it)."""

    arm: str
    run: RunResult


class EngineDownError(RuntimeError):
    """The engine process died; the remaining arms cannot run."""


class Bench:
    """The engine, the stack around it and the worker loop; runs arms and keeps their results."""

    def __init__(self, engine: Engine, stack: LocalStack, worker: asyncio.Task[None]) -> None:
        self.engine = engine
        self.stack = stack
        self.worker = worker
        self.seed = 1
        pid = os.getpid()
        served = [stack.pids["gateway"], stack.pids["redis"]]
        # Started before the stack, the engine core (and its workers) are our other children.
        self.groups = {"gateway+redis": served, "worker": [pid],
                       "engine core": [child for child in descendants(pid) if child not in served]}

    def _next_seed(self) -> int:
        self.seed += 1
        return self.seed

    async def direct(self, work: Workload, seed: int, pairs: list[tuple[bytes, str]]) -> RunResult:
        sampling = SamplingParams(max_tokens=work.max_tokens)
        loop = asyncio.get_running_loop()

        async def task(index: int, slot: int) -> float:
            image, text = pairs[index]
            started = loop.time()
            await generate(self.engine, EngineRequest.single(f"direct-{seed}-{index}", text, [image], sampling))
            return loop.time() - started

        return await closed_loop(task, work.concurrency, count=work.count)

    async def queue(self, work: Workload, timeout_s: float = 300.0) -> RunResult:
        args = ["--port", str(self.stack.gateway_port), "--count", str(work.count), "--concurrency",
                str(work.concurrency), "--seed", str(self._next_seed()), "--size", f"{work.size[0]}x{work.size[1]}",
                "--max-tokens", str(work.max_tokens), "--prompt-words", str(work.words)]
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "loadtest.drive", *args,
                                                    stdout=asyncio.subprocess.PIPE)
        communicating = asyncio.ensure_future(proc.communicate())
        # The worker loop stops by itself when the engine dies; then this arm can never finish.
        await asyncio.wait({communicating, self.worker}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if not communicating.done():
            proc.kill()  # our own child, the client of this arm
            await communicating
            reason = "the worker stopped (engine died?)" if self.worker.done() else f"no end in {timeout_s:.0f} s"
            return RunResult(concurrency=work.concurrency, errors=[reason])
        out, _ = communicating.result()
        if proc.returncode != 0:
            raise RuntimeError(f"loadtest.drive exited with {proc.returncode}")
        data: dict[str, Any] = json.loads(out)
        return RunResult(concurrency=work.concurrency, latencies=data["latencies"], wall_s=data["wall_s"],
                         errors=data["errors"])

    async def arm(self, name: str, work: Workload) -> ArmRun:
        if getattr(self.engine, "errored", False) or self.worker.done():
            raise EngineDownError("the vLLM engine process died (out of memory?); later arms skipped")
        if name == "queue":
            return ArmRun(name, await measured(self.groups, self.queue(work)))
        # Made before the measurement: the queue arm's client makes its requests in its own process.
        seed = self._next_seed()
        pairs = requests_for(work.count, seed, work.size, work.words)
        return ArmRun(name, await measured(self.groups, self.direct(work, seed, pairs)))


async def _rounds(bench: Bench, work: Workload, rounds: int) -> list[ArmRun]:
    results: list[ArmRun] = []
    for round_no in range(rounds):
        for name in ("direct", "queue") if round_no % 2 == 0 else ("queue", "direct"):
            results.append(await bench.arm(name, work))
            _progress(results[-1])
    return results


async def _all_arms(bench: Bench, work: Workload, rounds: int, curve: bool) -> list[ArmRun]:
    results: list[ArmRun] = []
    try:
        results += await _rounds(bench, work, rounds)
        if curve:
            for concurrency, count in CURVE:
                results += await _rounds(bench, Workload(count, concurrency, work.size, work.max_tokens, work.words), 1)
    except EngineDownError as exc:
        print(f"\n**{exc}**")
    return results


def _progress(result: ArmRun) -> None:
    run = result.run
    print(f"  {result.arm:6} {run.concurrency:3} in flight: {len(run.latencies)} done in {run.wall_s:.1f} s "
          f"({run.rate:.2f}/s), {len(run.errors)} errors", file=sys.stderr, flush=True)


def _rows(results: list[ArmRun]) -> list[list[str]]:
    rows = []
    for result in results:
        run = result.run
        cpu = [fmt(run.group_cpu_ms(group)) for group in ("gateway+redis", "worker", "engine core")]
        rows.append([result.arm, str(run.concurrency), str(len(run.latencies)), fmt(run.rate), fmt(run.pct(50)),
                     fmt(run.pct(99)), *cpu, str(len(run.errors))])
    return rows


HEADERS = ["arm", "in flight", "requests", "req/s", "p50 ms", "p99 ms", "CPU ms/req gateway+redis",
           "CPU ms/req worker proc", "CPU ms/req engine core", "errors"]


def _ratio(results: list[ArmRun], concurrency: int) -> float:
    def rates(arm: str) -> list[float]:
        return [r.run.rate for r in results if r.arm == arm and r.run.concurrency == concurrency]

    return median(paired_ratios(rates("queue"), rates("direct")))


def _cpu_ratio(results: list[ArmRun], concurrency: int) -> float:
    # On a CPU-bound machine this is the capacity ratio, and far less noisy than wall-clock rates.
    def cpu(arm: str) -> float:
        return median([r.run.cpu_ms_per_request for r in results if r.arm == arm and r.run.concurrency == concurrency])

    return cpu("direct") / cpu("queue")


async def _start_engine(starting: Coroutine[Any, Any, Engine], timeout_s: float = START_TIMEOUT_S) -> Engine:
    # vLLM's AsyncLLM can wait forever for an engine core that died while starting (seen: the OOM killer
    # took its worker). The build runs in a thread that cannot be cancelled, so give up loudly instead.
    try:
        return await asyncio.wait_for(starting, timeout_s)
    except TimeoutError:
        for child in descendants(os.getpid()):
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        print(f"the vLLM engine did not start within {timeout_s:.0f} s (out of memory?)", file=sys.stderr, flush=True)
        os._exit(3)


async def _measure(settings: WorkerSettings, work: Workload, rounds: int, curve: bool) -> list[Check]:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

    from worker.runner import Runner
    from worker.vllm_engine import VllmEngine

    started = time.monotonic()
    engine = await _start_engine(VllmEngine.start(settings))
    print(f"  engine started in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    with LocalStack(engine="vllm", model=settings.served_model_name) as stack:
        stack.start(worker=False)
        redis = Redis.from_url(stack.redis_url)
        aredis = AsyncRedis.from_url(stack.redis_url)
        runner = Runner(settings, engine, redis, "bench-worker", aredis=aredis)
        running = asyncio.create_task(runner.run())
        bench = Bench(engine, stack, running)
        try:
            # Warm-up at the measured concurrency: first calls pay lazy initialisation, and with only 4 in
            # flight the first measured round (always direct) still ran 15-20% slower than the later ones.
            warm = Workload(work.concurrency, work.concurrency, work.size, work.max_tokens, work.words)
            for name in ("direct", "queue"):
                await bench.arm(name, warm)
            results = await _all_arms(bench, work, rounds, curve)
        finally:
            runner.request_stop()
            await running
            redis.close()
            await aredis.aclose()
            engine.shutdown()
    return _report(results, work, settings)


def _report(results: list[ArmRun], work: Workload, settings: WorkerSettings) -> list[Check]:
    print(f"\n## Queue-fed vs direct vLLM engine ({work.size[0]}x{work.size[1]} JPEG, {work.words}-word prompt, "
          f"{work.max_tokens} tokens; max_num_seqs {settings.max_num_seqs}, worker max_inflight "
          f"{settings.max_inflight})\n")
    print(table(HEADERS, _rows(results)))
    levels = sorted({result.run.concurrency for result in results if result.arm == "direct"})
    print("\nqueue ÷ direct throughput by concurrency (median of paired rounds): "
          + ", ".join(f"{level}: {_ratio(results, level):.2f}" for level in levels))
    cpu_ratio = _cpu_ratio(results, work.concurrency)
    print(f"CPU per request, all processes, direct ÷ queue-fed at {work.concurrency} in flight: {cpu_ratio:.2f}")
    errors = [error for result in results for error in result.run.errors]
    if errors:
        print(f"{len(errors)} errors, first: {errors[0]}", file=sys.stderr)
    gap = _worker_cpu_gap(results, work.concurrency)
    print(f"worker-process CPU per request at {work.concurrency} in flight, queue-fed - direct: {gap:.1f} ms")
    return [Check(f"queue-fed ÷ direct engine throughput at {work.concurrency} in flight",
                  _ratio(results, work.concurrency), GOAL, higher_is_better=True),
            Check("worker-process CPU per request, queue-fed - direct", gap, WORKER_CPU_GAP_GOAL_MS,
                  higher_is_better=False, unit=" ms")]


def _worker_cpu_gap(results: list[ArmRun], concurrency: int) -> float:
    """What feeding the engine from the queue costs the process that runs it, per request (median of rounds)."""
    def cpu(arm: str) -> float:
        return median([result.run.group_cpu_ms("worker") for result in results
                       if result.arm == arm and result.run.concurrency == concurrency])
    return cpu("queue") - cpu("direct")


def run(count: int = 48, concurrency: int = 16, size: tuple[int, int] = FULL_HD, max_tokens: int = 16,
        words: int = 250, rounds: int = 3, curve: bool = True) -> list[Check]:
    """Start the engine and the stack, compare the arms, stop everything. Call under a ``__main__`` guard."""
    # vLLM's INFO lines would bury the tables; the engine core inherits this when it is spawned.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    settings = WorkerSettings(metrics_port=0)
    work = Workload(count, concurrency, size, max_tokens, words)
    return asyncio.run(_measure(settings, work, rounds, curve))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=48, help="requests per arm and round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", default=f"{FULL_HD[0]}x{FULL_HD[1]}", help="image size, WxH")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompt-words", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-curve", action="store_true", help="skip the 1 and 4 in-flight comparison")
    opts = parser.parse_args()
    checks = run(opts.count, opts.concurrency, parse_size(opts.size), opts.max_tokens, opts.prompt_words,
                 opts.rounds, not opts.no_curve)
    print("\n" + checks_table(checks))


if __name__ == "__main__":
    main()
