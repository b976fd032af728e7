"""Image checks, before anything is written to Redis.

Two stages. ``sniff`` is cheap (size and magic bytes) and runs on every request, so a cache hit never
decodes. ``inspect`` opens and fully decodes the image and runs only when the request will reach a worker
(or asks for near-duplicate matching): the image's header dimensions are checked before any pixel is
decoded, so a decompression bomb is refused without allocating its pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from gateway.errors import PayloadTooLargeError, UnprocessableError, UnsupportedMediaError

# Magic bytes of the three accepted formats -> (Pillow format name, media type).
_JPEG = (b"\xff\xd8\xff", "JPEG", "image/jpeg")
_PNG = (b"\x89PNG\r\n\x1a\n", "PNG", "image/png")


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be."""

    max_bytes: int
    max_pixels: int
    max_aspect_ratio: float


@dataclass(frozen=True)
class ImageInfo:
    """What inspecting an image found."""

    media_type: str
    width: int
    height: int


def sniff(data: bytes, limits: ImageLimits, param: str) -> tuple[str, str]:
    """(Pillow format, media type) from the magic bytes; refuses empty, oversized and other formats."""
    if not data:
        raise UnprocessableError("empty_image", "the image is empty", param)
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError("image_too_large",
                                   f"the image is larger than {limits.max_bytes} bytes", param)
    for magic, fmt, media_type in (_JPEG, _PNG):
        if data.startswith(magic):
            return fmt, media_type
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP", "image/webp"
    raise UnsupportedMediaError("unsupported_image_type", "only JPEG, PNG and WebP images are accepted", param)


def inspect(data: bytes, limits: ImageLimits, param: str) -> ImageInfo:
    """Open and decode the image fully; refuse bombs, odd shapes, animations and corrupt data.

    CPU-bound: call it from a thread pool.
    """
    fmt, media_type = sniff(data, limits, param)
    try:
        with warnings.catch_warnings():
            # Pillow only warns in the band below its hard limit; here that band is refused too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as image:
                _check_shape(image.size, limits, param)
                if getattr(image, "is_animated", False):
                    raise UnprocessableError("animated_image", "animated images are not accepted", param)
                width, height = image.size
                if fmt == "JPEG":
                    # Decoded only to prove the bytes decode: at 1/8 scale libjpeg still reads every coefficient
                    # (truncated or corrupt data is caught as before) but skips most of the IDCT and colour
                    # work, half the cost of a 1080p photo. The size reported is the image's own.
                    image.draft(image.mode, (width // 8, height // 8))
                image.load()
                return ImageInfo(media_type=media_type, width=width, height=height)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLargeError("too_many_pixels", "the image has too many pixels", param) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        # Truncated data, bad chunks, oversized metadata: Pillow raises one of these.
        raise UnprocessableError("corrupt_image", "the image is corrupt or truncated", param) from exc


def _check_shape(size: tuple[int, int], limits: ImageLimits, param: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise UnprocessableError("corrupt_image", "the image has no pixels", param)
    if width * height > limits.max_pixels:
        raise PayloadTooLargeError("too_many_pixels",
                                   f"the image has {width}x{height} pixels; at most {limits.max_pixels} "
                                   "are accepted", param)
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise UnprocessableError("extreme_aspect_ratio",
                                 f"the image's aspect ratio is over {limits.max_aspect_ratio:g}:1", param)
