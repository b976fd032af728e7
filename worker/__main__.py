"""Worker entry point: ``python -m worker``.

Builds the engine once, here and only here (never at import time, never per job, never in a forked
child), then runs the job loop. SIGTERM stops taking jobs, drains those in flight and exits 0.
vLLM's AsyncLLM starts its engine core in a spawned child process, which re-imports the main module:
everything heavy therefore sits under the ``__main__`` guard below.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from contextlib import suppress

from redis import Redis
from redis.exceptions import RedisError
from rq.serializers import JSONSerializer
from rq.worker import Worker, WorkerStatus

from worker import capacity, metrics
from worker.config import WorkerSettings
from worker.engine import Engine, InstantEngine
from worker.rqjobs import open_queues
from worker.runner import Runner

log = logging.getLogger("vlq.worker")


GpuReading = Callable[[], tuple[int, int] | None]


async def build_engine(settings: WorkerSettings) -> tuple[Engine, GpuReading | None]:
    """The configured engine — vLLM (the product) or the instant test double — and its GPU reading."""
    if settings.engine == "instant":
        return InstantEngine(settings.instant_delay_s), None
    from worker.vllm_engine import VllmEngine, gpu_memory

    return await VllmEngine.start(settings), gpu_memory


async def _keep_registered(rq_worker: Worker, runner: Runner, interval_s: float, ttl_s: int) -> None:
    # RQ lists live workers from their own heartbeat key; `rq info` shows this worker while it beats,
    # busy while it has jobs in flight.
    while True:
        try:
            await asyncio.to_thread(rq_worker.set_state, WorkerStatus.BUSY if runner.inflight else WorkerStatus.IDLE)
            await asyncio.to_thread(rq_worker.heartbeat, ttl_s)
        except RedisError as exc:
            log.warning("worker heartbeat failed (%s); retrying", type(exc).__name__)
        await asyncio.sleep(interval_s)


async def serve(settings: WorkerSettings, process_started: float | None = None) -> None:
    """Load the engine, register with RQ, run jobs until SIGTERM/SIGINT, drain, unregister."""
    name = settings.name or f"{socket.gethostname()}-{os.getpid()}"
    health = metrics.Health()
    server = metrics.serve(settings.metrics_port, health) if settings.metrics_port else None
    redis = Redis.from_url(settings.redis_url, health_check_interval=30)
    try:
        started = time.monotonic()
        engine, health.gpu_memory = await build_engine(settings)
        log.info("engine %s ready in %.1f s", settings.engine, time.monotonic() - started)
        await _record_cold_start(redis, settings.served_model_name, time.time() - (process_started or time.time()))
        try:
            died = await _run_jobs(settings, engine, redis, name, health)
        finally:
            engine.shutdown()
        if died:
            raise SystemExit("the engine died; exiting so the worker is restarted")
    finally:
        redis.close()
        if server is not None:
            server.shutdown()
            server.server_close()
    log.info("worker %s stopped", name)


async def _record_cold_start(redis: Redis, model: str, seconds: float) -> None:
    # The gateway tells requests waiting for a worker (scale from zero) how long a start takes.
    try:
        await asyncio.to_thread(capacity.record_cold_start, redis, model, seconds)
    except RedisError as exc:
        log.warning("could not record the cold start (%s)", type(exc).__name__)


async def _register(redis: Redis, name: str, model: str) -> Worker:
    # Redis may come up after the worker (a pod restart order is not guaranteed): wait for it.
    while True:
        try:
            rq_worker = Worker(list(open_queues(redis, model).values()), connection=redis, name=name,
                               serializer=JSONSerializer)
            await asyncio.to_thread(rq_worker.register_birth)
            return rq_worker
        except RedisError as exc:
            log.warning("cannot reach Redis to register (%s); retrying", type(exc).__name__)
            await asyncio.sleep(1.0)


async def _run_jobs(settings: WorkerSettings, engine: Engine, redis: Redis, name: str,
                    health: metrics.Health) -> bool:
    """Run jobs until stopped; True if the engine died."""
    rq_worker = await _register(redis, name, settings.served_model_name)
    runner = Runner(settings, engine, redis, name, rq_worker=rq_worker)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.request_stop)
    beat = asyncio.create_task(_keep_registered(rq_worker, runner, settings.heartbeat_interval_s,
                                                settings.heartbeat_ttl_s))
    health.ready = True
    try:
        await runner.run()
    finally:
        health.ready = False
        beat.cancel()
        with suppress(Exception):
            await asyncio.to_thread(rq_worker.register_death)
    return runner.engine_died


def main() -> None:
    """Run the worker with settings from the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    started = time.time()
    asyncio.run(serve(WorkerSettings(), process_started=started))


if __name__ == "__main__":
    main()
