"""Exact cache keys.

A key is a BLAKE3 hash (256 bits) over a canonical JSON document of everything the model sees and
everything that decides the answer: the cache scope (tenant), the model id, the whole conversation (roles,
order, texts, and the content digest of each image in its place), the task, the response format and the
sampling parameters. Digests are taken of the uploaded bytes, so a repeated upload costs no image decode.

Perceptual hashes never enter these keys: two invoice screenshots that differ by one digit share a pHash,
and answering one from the other's cache entry would be a wrong answer.

Fed plain values (dicts and lists), so this package depends on nothing else of vlq.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from blake3 import blake3

# 2: conversations, task and response format joined the key (1 was prompt + images).
KEY_VERSION = 2


def image_digest(data: bytes) -> str:
    """Content digest of an uploaded image's bytes (hex BLAKE3-256)."""
    return blake3(data).hexdigest()


def _canonical(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def cache_key(*, scope: str, model: str, conversation: Sequence[Mapping[str, object]], task: str,
              response_format: Mapping[str, object], sampling: Mapping[str, object]) -> str:
    """The exact cache key of a request (hex BLAKE3-256).

    ``conversation`` is the list of turns, each ``{"role", "content": [parts]}`` with every image part
    carrying its image's digest: a different history, image or order is a different key.
    """
    doc = {"v": KEY_VERSION, "scope": scope, "model": model, "conversation": list(conversation), "task": task,
           "response_format": response_format, "sampling": sampling}
    return blake3(_canonical(doc)).hexdigest()


def near_bucket(*, scope: str, model: str, conversation: Sequence[Mapping[str, object]], task: str,
                response_format: Mapping[str, object], sampling: Mapping[str, object]) -> str:
    """Everything of the key but the images' content: near matching compares pHashes inside one bucket.

    Image parts keep their places (and so their count) but lose their digests.
    """
    blind = [{**turn, "content": [_blind(part) for part in _parts(turn)]} for turn in conversation]
    doc = {"v": KEY_VERSION, "near": True, "scope": scope, "model": model, "conversation": blind, "task": task,
           "response_format": response_format, "sampling": sampling}
    return blake3(_canonical(doc)).hexdigest()


def _parts(turn: Mapping[str, object]) -> list[Mapping[str, object]]:
    content = turn.get("content")
    return list(content) if isinstance(content, list) else []


def _blind(part: Mapping[str, object]) -> Mapping[str, object]:
    return {"type": "image"} if part.get("type") == "image" else part
