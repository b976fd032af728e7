"""The claim rule (interactive first, batch capped and never starved) and the claim itself on real Redis."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.conftest import assert_same_timings, redis_shape, redis_timings
from worker.claims import ClaimRule
from worker.constants import CANCEL_PREFIX, IMAGE_PREFIX, INFER_FUNC
from worker.contract import START_META, Priority
from worker.events import stream_key
from worker.rqjobs import Begun, Slots, _Claim, claim, heartbeat, open_queues
from worker.scripts import Scripts

INT, B = Priority.INTERACTIVE, Priority.BATCH


def simulate(rule: ClaimRule, claims: int) -> list[Priority]:
    """Which queue each claim takes when both always have work and batch jobs end at once."""
    taken: list[Priority] = []
    streak = 0
    for _ in range(claims):
        choice = rule.order(batch_inflight=0, streak=streak)[0]
        taken.append(choice)
        streak = 0 if choice is B else streak + 1
    return taken


def test_interactive_first_but_batch_gets_every_nth_claim() -> None:
    taken = simulate(ClaimRule(max_inflight=16, interactive_reserve=2, batch_every=4), 12)
    assert taken == [INT, INT, INT, B] * 3


def test_batch_never_takes_the_reserved_slots() -> None:
    rule = ClaimRule(max_inflight=16, interactive_reserve=2, batch_every=8)
    assert rule.batch_cap == 14
    assert rule.order(batch_inflight=14, streak=100) == (INT,)
    assert rule.order(batch_inflight=13, streak=0) == (INT, B)
    # One slot: the reserve cannot leave batch nothing.
    assert ClaimRule(max_inflight=1, interactive_reserve=2, batch_every=8).batch_cap == 1


def one(streak: int = 0, room: int = 1) -> Slots:
    return Slots(count=1, batch_room=room, streak=streak, batch_every=8)


def test_claim_takes_the_first_non_empty_queue_in_order(redis_client: Redis) -> None:
    queues = open_queues(redis_client, "m")
    scripts = Scripts(redis_client)
    queues[B].enqueue(INFER_FUNC, job={}, job_id="batch-1")
    queues[INT].enqueue(INFER_FUNC, job={}, job_id="inter-1")
    first = claim(queues, scripts, "w", heartbeat_ttl_s=30, block_s=0, slots=one())
    second = claim(queues, scripts, "w", heartbeat_ttl_s=30, block_s=0, slots=one(streak=1))
    assert [(c.job.id, c.priority) for c in first + second] == [("inter-1", INT), ("batch-1", B)]
    assert claim(queues, scripts, "w", heartbeat_ttl_s=30, block_s=0, slots=one()) == []
    # Registered as started on its own queue (rq info tells the truth), nothing left in the lists.
    assert queues[INT].started_job_registry.get_job_ids() == ["inter-1"]
    assert queues[B].started_job_registry.get_job_ids() == ["batch-1"]
    assert redis_client.llen(queues[B].intermediate_queue_key) == 0


def test_one_claim_fills_many_slots_by_the_same_rule(redis_client: Redis) -> None:
    # The claim script applies the rule slot by slot in Redis; it must choose what ClaimRule.order does.
    queues = open_queues(redis_client, "m")
    for index in range(20):
        queues[INT].enqueue(INFER_FUNC, job={}, job_id=f"i{index}")
        queues[B].enqueue(INFER_FUNC, job={}, job_id=f"b{index}")
    rule = ClaimRule(max_inflight=16, interactive_reserve=2, batch_every=4)
    claimed = claim(queues, Scripts(redis_client), "w", heartbeat_ttl_s=30, block_s=0,
                    slots=Slots(count=12, batch_room=rule.batch_cap, streak=0, batch_every=4))
    assert [c.priority for c in claimed] == simulate(rule, 12)
    assert [c.job.id for c in claimed][:4] == ["i0", "i1", "i2", "b0"]
    # Batch at its cap takes nothing more, whatever the streak: only interactive work is claimed.
    capped = claim(queues, Scripts(redis_client), "w", heartbeat_ttl_s=30, block_s=0,
                   slots=Slots(count=3, batch_room=0, streak=9, batch_every=4))
    assert [c.priority for c in capped] == [INT, INT, INT]
    started = queues[INT].started_job_registry.get_job_ids() + queues[B].started_job_registry.get_job_ids()
    assert sorted(started) == sorted(c.job.id for c in claimed + capped)
    assert redis_client.llen(queues[INT].intermediate_queue_key) == 0


def test_a_deleted_job_is_skipped(redis_client: Redis) -> None:
    queues = open_queues(redis_client, "m")
    gone = queues[INT].enqueue(INFER_FUNC, job={}, job_id="gone")
    queues[INT].enqueue(INFER_FUNC, job={}, job_id="kept")
    redis_client.delete(gone.key)
    claimed = claim(queues, Scripts(redis_client), "w", heartbeat_ttl_s=30, block_s=0,
                    slots=Slots(count=2, batch_room=1))
    assert [c.job.id for c in claimed] == ["kept"]
    assert redis_client.llen(queues[INT].intermediate_queue_key) == 0


def test_a_claim_that_took_only_deleted_jobs_does_not_wait(redis_client: Redis) -> None:
    import time

    queues = open_queues(redis_client, "m")
    redis_client.delete(queues[INT].enqueue(INFER_FUNC, job={}, job_id="gone").key)
    started = time.monotonic()
    assert claim(queues, Scripts(redis_client), "w", heartbeat_ttl_s=30, block_s=3, slots=one()) == []
    assert time.monotonic() - started < 1.0
    assert redis_client.llen(queues[INT].key) == 0


def test_an_idle_claim_wakes_for_interactive_work_even_when_batch_is_tried_first(redis_client: Redis) -> None:
    import threading
    import time

    queues = open_queues(redis_client, "m")
    late = threading.Timer(0.2, lambda: queues[INT].enqueue(INFER_FUNC, job={}, job_id="late"))
    late.start()
    started = time.monotonic()
    # streak 7 of batch_every 8: this claim tries batch first; idle, it blocks on the interactive queue.
    claimed = claim(queues, Scripts(redis_client), "w", heartbeat_ttl_s=30, block_s=3, slots=one(streak=7))
    # The claim can wake before the enqueuing thread has read its EXEC reply; let it finish before the
    # fixture closes the connection pool under it (CI saw that race land in the next test).
    late.join(timeout=5)
    assert [c.job.id for c in claimed] == ["late"]
    assert time.monotonic() - started < 1.0


def test_a_heartbeat_extends_running_jobs_and_never_resurrects_an_ended_one(redis_client: Redis) -> None:
    queues = open_queues(redis_client, "m")
    scripts = Scripts(redis_client)
    for name in ("running", "ended"):
        queues[INT].enqueue(INFER_FUNC, job={}, job_id=name)
    running, ended = claim(queues, scripts, "w", heartbeat_ttl_s=30, block_s=0, slots=Slots(2, 0))
    registry = queues[INT].started_job_registry
    with redis_client.pipeline() as pipe:
        ended.execution.delete(ended.job, pipeline=pipe)
        pipe.execute()
    before = redis_client.zscore(registry.key, running.execution.composite_key) or 0
    # The beat was taken while both ran (a snapshot of the in-flight jobs) and lands after one ended.
    assert heartbeat(scripts, [running, ended], ttl_s=300) == 1
    assert (redis_client.zscore(registry.key, running.execution.composite_key) or 0) >= before + 260
    assert 290 <= redis_client.ttl(running.execution.key) <= 300
    assert redis_client.zrange(f"rq:executions:{running.job.id}", 0, -1) == [running.execution.id.encode()]
    assert registry.get_job_ids() == ["running"]
    assert not redis_client.exists(ended.execution.key, f"rq:executions:{ended.job.id}")


def _started_state(redis: Redis, execution_id: str) -> tuple[Any, ...]:
    """What a start left in Redis (every key's shape, timings and the values a start sets), then a clean
    slate."""
    names = {execution_id: "<execution>"}
    state = (redis_shape(redis, names), redis_timings(redis, names), redis.hmget("rq:job:j", "status", "worker_name"),
             redis.hget(f"rq:execution:j:{execution_id}", "worker_name"))
    redis.flushdb()
    return state


def test_the_claim_script_starts_a_job_as_rqs_own_worker_does(redis_client: Redis) -> None:
    queues = open_queues(redis_client, "m")
    queue = queues[INT]
    queue.enqueue(INFER_FUNC, job={}, job_id="j", result_ttl=600)
    (claimed,) = claim(queues, Scripts(redis_client), "w", heartbeat_ttl_s=30, block_s=0, slots=one())
    by_script = _started_state(redis_client, claimed.execution.id)
    # RQ's own worker: the id moved to the intermediate list, then Execution.create and prepare_for_execution.
    queue.enqueue(INFER_FUNC, job={}, job_id="j", result_ttl=600)
    redis_client.lmove(queue.key, queue.intermediate_queue_key)
    job = Job.fetch("j", connection=redis_client, serializer=JSONSerializer)
    with redis_client.pipeline() as pipe:
        execution = Execution.create(job, ttl=30, pipeline=pipe, worker_name="w")
        job.prepare_for_execution("w", pipeline=pipe)
        pipe.lrem(queue.intermediate_queue_key, 1, job.id)
        pipe.execute()
    by_rq = _started_state(redis_client, execution.id)
    assert by_script[0] == by_rq[0]
    assert_same_timings(by_script[1], by_rq[1])
    assert by_script[2:] == by_rq[2:] == ([b"started", b"w"], b"w")
    # The object the worker holds is the job as started.
    assert claimed.job.get_status(refresh=False) == "started" and claimed.job.worker_name == "w"
    assert claimed.job.started_at is not None and claimed.execution.composite_key == f"j:{claimed.execution.id}"


def test_a_job_popped_by_the_blocking_wait_is_started_with_the_others(redis_client: Redis) -> None:
    queues = open_queues(redis_client, "m")
    queue = queues[INT]
    for name in ("first", "second"):
        queue.enqueue(INFER_FUNC, job={}, job_id=name)
    # As after the worker's BLMOVE woke: the first id already in the intermediate list.
    redis_client.lmove(queue.key, queue.intermediate_queue_key)
    request = _Claim(queues, "w", 30, Slots(3, 0))
    claimed = request.read(Scripts(redis_client).claim(keys=request.keys, args=request.args("first")))
    assert [item.job.id for item in claimed] == ["first", "second"]
    assert sorted(queue.started_job_registry.get_job_ids()) == ["first", "second"]
    assert redis_client.llen(queue.intermediate_queue_key) == 0 and redis_client.llen(queue.key) == 0


def test_the_claim_begins_a_job_from_the_gateways_start_entry_and_only_from_it(redis_client: Redis) -> None:
    queues = open_queues(redis_client, "m")
    redis_client.set(IMAGE_PREFIX + "d1", b"bytes of d1")
    redis_client.set(CANCEL_PREFIX + "entry", "1")
    queues[INT].enqueue(INFER_FUNC, job={}, job_id="entry", meta={START_META: {"media": ["d1", "d2"], "ttl": 60}})
    queues[INT].enqueue(INFER_FUNC, job={}, job_id="plain")
    queues[INT].enqueue(INFER_FUNC, job={}, job_id="odd", meta={START_META: {"media": "d1", "ttl": 60}})
    entry, plain, odd = claim(queues, Scripts(redis_client), "w", heartbeat_ttl_s=30, block_s=0, slots=Slots(3, 0))
    # Its cancel flag and media read (d2 expired), its running event appended with the entry's lifetime.
    assert entry.begun == Begun(canceled=True, media=[b"bytes of d1", None])
    assert [fields[b"e"] for _, fields in redis_client.xrange(stream_key("entry"))] == [b"running"]
    assert 50 <= redis_client.ttl(stream_key("entry")) <= 60
    # Without an entry the gateway wrote (none, or one of another shape), the worker reads the start itself.
    assert plain.begun is None and odd.begun is None
    assert not redis_client.exists(stream_key("plain"), stream_key("odd"))
