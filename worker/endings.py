"""How a job ends, as the result document the worker writes: done (with JSON answers parsed), failed,
canceled or expired. Pure functions of the payload and what the engine returned."""

from __future__ import annotations

import json
import time
from typing import Any

from worker.completion import Ending
from worker.contract import (
    CacheMode,
    ErrorCode,
    ImagePart,
    InferJob,
    InferOutput,
    JobError,
    JobResult,
    JobState,
    Role,
    Segment,
    Timings,
    Usage,
    WindowRef,
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


def merged(job_id: str, payload: InferJob, ends: list[JobResult | None], started: float) -> Ending:
    """A long video's answer from its windows' (``ends``: each window's result, None if it is gone): one
    segment per window and a timeline as the text. A failed window is named in its segment and makes the
    answer ``partial`` (not cached, so asking again runs that window again); if every window failed, so does
    the request."""
    outputs = [_output(window, end) for window, end in zip(payload.windows, ends, strict=True)]
    segments = [_segment(window, end, output) for window, end, output in zip(payload.windows, ends, outputs,
                                                                             strict=True)]
    answered = [output for output in outputs if output is not None]
    failed_at = [segment for segment in segments if segment.text is None]
    if not answered:
        spans = ", ".join(_clock(segment) for segment in failed_at[:5])
        first = failed_at[0].error if failed_at and failed_at[0].error else None
        return ended(job_id, payload, JobState.FAILED, ErrorCode.ENGINE_ERROR,
                     f"every window of the video failed ({spans}{', ...' if len(failed_at) > 5 else ''})"
                     + (f": {first.code}: {first.message}" if first else ""), started)
    now = time.time()
    text = "\n".join(_line(segment) for segment in segments)
    finish = "length" if any(output.finish_reason == "length" for output in answered) else "stop"
    usage = Usage(prompt_tokens=sum(output.usage.prompt_tokens for output in answered),
                  completion_tokens=sum(output.usage.completion_tokens for output in answered))
    result = JobResult(
        state=JobState.DONE, model=payload.model, finished_at=now,
        result=InferOutput(text=text, finish_reason=finish, usage=usage, segments=segments,
                           partial=bool(failed_at)),
        timings=Timings(queue_wait_s=round(started - payload.enqueued_at, 4),
                        total_s=round(now - payload.enqueued_at, 4)))
    # A partial answer is not cached: the windows that answered are, each under its own key.
    kept = payload if not failed_at else payload.model_copy(update={"cache_mode": CacheMode.OFF})
    return Ending(job_id=job_id, result=result, payload=kept)


def _output(window: WindowRef, end: JobResult | None) -> InferOutput | None:
    """A window's answer: the one the cache had, or its job's if that job answered."""
    if window.output is not None:
        return window.output
    return end.result if end is not None and end.state is JobState.DONE else None


def _segment(window: WindowRef, end: JobResult | None, output: InferOutput | None) -> Segment:
    if output is not None:
        return Segment(start_s=window.start_s, end_s=window.end_s, text=output.text)
    error = (end.error if end is not None and end.error is not None
             else JobError(code=end.state.value if end is not None else ErrorCode.RESULT_EXPIRED.value,
                           message="the window has no answer"))
    return Segment(start_s=window.start_s, end_s=window.end_s, error=error)


def _line(segment: Segment) -> str:
    """A segment as a line of the timeline: ``[01:00-02:00] text``."""
    code = segment.error.code if segment.error else "failed"
    said = segment.text if segment.text is not None else f"(no answer: {code})"
    return f"[{_clock(segment)}] {said}"


def _clock(span: Segment) -> str:
    return f"{_hms(span.start_s)}-{_hms(span.end_s)}"


def _hms(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    clock = f"{rest // 60:02d}:{rest % 60:02d}" if not hours else f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    fraction = seconds - whole
    return clock + (f"{fraction:.1f}".lstrip("0") if fraction >= 0.05 else "")


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
