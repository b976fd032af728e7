"""Exact cache keys: every input that decides the answer changes the key; nothing else does."""

from __future__ import annotations

from cache.keys import cache_key, image_digest, near_bucket
from cache.near import hamming, within

ONE, TWO = image_digest(b"one"), image_digest(b"two")


def turn(role: str, *parts: dict) -> dict:
    return {"role": role, "content": list(parts)}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image(digest: str) -> dict:
    return {"type": "image", "digest": digest}


SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 256, "seed": None}
BASE = {"scope": "tenant:a", "model": "m", "task": "vqa", "response_format": {"type": "text"},
        "sampling": SAMPLING,
        "conversation": [turn("user", image(ONE), text("p")), turn("assistant", text("a")),
                         turn("user", image(TWO), text("q"))]}


def test_key_is_stable_and_256_bits() -> None:
    assert cache_key(**BASE) == cache_key(**BASE)
    assert len(cache_key(**BASE)) == 64
    assert len(image_digest(b"x")) == 64


def test_every_input_changes_the_key() -> None:
    conv = BASE["conversation"]
    variants = [
        {"scope": "tenant:b"}, {"model": "m2"}, {"task": "ocr"},
        {"response_format": {"type": "json_object"}},
        {"sampling": {**SAMPLING, "temperature": 0.5}}, {"sampling": {**SAMPLING, "max_tokens": 17}},
        {"sampling": {**SAMPLING, "seed": 1}}, {"sampling": {**SAMPLING, "top_p": 0.9}},
        {"conversation": [turn("user", image(ONE), text("p ")), *conv[1:]]},  # an earlier turn's text
        {"conversation": [conv[0], turn("assistant", text("b")), conv[2]]},  # an earlier answer
        {"conversation": [turn("system", text("s")), *conv]},  # a system prompt
        {"conversation": [turn("user", image(TWO), text("p")), conv[1], turn("user", image(ONE), text("q"))]},
        {"conversation": [turn("user", image(image_digest(b"onE")), text("p")), *conv[1:]]},
        {"conversation": [turn("user", text("p"), image(ONE)), *conv[1:]]},  # image after the text
        {"conversation": conv[2:]},  # a shorter history
    ]
    keys = {cache_key(**{**BASE, **variant}) for variant in variants}
    assert len(keys) == len(variants)
    assert cache_key(**BASE) not in keys


def test_near_bucket_ignores_image_content_but_not_places() -> None:
    other = {**BASE, "conversation": [turn("user", image(TWO), text("p")), BASE["conversation"][1],
                                      turn("user", image(ONE), text("q"))]}
    assert near_bucket(**BASE) == near_bucket(**other)
    assert cache_key(**BASE) != cache_key(**other)
    fewer = {**BASE, "conversation": [turn("user", text("p")), *BASE["conversation"][1:]]}
    assert near_bucket(**BASE) != near_bucket(**fewer)
    assert near_bucket(**BASE) != cache_key(**BASE)


def test_hamming_and_within() -> None:
    assert hamming("ff00", "ff01") == 1
    assert hamming("0000", "ffff") == 16
    assert within(["ff00"], ["ff03"], 2)
    assert not within(["ff00"], ["ff07"], 2)
    assert not within(["ff00"], ["ff00", "ff00"], 64)
