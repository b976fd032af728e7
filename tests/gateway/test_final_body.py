"""A cache hit's body built from the stored JSON is the body the model path builds; other documents fall back."""

from __future__ import annotations

import json

import pytest

from gateway.results import final_body, final_body_json
from worker.contract import ErrorCode, InferOutput, JobError, JobResult, JobState, Timings, Usage


def _stored(result: JobResult) -> bytes:
    return result.model_dump_json().encode()  # what the worker's finish script caches


@pytest.mark.parametrize("output", [
    InferOutput(text="a cat, é ✓", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=4)),
    InferOutput.model_validate({"text": '{"n": 1}', "json": {"n": 1}, "finish_reason": "stop",
                                "usage": {"prompt_tokens": 1, "completion_tokens": 2}, "a_newer_field": [1]}),
])
def test_the_body_from_stored_json_is_the_model_paths(output: InferOutput) -> None:
    result = JobResult(state=JobState.DONE, result=output, model="tiny", finished_at=1.5,
                       timings=Timings(queue_wait_s=0.1, engine_s=0.2, total_s=0.3))
    fast = final_body_json("req-1", _stored(result), "HIT-L1")
    assert fast is not None
    assert json.loads(fast) == json.loads(json.dumps(final_body("req-1", result, "HIT-L1")))


def test_other_documents_take_the_model_path() -> None:
    failed = JobResult(state=JobState.FAILED, error=JobError(code=ErrorCode.ENGINE_ERROR, message="x"),
                       finished_at=1.0)
    done = JobResult(state=JobState.DONE, finished_at=1.0,
                     result=InferOutput(text="t", finish_reason="stop", usage=Usage(prompt_tokens=1,
                                                                                    completion_tokens=1)))
    older = json.loads(_stored(done))
    del older["phashes"]  # written by a worker of another version
    fewer_timings = json.loads(_stored(done))
    del fewer_timings["timings"]["first_delta_s"]
    for raw in (_stored(failed), json.dumps(older).encode(), json.dumps(fewer_timings).encode(), b"not json",
                b"[1]"):
        assert final_body_json("req-2", raw, "HIT-L2") is None
