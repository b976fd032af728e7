"""Narrowing Redis replies: redis-py types every reply as ``bytes | str``; vlq's clients return bytes."""

from __future__ import annotations


def as_text(value: object) -> str:
    """A reply as text ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode()
    return str(value)


def as_bytes(value: object) -> bytes:
    """A reply as bytes."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"unexpected Redis reply {type(value).__name__}")
