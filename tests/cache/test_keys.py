"""Exact cache keys: every input that decides the answer changes the key; nothing else does."""

from __future__ import annotations

from cache.keys import cache_key, image_digest, near_bucket
from cache.near import hamming, within
from worker.contract import SamplingParams

BASE = {"scope": "tenant:a", "model": "m", "prompt": "p", "sampling": SamplingParams(),
        "image_digests": [image_digest(b"one"), image_digest(b"two")]}


def test_key_is_stable_and_256_bits() -> None:
    assert cache_key(**BASE) == cache_key(**BASE)
    assert len(cache_key(**BASE)) == 64
    assert len(image_digest(b"x")) == 64


def test_every_input_changes_the_key() -> None:
    variants = [
        {"scope": "tenant:b"}, {"model": "m2"}, {"prompt": "p "},
        {"sampling": SamplingParams(temperature=0.5)}, {"sampling": SamplingParams(max_tokens=17)},
        {"sampling": SamplingParams(seed=1)}, {"sampling": SamplingParams(top_p=0.9)},
        {"image_digests": list(reversed(BASE["image_digests"]))},
        {"image_digests": [image_digest(b"one"), image_digest(b"twO")]},
        {"image_digests": BASE["image_digests"][:1]},
    ]
    keys = {cache_key(**{**BASE, **variant}) for variant in variants}
    assert len(keys) == len(variants)
    assert cache_key(**BASE) not in keys


def test_near_bucket_ignores_images_but_not_their_count() -> None:
    common = {k: v for k, v in BASE.items() if k != "image_digests"}
    assert near_bucket(image_count=2, **common) == near_bucket(image_count=2, **common)
    assert near_bucket(image_count=2, **common) != near_bucket(image_count=1, **common)


def test_hamming_and_within() -> None:
    assert hamming("ff00", "ff01") == 1
    assert hamming("0000", "ffff") == 16
    assert within(["ff00"], ["ff03"], 2)
    assert not within(["ff00"], ["ff07"], 2)
    assert not within(["ff00"], ["ff00", "ff00"], 64)
