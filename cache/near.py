"""Perceptual hashes for the opt-in near-duplicate mode (``cache=near``).

Only a request that asks for ``near`` is ever answered from an entry whose images merely look alike.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import imagehash
from PIL import Image


def phash_hex(data: bytes) -> str:
    """The 64-bit pHash of an encoded image, as 16 hex digits. CPU-bound: call it from a thread."""
    with Image.open(io.BytesIO(data)) as image:
        return str(imagehash.phash(image))


def hamming(a: str, b: str) -> int:
    """Bit distance between two hex pHashes of equal length."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def within(candidate: Sequence[str], wanted: Sequence[str], max_distance: int) -> bool:
    """True when every image of ``candidate`` is within ``max_distance`` bits of its counterpart."""
    if len(candidate) != len(wanted):
        return False
    return all(hamming(a, b) <= max_distance for a, b in zip(candidate, wanted, strict=True))
