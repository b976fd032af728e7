"""Which frames of an uploaded video a job answers about: the clip of a ``video_url`` part.

An upload keeps frames sampled at its ``sample_fps`` (``gateway.video``); a request may ask for fewer
(``video.fps``): the clip keeps, for each point of the request's grid 0, 1/fps, 2/fps..., the stored frame
on screen at that moment (each frame once), with its own time, so the model's ``<t seconds>`` are the
video's. A video longer than one window (``video.window_s``) is refused for now, naming ``video.window_s``:
answering it as windows on many workers is the next step (see the README).
"""

from __future__ import annotations

from gateway.errors import UnprocessableError
from worker.contract import MediaRecord, VideoClip, VideoFrame


def clip(record: MediaRecord, fps: float | None, window_s: float, param: str) -> VideoClip:
    """The clip of a video record at ``fps`` (None: as uploaded); a 422 naming ``param`` if it cannot be one."""
    rate = fps or record.sample_fps or 0.0
    if not record.frames or rate <= 0:
        raise UnprocessableError("media_not_found", "the video holds no frames", param)
    if record.sample_fps is not None and rate > record.sample_fps:
        raise UnprocessableError("invalid_parameter", f"video.fps is at most the upload's sample_fps "
                                 f"({record.sample_fps:g}); upload again with a higher fps", "video.fps")
    duration = record.duration_s or record.frames[-1].t
    if duration > window_s:
        raise UnprocessableError("video_too_long", f"the video lasts {duration:.1f} s, longer than one window "
                                 f"({window_s:g} s); ask about a shorter video or raise video.window_s "
                                 "(at most 600)", "video.window_s")
    chosen = _on_grid(record, rate)
    return VideoClip(frames=[frame.digest for frame in chosen], times=[frame.t for frame in chosen], fps=rate)


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
