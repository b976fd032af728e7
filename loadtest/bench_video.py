"""Video intake cost per video-second: ``gateway.video.sample`` (demux, decode every frame, sample at the
default 2 fps, RGB, shrink to the long edge, JPEG) plus the file's BLAKE3, on synthetic H.264 at 720p and
1080p made here (moving gradients and noise at 25 fps, libx264 ``veryfast``, about 2-4 Mbit/s).

CPU seconds are the process's (every decode thread together); wall seconds are what one upload waits. The
goal is a 1080p video-second in at most 0.25 s of wall time, so that the default decode time limit
(``video_decode_timeout_s``) holds several minutes of 1080p on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from cache.keys import image_digest
from gateway.config import GatewaySettings
from gateway.video import sample
from loadtest.measure import Check, checks_table, fmt, median, table

GOAL_WALL_S_PER_VIDEO_S = 0.25
RATE = 25


def synthetic_h264(width: int, height: int, seconds: int, seed: int = 7) -> bytes:
    """An MP4 of moving gradients with noise (so the encoder has real work and the decoder too)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    noise = rng.integers(0, 12, (height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=RATE, options={"preset": "veryfast", "crf": "23"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for index in range(seconds * RATE):
                shift = index * 8
                pixels = np.stack([(xs + shift) % 256, (ys + shift // 2) % 256, (xs + ys - shift) % 256], axis=-1)
                frame = pixels.astype(np.uint8) + noise  # fixed grain: predictable, as a real scene mostly is
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return path.read_bytes()


def _intake(data: bytes, settings: GatewaySettings) -> tuple[float, float, int]:
    from gateway.backend import video_limits

    cpu, wall = time.process_time(), time.perf_counter()
    image_digest(data)
    sampled = sample(data, settings.video_sample_fps, video_limits(settings))
    return time.process_time() - cpu, time.perf_counter() - wall, len(sampled.frames)


def run(seconds: int = 10, rounds: int = 3) -> list[Check]:
    """Measure both sizes and print the table; return the goal check (1080p wall per video-second)."""
    settings = GatewaySettings(auth_enabled=False)
    rows: list[list[str]] = []
    per_second: dict[str, float] = {}
    for label, width, height in (("720p", 1280, 720), ("1080p", 1920, 1080)):
        data = synthetic_h264(width, height, seconds)
        _intake(data, settings)  # warm
        runs = [_intake(data, settings) for _ in range(rounds)]
        cpu, wall = median([r[0] for r in runs]) / seconds, median([r[1] for r in runs]) / seconds
        per_second[label] = wall
        rows.append([label, f"{len(data) * 8 / seconds / 1e6:.1f}", fmt(cpu * 1000), fmt(wall * 1000),
                     f"{1 / wall:.0f}x", str(runs[0][2]), f"{settings.video_decode_timeout_s / wall / 60:.0f}"])
    print(f"\n## Video intake per video-second (H.264 {RATE} fps, {seconds} s clips, sampled at "
          f"{settings.video_sample_fps:g} fps, frames to {settings.video_frame_long_edge} px)\n")
    print(table(["size", "Mbit/s", "CPU ms / video-s", "wall ms / video-s", "vs real time", "frames kept",
                 "minutes within the time limit"], rows))
    return [Check("1080p video intake, wall per video-second", per_second["1080p"] * 1000,
                  GOAL_WALL_S_PER_VIDEO_S * 1000, higher_is_better=False, unit=" ms")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("\n" + checks_table(run(args.seconds, args.rounds)))


if __name__ == "__main__":
    main()
