"""The finisher ends the worker's jobs in one MULTI: a cancel that landed while the engine answered turns the
end into a cancel in the same step, and the engine-call statistics are written with the ends."""

from __future__ import annotations

import asyncio
import time

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq.registry import CanceledJobRegistry, FinishedJobRegistry

from tests.worker.test_completion import payload
from worker import endings
from worker.completion import result_key
from worker.constants import CANCEL_PREFIX, ENGINE_CALLS, INFER_FUNC, MAX_INFLIGHT_SEEN
from worker.contract import JobResult, JobState, Priority
from worker.deltas import DeltaBuffer
from worker.engine import EngineOutput
from worker.finisher import Finisher
from worker.rqjobs import Slots, claim, open_queues
from worker.scripts import Scripts


def test_an_answer_the_client_canceled_meanwhile_ends_canceled_and_the_others_done(redis_url: str,
                                                                                   redis_client: Redis) -> None:
    pool = open_queues(redis_client, "m")
    job = payload()
    for job_id in ("kept", "dropped"):
        pool[Priority.INTERACTIVE].enqueue(INFER_FUNC, job=job.model_dump(mode="json"), job_id=job_id)
    claimed = claim(pool, Scripts(redis_client), "w", heartbeat_ttl_s=30, block_s=0, slots=Slots(2, 0))
    redis_client.set(CANCEL_PREFIX + "dropped", "1")
    output = EngineOutput(text="an answer", prompt_tokens=1, completion_tokens=2, finish_reason="stop")

    async def end_both() -> list[JobState]:
        scripts = Scripts(redis_client)
        aredis = AsyncRedis.from_url(redis_url)
        finisher = Finisher(redis_client, aredis, scripts, DeltaBuffer(scripts, 0.05), "w", None, 5.0)
        running = asyncio.create_task(finisher.run())
        now = time.time()
        ends = await asyncio.gather(*(
            finisher.end(item, endings.done(item.job.id, job, output, now, now, None), True, now, 2)
            for item in claimed))
        running.cancel()
        await aredis.aclose()
        return [ending.result.state for ending in ends]

    assert asyncio.run(end_both()) == [JobState.DONE, JobState.CANCELED]
    assert JobResult.model_validate_json(redis_client.get(result_key("dropped")) or b"").state is JobState.CANCELED
    assert JobResult.model_validate_json(redis_client.get(result_key("kept")) or b"").state is JobState.DONE
    assert FinishedJobRegistry(pool[Priority.INTERACTIVE].name, connection=redis_client).get_job_ids() == ["kept"]
    assert CanceledJobRegistry(pool[Priority.INTERACTIVE].name, connection=redis_client).get_job_ids() == ["dropped"]
    assert redis_client.get(ENGINE_CALLS) == b"2" and int(redis_client.get(MAX_INFLIGHT_SEEN) or 0) == 2
