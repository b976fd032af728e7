"""Synthetic request content for load tests and benchmarks: images, prompts and multipart bodies.

Everything is generated locally from a seed, so runs are repeatable and no data set is needed. "Distinct"
means distinct *pixels*, not just distinct bytes: vLLM caches processed images and prefixes by pixel
content, so a byte-level trick (a JPEG comment) would make the engine's work unrealistically small.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass

import numpy as np
from PIL import Image

FULL_HD = (1920, 1080)

# Common English words: with a leading space each is one BPE token in Qwen's vocabulary, so a prompt of
# N words is about N tokens (checked against the tiny model's tokenizer: 250 words -> about 256 tokens).
_WORDS = tuple(" ".join((
    "the picture shows a small house near green field with blue sky and white clouds over old red roof",
    "door window tree road car person dog cat bird water river lake mountain hill city street light dark",
    "left right top bottom center corner front back large little bright soft color shape line edge text",
    "sign number letter table chair book paper screen phone hand face eye hair shirt coat hat bag box",
)).split(" "))


@dataclass(frozen=True)
class Upload:
    """One encoded image and its media type."""

    data: bytes
    media_type: str = "image/jpeg"


def _encode(pixels: np.ndarray, fmt: str = "JPEG", quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, "RGB")
    if fmt == "JPEG":
        image.save(buffer, format=fmt, quality=quality)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def photo_pixels(seed: int, size: tuple[int, int] = FULL_HD) -> np.ndarray:
    """Photo-like pixels: smooth random color fields plus sensor-like noise (JPEG sizes like a photo's)."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, size=(max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.int16)
    noise = rng.integers(-10, 11, size=smooth.shape, dtype=np.int16)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def photo_jpeg(seed: int, size: tuple[int, int] = FULL_HD, quality: int = 85) -> bytes:
    """A photo-like JPEG whose pixels are determined by ``seed``."""
    return _encode(photo_pixels(seed, size), "JPEG", quality)


class DistinctPhotos:
    """Cheap stream of pixel-distinct photo-like JPEGs: one textured base, a unique patch per image.

    Each image differs from the base in a random block of random colors, so every image has its own
    content digest, pHash and vLLM multimodal hash; only the JPEG encode (about 20 ms at 1080p) is paid
    per image.
    """

    def __init__(self, seed: int = 0, size: tuple[int, int] = FULL_HD, quality: int = 85) -> None:
        self._base = photo_pixels(seed, size)
        self._rng = np.random.default_rng(seed + 1)
        self._quality = quality

    def next(self) -> bytes:
        pixels = self._base.copy()
        height, width, _ = pixels.shape
        side = max(8, min(width, height) // 4)
        top = int(self._rng.integers(0, height - side + 1))
        left = int(self._rng.integers(0, width - side + 1))
        pixels[top:top + side, left:left + side] = self._rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8).repeat(
            side // 4 + 1, axis=0).repeat(side // 4 + 1, axis=1)[:side, :side]
        return _encode(pixels, "JPEG", self._quality)


def noise_png(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    """A small PNG of random pixels: distinct per seed, cheap to make (well under a millisecond)."""
    rng = np.random.default_rng(seed)
    width, height = size
    return _encode(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "PNG")


def solid_jpeg(color: tuple[int, int, int], size: tuple[int, int] = (640, 480)) -> bytes:
    """A one-color JPEG: the fixed images of cache-hit traffic."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def prompt(words: int = 250, seed: int | None = None) -> str:
    """A prompt of about ``words`` tokens, random words from a fixed list (``seed`` makes it repeatable)."""
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(63))
    picked = rng.integers(0, len(_WORDS), size=words)
    return "Describe this image. " + " ".join(_WORDS[int(index)] for index in picked)


def multipart(fields: dict[str, str], images: list[Upload]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with the text ``fields`` and ``images`` in the ``image`` field.

    Returns (body, content type). Built by hand so every client (locust, the raw benchmark client)
    sends byte-identical requests.
    """
    boundary = secrets.token_hex(16)
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode() + b"\r\n")
    for index, upload in enumerate(images):
        extension = upload.media_type.rsplit("/", 1)[-1]
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="image{index}.{extension}"'
                f"\r\nContent-Type: {upload.media_type}\r\n\r\n")
        parts.append(head.encode() + upload.data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
