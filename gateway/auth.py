"""API keys per tenant.

Keys are stored hashed (SHA-256; keys are long random tokens, so a fast hash is enough) in a JSON file —
in Kubernetes, a mounted Secret — shaped ``{"tenant": ["sha256:<hex>", ...]}``; several keys per tenant
let a key be rotated without downtime. A presented key is hashed and compared against every stored hash
in constant time. Auth is off only when ``VLQ_GATEWAY_AUTH_ENABLED=false`` says so.

``python -m gateway.auth new`` prints a fresh key and the line to store for it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import Headers

from gateway.errors import UnauthorizedError

OPEN_TENANT = "public"
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")


class KeyFileError(ValueError):
    """The API key file is missing or malformed."""


@dataclass(frozen=True)
class Keyring:
    """Hashed keys and their tenants; ``open`` means auth is off."""

    entries: tuple[tuple[bytes, str], ...]
    open: bool = False

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise KeyFileError(f"cannot read API key file {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise KeyFileError("the API key file must map tenant names to lists of key hashes")
        return cls(entries=tuple(_entries(raw)))

    def tenant_for(self, key: str) -> str | None:
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for stored, tenant in self.entries:  # no early exit: the time taken says nothing about the match
            if hmac.compare_digest(stored, digest):
                found = tenant
        return found


def _entries(raw: dict[str, object]) -> list[tuple[bytes, str]]:
    entries = []
    for tenant, hashes in raw.items():
        if not _TENANT.fullmatch(tenant) or not isinstance(hashes, list):
            raise KeyFileError(f"bad tenant entry {tenant!r}: names are [A-Za-z0-9_-], values lists")
        for value in hashes:
            match = _HASH.fullmatch(str(value))
            if match is None:
                raise KeyFileError(f"tenant {tenant!r}: key hashes look like 'sha256:<64 hex>'")
            entries.append((bytes.fromhex(match.group(1)), tenant))
    return entries


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def presented_key(headers: Headers) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``."""
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get("x-api-key") or None


def resolve_tenant(keyring: Keyring, headers: Headers) -> str:
    """The tenant of the request; 401 when the key is missing or unknown."""
    if keyring.open:
        return OPEN_TENANT
    key = presented_key(headers)
    challenge = {"WWW-Authenticate": "Bearer"}
    if key is None:
        raise UnauthorizedError("missing_api_key", "an API key is required (Authorization: Bearer <key>)",
                                None, challenge)
    tenant = keyring.tenant_for(key)
    if tenant is None:
        raise UnauthorizedError("invalid_api_key", "the API key is not valid", None, challenge)
    return tenant


def main() -> None:
    """``new``: print a fresh key and its stored hash; ``hash KEY``: print the stored hash of KEY."""
    args = sys.argv[1:]
    if args[:1] == ["new"]:
        key = "vlq_" + secrets.token_urlsafe(32)
        print(f"key:  {key}\nhash: {hash_key(key)}")
    elif args[:1] == ["hash"] and len(args) == 2:
        print(hash_key(args[1]))
    else:
        sys.exit("usage: python -m gateway.auth new | hash KEY")


if __name__ == "__main__":
    main()
