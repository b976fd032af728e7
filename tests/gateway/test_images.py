"""Full validation of an inline image (``gateway.images.inspect``): a JPEG is decoded at reduced scale, which
must change neither the size it reports nor what it refuses."""

from __future__ import annotations

import pytest

from gateway.errors import UnprocessableError
from gateway.images import ImageLimits, inspect
from tests.conftest import make_image

LIMITS = ImageLimits(max_bytes=20 << 20, max_pixels=40_000_000, max_aspect_ratio=20.0)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_the_size_reported_is_the_images_own(fmt: str) -> None:
    info = inspect(make_image((200, 30, 90), size=(1917, 1083), fmt=fmt), LIMITS, "image")
    assert (info.width, info.height) == (1917, 1083)


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_a_truncated_jpeg_is_refused_at_reduced_scale_too(cut: float) -> None:
    data = make_image((10, 200, 30), size=(1920, 1080), fmt="JPEG", text="0123456789")
    with pytest.raises(UnprocessableError):
        inspect(data[:int(len(data) * cut)], LIMITS, "image")
