"""How a job ends, as the result document the worker writes: done (with JSON answers parsed), failed,
canceled or expired. Pure functions of the payload and what the engine returned."""

from __future__ import annotations

import json
import time
from typing import Any

from worker.completion import Ending
from worker.contract import (
    ErrorCode,
    ImagePart,
    InferJob,
    InferOutput,
    JobError,
    JobResult,
    JobState,
    Role,
    Timings,
    Usage,
)
from worker.engine import EngineOutput
from worker.presets import Task, gui_boxes_to_pixels


def done(job_id: str, payload: InferJob, output: EngineOutput, started: float, engine_start: float,
         first_delta_at: float | None) -> Ending:
    """A finished answer; a JSON answer is parsed (and GUI boxes mapped to the image's pixels)."""
    now = time.time()
    result = JobResult(
        state=JobState.DONE, model=payload.model, finished_at=now,
        result=InferOutput(text=output.text, json=_parsed(payload, output.text),
                           finish_reason=output.finish_reason,
                           usage=Usage(prompt_tokens=output.prompt_tokens,
                                       completion_tokens=output.completion_tokens)),
        timings=Timings(queue_wait_s=round(started - payload.enqueued_at, 4),
                        engine_s=round(now - engine_start, 4), total_s=round(now - payload.enqueued_at, 4),
                        first_delta_s=round(first_delta_at - payload.enqueued_at, 4) if first_delta_at else None),
        phashes=payload.phashes)
    return Ending(job_id=job_id, result=result, payload=payload)


def ended(job_id: str, payload: InferJob | None, state: JobState, code: ErrorCode, message: str,
          started: float) -> Ending:
    """A job that ended without an answer."""
    now = time.time()
    timings = Timings(queue_wait_s=round(started - payload.enqueued_at, 4) if payload else None,
                      total_s=round(now - payload.enqueued_at, 4) if payload else None)
    result = JobResult(state=state, error=JobError(code=code, message=message), finished_at=now,
                       model=payload.model if payload else None, timings=timings)
    return Ending(job_id=job_id, result=result, payload=payload)


def failed(job_id: str, payload: InferJob | None, code: ErrorCode, message: str, started: float) -> Ending:
    return ended(job_id, payload, JobState.FAILED, code, message, started)


def canceled(job_id: str, payload: InferJob, started: float) -> Ending:
    return ended(job_id, payload, JobState.CANCELED, ErrorCode.CANCELED, "the request was canceled", started)


def _parsed(payload: InferJob, text: str) -> Any:
    if not payload.response_format.is_json:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None  # cut short by max_tokens, say: the text is still there
    if payload.task == Task.GUI.value:
        size = _gui_image_size(payload)
        if size is not None:
            return gui_boxes_to_pixels(value, *size)
    return value


def _gui_image_size(payload: InferJob) -> tuple[int, int] | None:
    """Width and height of the first image of the last user turn: the screenshot the boxes are on."""
    for message in reversed(payload.messages):
        if message.role is Role.USER:
            for part in message.content:
                if isinstance(part, ImagePart) and part.image < len(payload.images):
                    ref = payload.images[part.image]
                    return ref.width, ref.height
            return None
    return None
