"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for benchmarks.

Benchmarks on a 2-core machine share the CPU with the server they measure, so the client must cost as
little as possible: requests are pre-built bytes, responses are parsed just enough (status, headers,
Content-Length or chunked body). One ``Connection`` carries one request at a time; concurrency is the
number of connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any


class HttpError(RuntimeError):
    """The server broke the protocol or closed the connection."""


@dataclass
class Response:
    """Status, lower-cased headers and body of one response."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def build_request(method: str, host: str, path: str, body: bytes = b"", content_type: str | None = None,
                  headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one request; build once, send many times."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive connection to ``host:port``; reconnects if the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self._reader, self._writer

    async def send(self, raw: bytes) -> Response:
        """Send pre-built request bytes and read the whole response."""
        reader, writer = await self._open()
        writer.write(raw)
        try:
            response = await _read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise HttpError(f"connection to {self.host}:{self.port} failed: {type(exc).__name__}") from exc
        if response.headers.get("connection", "").lower() == "close":
            await self.close()
        return response

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return await self.send(build_request("GET", f"{self.host}:{self.port}", path, headers=headers))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


async def _read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpError(f"bad status line {status_line!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Response(status=int(parts[1]), headers=headers, body=body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
