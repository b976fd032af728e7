"""Synthetic videos made with PyAV for the intake tests: solid colours that change at known seconds, and the
hostile files built from them (patched headers, cut bytes, extra streams)."""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import av
import numpy as np
import pytest

# The colour shown during second n is COLOURS[n % len(COLOURS)] (far apart, so JPEG and YUV keep them apart).
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 40, 220), (230, 230, 40), (200, 40, 200), (40, 210, 210)]


def colour_at(t: float) -> tuple[int, int, int]:
    return COLOURS[int(t) % len(COLOURS)]


def need_encoder(codec: str) -> None:
    try:
        av.codec.Codec(codec, "w")
    except av.codec.codec.UnknownCodecError:
        pytest.skip(f"no {codec} encoder in this PyAV build")


def make_video(fmt: str = "mp4", codec: str = "libx264", seconds: float = 3, rate: int = 25, width: int = 64,
               height: int = 48, options: dict[str, str] | None = None, attachment: bool = False,
               cover: bytes | None = None, audio: bool = False) -> bytes:
    """A video of solid colours, COLOURS[n] during second n; written to a file (the MP4 muxer seeks)."""
    need_encoder(codec)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"v.{fmt}"
        with av.open(str(path), "w", format=fmt, options=options or {}) as out:
            stream = out.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            sound = out.add_stream("aac", rate=8000) if audio else None
            art = out.add_mux_stream("png", width=1000, height=1000) if cover is not None else None
            if art is not None:
                art.disposition = av.stream.Disposition.attached_pic
            if attachment:
                out.add_attachment("font.ttf", "font/ttf", b"\0" * 100)
            for index in range(round(seconds * rate)):
                pixels = np.empty((height, width, 3), np.uint8)
                pixels[:] = colour_at(index / rate)
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
            if sound is not None:
                _silence(out, sound)
            if art is not None and cover is not None:
                packet = av.Packet(cover)
                packet.stream, packet.pts, packet.dts = art, 0, 0
                out.mux(packet)
        return path.read_bytes()


def _silence(out: av.container.OutputContainer, sound: av.audio.stream.AudioStream) -> None:
    for _ in range(8):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in sound.encode(frame):
            out.mux(packet)
    for packet in sound.encode():
        out.mux(packet)


def audio_only_mp4() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.mp4"
        with av.open(str(path), "w") as out:
            _silence(out, out.add_stream("aac", rate=8000))
        return path.read_bytes()


def frameless_webm() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "z.webm"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libvpx-vp9", rate=10)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            out.start_encoding()
        return path.read_bytes()


def png_bomb(side: int = 100_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


def webm_claiming(seconds: float, data: bytes) -> bytes:
    """``data`` (a WebM) with its Segment Info Duration (element 0x4489, an 8-byte float in ms) set."""
    at = data.find(b"\x44\x89\x88")
    assert at > 0
    return data[:at + 3] + struct.pack(">d", seconds * 1000) + data[at + 11:]


def vp9_claiming(width: int, height: int, data: bytes) -> bytes:
    """``data`` (a profile-0 VP9 WebM) with its first key frame's header claiming width x height."""
    container = av.open(io.BytesIO(data), format="webm")
    first = bytes(next(packet for packet in container.demux(video=0) if packet.size))[:16]
    container.close()
    at = data.find(first)
    bits = int.from_bytes(data[at:at + 9], "big")
    # frame marker..error_resilient (8 bits), sync code (24), colour config (4), then width-1, height-1 (16 each)
    for start, value in ((36, width - 1), (52, height - 1)):
        shift = 72 - start - 16
        bits = (bits & ~(0xFFFF << shift)) | (value << shift)
    return data[:at] + bits.to_bytes(9, "big") + data[at + 9:]


def corrupted(data: bytes) -> bytes:
    """``data`` (an MP4) with bytes of its media data flipped."""
    damaged = bytearray(data)
    box = damaged.find(b"mdat") - 4
    (size,) = struct.unpack(">I", damaged[box:box + 4])
    for index in range(box + 200, box + size, 50):
        damaged[index] ^= 0xFF
    return bytes(damaged)
