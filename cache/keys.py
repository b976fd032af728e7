"""Exact cache keys.

A key is a BLAKE3 hash (256 bits) over a canonical JSON document of everything that decides the answer:
the cache scope (tenant), the model id, the prompt, the sampling parameters and the content digest of each
image, in order. Digests are taken of the uploaded bytes, so a repeated upload costs no image decode.

Perceptual hashes never enter these keys: two invoice screenshots that differ by one digit share a pHash,
and answering one from the other's cache entry would be a wrong answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from blake3 import blake3

from worker.contract import SamplingParams

KEY_VERSION = 1


def image_digest(data: bytes) -> str:
    """Content digest of an uploaded image's bytes (hex BLAKE3-256)."""
    return blake3(data).hexdigest()


def _canonical(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def cache_key(*, scope: str, model: str, prompt: str, sampling: SamplingParams,
              image_digests: Sequence[str]) -> str:
    """The exact cache key of a request (hex BLAKE3-256)."""
    doc: dict[str, object] = {
        "v": KEY_VERSION, "scope": scope, "model": model, "prompt": prompt,
        "sampling": sampling.model_dump(mode="json"), "images": list(image_digests),
    }
    return blake3(_canonical(doc)).hexdigest()


def near_bucket(*, scope: str, model: str, prompt: str, sampling: SamplingParams, image_count: int) -> str:
    """Everything of the key but the images: near-duplicate matching compares pHashes inside one bucket."""
    doc: dict[str, object] = {
        "v": KEY_VERSION, "scope": scope, "model": model, "prompt": prompt,
        "sampling": sampling.model_dump(mode="json"), "image_count": image_count,
    }
    return blake3(_canonical(doc)).hexdigest()
