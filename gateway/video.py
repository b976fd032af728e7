"""Video checks and frame sampling (PyAV), before anything is written to Redis.

``sniff`` looks at magic bytes only: MP4/MOV (an ISO BMFF ``ftyp`` box) or WebM (an EBML header whose
DocType is ``webm``; generic Matroska is refused). FFmpeg is then told which demuxer to use, so it never
probes its hundreds of other formats. ``sample`` is blocking (run it through ``Decoder``): it checks what
the file declares before decoding a frame (streams, codec, size, duration, frame rate, frame count), checks
the same things again on what it actually decodes (a header can lie both ways), and takes the frame shown
at each ``t = k / fps`` (``k = 0, 1, ...``, while ``t`` is before the end), converted to RGB, shrunk to
``frame_long_edge`` and encoded as JPEG. A frame shown at several such times is taken once; its timestamp
is its own presentation time (exact in the stream's time base), measured from the first frame.

Refusals are the gateway's errors with ``param="file"``: 415 not a video we take (container, codec, extra
streams such as attachments or cover art), 413 over a cap, 422 corrupt, truncated, frameless or too slow.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import av.logging
from av.stream import Disposition

from cache.keys import image_digest
from gateway.errors import ApiError, PayloadTooLargeError, UnprocessableError, UnsupportedMediaError

PARAM = "file"
# Container -> (FFmpeg demuxer, media type, codecs accepted in it).
_CONTAINERS = {"mp4": ("mp4", "video/mp4", frozenset({"h264", "hevc"})),
               "mov": ("mov", "video/quicktime", frozenset({"h264", "hevc"})),
               "webm": ("webm", "video/webm", frozenset({"vp8", "vp9", "av1"}))}
# Streams other than the one video stream: audio and timed metadata are ignored (never decoded); anything
# else (attachments, subtitles, a second picture) is refused. A file with more streams than this is odd.
_IGNORED_STREAMS = frozenset({"audio", "data"})
_MAX_STREAMS = 8
_EBML = b"\x1a\x45\xdf\xa3"
_BOMB_LOG = re.compile(r"Picture size (\d+)x(\d+) exceeds")
# Frames whose presentation time went backwards (or is missing) are skipped; this many means corrupt.
_MAX_DISORDERED = 16
JPEG_QUALITY = 90
# Held while PyAV's log callback is installed (``_open_logged``).
_LOGGING = threading.Lock()


@dataclass(frozen=True)
class VideoLimits:
    """What a video may be, and how its frames are kept."""

    max_bytes: int
    max_duration_s: float
    max_pixels: int
    max_frames: int
    max_source_fps: float
    max_sample_frames: int
    frame_long_edge: int
    decode_timeout_s: float


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: its time in seconds from the first frame, and the JPEG kept for it."""

    t: float
    jpeg: bytes
    digest: str
    width: int
    height: int


@dataclass
class Sampled:
    """What sampling a video found."""

    container: str
    media_type: str
    codec: str
    width: int
    height: int
    fps: float
    duration_s: float
    sample_fps: float
    frames: list[SampledFrame] = field(default_factory=list)


def sniff(data: bytes) -> str | None:
    """``mp4``, ``mov`` or ``webm`` from the magic bytes; ``matroska`` for other Matroska; None otherwise."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "mov" if data[8:12] == b"qt  " else "mp4"
    if data.startswith(_EBML):
        return "webm" if _doctype(data[:64]) == b"webm" else "matroska"
    return None


def _doctype(head: bytes) -> bytes | None:
    # The EBML header's DocType element (ID 0x4282) with a one-byte size, as every muxer writes it.
    at = head.find(b"\x42\x82")
    if at < 0 or at + 3 > len(head) or not head[at + 2] & 0x80:
        return None
    size = head[at + 2] & 0x7F
    return head[at + 3:at + 3 + size]


def sample(data: bytes, fps: float, limits: VideoLimits, cancel: threading.Event | None = None) -> Sampled:
    """Check the video and sample its frames at ``fps``. CPU-bound: run it through ``Decoder``."""
    kind = sniff(data)
    if kind not in _CONTAINERS:
        raise UnsupportedMediaError("unsupported_video_type", "only MP4, MOV and WebM videos are accepted", PARAM)
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError("video_too_large", f"the video is larger than {limits.max_bytes} bytes", PARAM)
    demuxer, media_type, codecs = _CONTAINERS[kind]
    deadline = time.monotonic() + limits.decode_timeout_s
    with _opened(data, demuxer, limits) as container:
        stream = _video_stream(container, codecs)
        out = Sampled(container=kind, media_type=media_type, codec=stream.codec_context.codec.canonical_name,
                      width=stream.codec_context.width, height=stream.codec_context.height,
                      fps=float(stream.average_rate or 0), duration_s=0.0, sample_fps=fps)
        declared_frames = _check_declared(container, stream, fps, limits)
        decoded = _Sampler(out, stream.time_base, limits, deadline, cancel).run(container, stream)
    if decoded == 0:
        raise UnprocessableError("no_video_frames", "the video has no frames", PARAM)
    if declared_frames and decoded + max(2, declared_frames // 100) < declared_frames:
        raise UnprocessableError("truncated_video", f"the video declares {declared_frames} frames and only "
                                 f"{decoded} could be decoded", PARAM)
    return out


@contextmanager
def _opened(data: bytes, demuxer: str, limits: VideoLimits) -> Iterator[Any]:
    # max_pixels makes FFmpeg's decoders refuse a frame bomb before allocating it, even while probing.
    options = {"max_pixels": str(limits.max_pixels), "max_streams": str(_MAX_STREAMS * 2)}
    try:
        container, logs = _open_logged(data, demuxer, options)
    except av.error.EOFError as exc:
        # The file ends before its first frame: cut short, or written with no frame at all.
        raise UnprocessableError("truncated_video", "the video ends before its first frame", PARAM) from exc
    except (av.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise UnprocessableError("corrupt_video", "the video is corrupt or truncated", PARAM) from exc
    try:
        _refuse_bomb(logs, limits)
        yield container
    except (av.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise UnprocessableError("corrupt_video", "the video is corrupt or truncated", PARAM) from exc
    finally:
        container.close()


def _open_logged(data: bytes, demuxer: str, options: dict[str, str]) -> tuple[Any, list[tuple[int, str, str]]]:
    """Open the container with FFmpeg's messages captured (a refused frame bomb is told only there).

    PyAV's log callback takes the GIL. Installed while a decode runs, a codec context freed (with the GIL held)
    while one of FFmpeg's decoder threads logs (a corrupt packet, say) waits for that thread forever: a CI run
    hung so. So it is installed only around the open, under a lock (the level is process-wide), where FFmpeg
    probes with a single thread; decoding runs with PyAV's no-op callback.
    """
    with _LOGGING:
        av.logging.set_level(av.logging.ERROR)
        try:
            with av.logging.Capture() as logs:
                container = av.open(io.BytesIO(data), format=demuxer, options=options)
        finally:
            av.logging.set_level(None)
    return container, list(logs)


def _refuse_bomb(logs: list[tuple[int, str, str]], limits: VideoLimits) -> None:
    for _, _, message in logs:
        found = _BOMB_LOG.search(message)
        if found:
            _too_many_pixels(int(found[1]), int(found[2]), limits)


def _too_many_pixels(width: int, height: int, limits: VideoLimits) -> None:
    raise PayloadTooLargeError("too_many_pixels", f"the video's frames are {width}x{height}; at most "
                               f"{limits.max_pixels} pixels a frame are accepted", PARAM)


def _video_stream(container: Any, codecs: frozenset[str]) -> Any:
    streams = list(container.streams)
    if len(streams) > _MAX_STREAMS:
        raise UnsupportedMediaError("too_many_streams", f"the file has {len(streams)} streams", PARAM)
    videos = []
    for stream in streams:
        if stream.type == "video" and stream.disposition & Disposition.attached_pic:
            raise UnsupportedMediaError("attached_picture", "videos with cover art are not accepted", PARAM)
        if stream.type == "video":
            videos.append(stream)
        elif stream.type not in _IGNORED_STREAMS:
            raise UnsupportedMediaError("unsupported_stream", f"the file has a {stream.type} stream; only "
                                        "video, audio and timed metadata are accepted", PARAM)
    if not videos:
        raise UnsupportedMediaError("no_video_stream", "the file has no video stream", PARAM)
    if len(videos) > 1:
        raise UnsupportedMediaError("multiple_video_streams", "the file has more than one video stream", PARAM)
    codec = videos[0].codec_context.codec.canonical_name
    if codec not in codecs:
        raise UnsupportedMediaError("unsupported_video_codec", f"{codec} is not accepted in this container; "
                                    f"accepted: {', '.join(sorted(codecs))}", PARAM)
    return videos[0]


def _check_declared(container: Any, stream: Any, fps: float, limits: VideoLimits) -> int:
    """Refuse what the headers declare over a cap, before decoding; the declared frame count (0: none)."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if width < 1 or height < 1:
        if not any(packet.size for packet in container.demux(stream)):
            raise UnprocessableError("no_video_frames", "the video has no frames", PARAM)
        raise UnprocessableError("corrupt_video", "the video's frame size is unreadable", PARAM)
    if width * height > limits.max_pixels:
        _too_many_pixels(width, height, limits)
    seconds = max(container.duration / 1e6 if container.duration else 0.0,
                  float(stream.duration * stream.time_base) if stream.duration else 0.0)
    if seconds > limits.max_duration_s:
        raise _too_long(seconds, limits)
    rate = float(stream.average_rate or 0)
    if rate > limits.max_source_fps:
        raise _too_fast(rate, limits)
    frames = int(stream.frames or 0)
    if max(frames, seconds * rate) > limits.max_frames:
        raise _too_many_frames(limits)
    if seconds * fps > limits.max_sample_frames:
        raise _too_many_samples(limits)
    return frames


def _too_long(seconds: float, limits: VideoLimits) -> ApiError:
    return PayloadTooLargeError("video_too_long", f"the video lasts over {seconds:.0f} s; at most "
                                f"{limits.max_duration_s:g} s are accepted", PARAM)


def _too_fast(rate: float, limits: VideoLimits) -> ApiError:
    return PayloadTooLargeError("frame_rate_too_high", f"the video has {rate:.0f} frames a second; at most "
                                f"{limits.max_source_fps:g} are accepted", PARAM)


def _too_many_frames(limits: VideoLimits) -> ApiError:
    return PayloadTooLargeError("too_many_frames", f"the video has over {limits.max_frames} frames", PARAM)


def _too_many_samples(limits: VideoLimits) -> ApiError:
    return PayloadTooLargeError("too_many_sampled_frames", f"sampling would keep over {limits.max_sample_frames} "
                                "frames; send a lower fps or a shorter video", PARAM)


class _Sampler:
    """Decodes one stream in presentation order and keeps the frame shown at each sample time."""

    def __init__(self, out: Sampled, time_base: Fraction, limits: VideoLimits, deadline: float,
                 cancel: threading.Event | None) -> None:
        self.out, self.time_base, self.limits = out, time_base, limits
        self.deadline, self.cancel = deadline, cancel
        self.step = Fraction(out.sample_fps).limit_denominator(1000) ** -1
        self.next_t = Fraction(0)
        self.origin: int | None = None
        self.held: tuple[Fraction, Any] | None = None
        self.taken_t: Fraction | None = None
        self.decoded = self.disordered = 0

    def run(self, container: Any, stream: Any) -> int:
        stream.thread_type = "AUTO"
        last_t, last_span = Fraction(0), Fraction(0)
        for packet in container.demux(stream):
            self._check_time()
            for frame in packet.decode():
                t = self._time_of(frame)
                if t is not None:
                    self._check_frame(frame, t)
                    self._take_until(t)
                    self.held = (t, frame)
                    last_t, last_span = t, self._span(frame, stream)
        # The last frame is shown until its own end.
        end = last_t + last_span
        if end > self.limits.max_duration_s:
            raise _too_long(float(end), self.limits)
        self._take_until(end)
        self.out.duration_s = float(end)
        return self.decoded

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline or (self.cancel is not None and self.cancel.is_set()):
            raise UnprocessableError("video_decode_timeout", "the video took too long to decode "
                                     f"(over {self.limits.decode_timeout_s:g} s)", PARAM)

    def _time_of(self, frame: Any) -> Fraction | None:
        """The frame's time from the first frame; None (skip it) when missing or not after the last one."""
        if frame.pts is not None and self.origin is None:
            self.origin = frame.pts
        t = None if frame.pts is None else Fraction((frame.pts - self.origin) * self.time_base)
        if t is None or (self.held is not None and t <= self.held[0]):
            self.disordered += 1
            if self.disordered > _MAX_DISORDERED:
                raise UnprocessableError("corrupt_video", "the video's timestamps are missing or out of order",
                                         PARAM)
            return None
        return t

    def _check_frame(self, frame: Any, t: Fraction) -> None:
        limits = self.limits
        self.decoded += 1
        if frame.is_corrupt:
            raise UnprocessableError("corrupt_video", "the video has corrupt frames", PARAM)
        if frame.width * frame.height > limits.max_pixels:
            _too_many_pixels(frame.width, frame.height, limits)
        if t > limits.max_duration_s:
            raise _too_long(float(t), limits)
        if self.decoded > limits.max_frames:
            raise _too_many_frames(limits)
        if self.decoded > (t + 1) * limits.max_source_fps:
            raise _too_fast(self.decoded / float(t + 1), limits)

    def _span(self, frame: Any, stream: Any) -> Fraction:
        if frame.duration:
            return Fraction(frame.duration * self.time_base)
        rate = stream.average_rate or stream.guessed_rate
        return Fraction(1 / rate) if rate else Fraction(0)

    def _take_until(self, t: Fraction) -> None:
        """Every sample time before ``t`` shows the held frame: keep it (once)."""
        while self.held is not None and self.next_t < t:
            held_t, frame = self.held
            if held_t != self.taken_t:
                self._keep(held_t, frame)
                self.taken_t = held_t
            self.next_t += self.step

    def _keep(self, t: Fraction, frame: Any) -> None:
        if len(self.out.frames) >= self.limits.max_sample_frames:
            raise _too_many_samples(self.limits)
        width, height = _fit(frame.width, frame.height, self.limits.frame_long_edge)
        image = frame.to_image(width=width, height=height, interpolation="AREA")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
        jpeg = buffer.getvalue()
        self.out.frames.append(SampledFrame(t=float(t), jpeg=jpeg, digest=image_digest(jpeg), width=width,
                                            height=height))


def _fit(width: int, height: int, long_edge: int) -> tuple[int, int]:
    scale = min(1.0, long_edge / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


class Decoder:
    """Runs ``sample`` in threads, at most ``concurrency`` at once, each within the decode time limit.

    A decode past its limit is answered at once (422); its thread stops at its next frame and only then
    gives its slot back, so slow files cannot pile up more decodes than ``concurrency``.
    """

    def __init__(self, limits: VideoLimits, concurrency: int) -> None:
        self.limits = limits
        self.slots = asyncio.Semaphore(concurrency)

    async def sample(self, data: bytes, fps: float) -> Sampled:
        """Sample ``data`` off the event loop."""
        await self.slots.acquire()
        cancel = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(None, _run_sample, data, fps, self.limits, cancel)
        future.add_done_callback(self._release)
        try:
            # The thread checks the same deadline between frames; this catches one stuck inside FFmpeg.
            return await asyncio.wait_for(asyncio.shield(future), self.limits.decode_timeout_s + 1.0)
        except TimeoutError as exc:
            cancel.set()
            raise UnprocessableError("video_decode_timeout", "the video took too long to decode (over "
                                     f"{self.limits.decode_timeout_s:g} s)", PARAM) from exc

    def _release(self, future: asyncio.Future[Sampled]) -> None:
        self.slots.release()
        if not future.cancelled():
            future.exception()  # retrieved, so an abandoned decode's refusal is not logged as unhandled


def _run_sample(data: bytes, fps: float, limits: VideoLimits, cancel: threading.Event) -> Sampled:
    # Looked up at call time, so tests can count or slow down decodes.
    try:
        return sample(data, fps, limits, cancel)
    except BaseException as exc:
        # The refusal travels to the event loop; the PyAV objects its traceback holds (streams, codec contexts,
        # frames) are freed here, in the decoding thread, not wherever the exception is dropped.
        _drop_frames(exc)
        raise


def _drop_frames(exc: BaseException) -> None:
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        item = pending.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        traceback.clear_frames(item.__traceback__)
        pending += [item.__cause__, item.__context__]
