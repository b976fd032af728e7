"""Which frames of an uploaded video a job answers about: the clip of a ``video_url`` part, and its windows.

An upload keeps frames sampled at its ``sample_fps`` (``gateway.video``); a request may ask for fewer
(``video.fps``): the clip keeps, for each point of the request's grid 0, 1/fps, 2/fps..., the stored frame
on screen at that moment (each frame once), with its own time, so the model's ``<t seconds>`` are the
video's. A video longer than one window (``video.window_s``) is answered as windows [0, w), [w, 2w), ...:
each window's clip holds the frames whose times fall in it, still with the video's own times.
"""

from __future__ import annotations

import math

from gateway.errors import UnprocessableError
from worker.contract import MediaRecord, Span, VideoClip, VideoFrame


def clip(record: MediaRecord, fps: float | None, param: str) -> VideoClip:
    """The clip of a video record at ``fps`` (None: as uploaded); a 422 naming ``param`` if it cannot be one."""
    rate = fps or record.sample_fps or 0.0
    if not record.frames or rate <= 0:
        raise UnprocessableError("media_not_found", "the video holds no frames", param)
    if record.sample_fps is not None and rate > record.sample_fps:
        raise UnprocessableError("invalid_parameter", f"video.fps is at most the upload's sample_fps "
                                 f"({record.sample_fps:g}); upload again with a higher fps", "video.fps")
    chosen = _on_grid(record, rate)
    return VideoClip(frames=[frame.digest for frame in chosen], times=[frame.t for frame in chosen], fps=rate)


def duration_of(record: MediaRecord) -> float:
    """How long the video lasts, in seconds."""
    return record.duration_s or (record.frames[-1].t if record.frames else 0.0)


def windows(whole: VideoClip, duration_s: float, window_s: float, max_windows: int,
            param: str) -> list[tuple[Span, VideoClip]]:
    """The windows of a clip longer than ``window_s``, each with the frames that fall in it (a window no
    frame falls in is left out); a 422 naming ``video.window_s`` if there would be more than ``max_windows``."""
    count = math.ceil(duration_s / window_s - 1e-9)
    if count > max_windows:
        raise UnprocessableError("video_too_long", f"the video lasts {duration_s:.1f} s: {count} windows of "
                                 f"{window_s:g} s, more than the {max_windows} one request may have; raise "
                                 "video.window_s", "video.window_s")
    buckets: list[list[tuple[str, float]]] = [[] for _ in range(count)]
    for digest, t in zip(whole.frames, whole.times, strict=True):
        # The same tolerance as the grid: a frame exactly on a boundary opens the next window.
        buckets[min(int((t + 1e-6) // window_s), count - 1)].append((digest, t))
    found = [(Span(start_s=round(index * window_s, 6), end_s=round(min((index + 1) * window_s, duration_s), 6)),
              VideoClip(frames=[d for d, _ in inside], times=[t for _, t in inside], fps=whole.fps))
             for index, inside in enumerate(buckets) if inside]
    if not found:
        raise UnprocessableError("media_not_found", "the video holds no frames", param)
    return found


def _on_grid(record: MediaRecord, fps: float) -> list[VideoFrame]:
    """For each grid point k / fps before the end, the stored frame on screen then (the last one shown at or
    before it), each frame once."""
    chosen: list[VideoFrame] = []
    frames = record.frames
    end = record.duration_s or frames[-1].t + 1e-3
    index = 0
    k = 0
    # A small tolerance: stored times are exact fractions, the grid is floating point.
    while (point := k / fps) + 1e-6 < end and k <= len(frames) * 1000:
        while index + 1 < len(frames) and frames[index + 1].t <= point + 1e-6:
            index += 1
        if not chosen or chosen[-1] is not frames[index]:
            chosen.append(frames[index])
        k += 1
    return chosen
