"""A streaming ``multipart/form-data`` reader for ``POST /api/infer``: text fields and image files in memory,
each file hashed as it is complete.

Starlette's parser (python-multipart) calls back per header and per data slice and spools every file into a
``SpooledTemporaryFile`` that the route then reads back: on a cache hit of a 1080p JPEG that was most of the
request's CPU. Here each chunk is searched with ``bytes.find`` for the delimiter, a file's bytes are kept as
views of the chunks they came in (at most ``max_file_bytes + 1`` bytes: more is refused later as too large,
and never kept), joined once, and hashed once complete (the digest the cache key needs, no second pass).

Refusals raise ``FormError`` (the route answers 400 ``malformed_multipart``): no boundary, a part without
headers or a name, a form that ends before its close delimiter, more files or fields than allowed, a text
field over its cap or not UTF-8. Media and file uploads, which may be large and go to disk, keep Starlette's
parser.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from cache.keys import image_digest

_PARAM = re.compile(r';\s*([A-Za-z0-9_*.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_MAX_HEADER_BYTES = 8192
_MAX_PREAMBLE_BYTES = 1024
_LONG_HEADERS = f"a part's headers are longer than {_MAX_HEADER_BYTES} bytes"
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,./:=?-]{1,70}$|^[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]$")


class FormError(ValueError):
    """The body is not a well-formed form within the limits; ``message`` says what is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FormLimits:
    """How much one form may hold."""

    max_files: int
    max_fields: int
    max_field_bytes: int
    max_file_bytes: int


@dataclass
class FilePart:
    """An uploaded file: its bytes (cut at ``max_file_bytes + 1``) and their BLAKE3 hex digest."""

    name: str
    data: bytes
    digest: str


@dataclass
class Form:
    """The parts in the order they came: ``(name, text)`` for fields, ``FilePart`` for files."""

    items: list[tuple[str, str] | FilePart] = field(default_factory=list)


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a ``multipart/form-data`` content type."""
    text = _params(content_type).get("boundary")
    if text is None:
        raise FormError("the multipart content type has no boundary")
    if not _BOUNDARY.match(text):
        raise FormError("the multipart boundary is malformed")
    return text.encode("ascii")


def _params(header: str) -> dict[str, str]:
    """The ``key=value`` parameters after a header's first ``;``, keys lower-cased, values unquoted."""
    return {key.lower(): _unquote(value.strip()) for key, value in _PARAM.findall(";" + header.partition(";")[2])}


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


@dataclass
class _Part:
    name: str
    is_file: bool


class _Reader:
    """The parser's state between chunks: which part the next bytes belong to, and the few bytes held back.

    Framing (preamble, delimiters, header blocks) is parsed from the chunk itself, with at most a header
    block's worth of bytes held over from the previous chunk. A part's bytes are kept as views of the chunks
    they came in and joined once when the part ends; only its last ``len(delimiter) - 1`` bytes are held back,
    since a delimiter may start there and end in the next chunk.
    """

    def __init__(self, boundary: bytes, limits: FormLimits) -> None:
        self.limits = limits
        self.first = b"--" + boundary
        self.delimiter = b"\r\n--" + boundary
        self.keep = len(self.delimiter) - 1
        self.held = b""  # framing bytes waiting for the rest of their line or block
        self.part: _Part | None = None
        self.pieces: list[bytes | memoryview] = []
        self.size = 0
        self.tail = b""  # the open part's last bytes, which could begin a delimiter
        self.started = False
        self.ended = False
        self.form = Form()
        self.files = 0
        self.fields = 0

    def feed(self, chunk: bytes) -> None:
        # Bytes after the close delimiter (the epilogue) are ignored, as RFC 2046 says.
        source, self.held = (self.held + chunk if self.held else chunk), b""
        pos: int | None = 0
        while pos is not None and pos < len(source) and not self.ended:
            pos = self._frame(source, pos) if self.part is None else self._body(source, pos)

    def _frame(self, source: bytes, pos: int) -> int | None:
        """The first delimiter, or after a delimiter the close mark or a part's header block; None when the
        rest of ``source`` is held for the next chunk."""
        if not self.started:
            return self._preamble(source, pos)
        if len(source) - pos < 2:
            return self._hold(source, pos, _MAX_HEADER_BYTES, _LONG_HEADERS)
        if source.startswith(b"--", pos):
            self.ended = True
            return None
        end = source.find(b"\r\n\r\n", pos)
        if end < 0:
            return self._hold(source, pos, _MAX_HEADER_BYTES, _LONG_HEADERS)
        if end - pos > _MAX_HEADER_BYTES:
            raise FormError(_LONG_HEADERS)
        self.part = self._open(source[pos:end])
        return end + 4

    def _preamble(self, source: bytes, pos: int) -> int | None:
        if source.startswith(self.first, pos):
            self.started = True
            return pos + len(self.first)
        at = source.find(self.delimiter, pos)
        if at < 0:
            return self._hold(source, pos, _MAX_PREAMBLE_BYTES, "no multipart boundary found in the body")
        self.started = True
        return at + len(self.delimiter)

    def _hold(self, source: bytes, pos: int, cap: int, refusal: str) -> int | None:
        """Keep the rest of ``source`` for the next chunk (None: nothing more to parse in this one)."""
        if len(source) - pos > cap:
            raise FormError(refusal)
        self.held = source[pos:]
        return None

    def _open(self, block: bytes) -> _Part:
        lines = block.split(b"\r\n")
        # Transport padding (spaces, tabs) may follow the delimiter before its line break.
        if lines[0].strip(b" \t"):
            raise FormError("garbage after a multipart boundary")
        disposition = None
        for line in lines[1:]:
            header, colon, value = line.partition(b":")
            if not colon:
                raise FormError("a part header without a colon")
            if header.strip().lower() == b"content-disposition":
                disposition = value.decode("latin-1").strip()
        if disposition is None:
            raise FormError("a part without a Content-Disposition header")
        params = _params(disposition)
        if not disposition.lower().startswith("form-data") or not params.get("name"):
            raise FormError("a part without a field name")
        name = _field_name(params["name"])
        is_file = "filename" in params or "filename*" in params
        self._count(is_file)
        return _Part(name=name, is_file=is_file)

    def _count(self, is_file: bool) -> None:
        if is_file:
            self.files += 1
            if self.files > self.limits.max_files:
                raise FormError(f"too many files: at most {self.limits.max_files}")
        else:
            self.fields += 1
            if self.fields > self.limits.max_fields:
                raise FormError(f"too many fields: at most {self.limits.max_fields}")

    def _body(self, source: bytes, pos: int) -> int | None:
        """The open part's bytes up to its delimiter: the position after it, or None when ``source`` ended
        first."""
        if self.tail:
            # A delimiter that starts in the held-back bytes and ends in this chunk.
            held = len(self.tail)
            window = self.tail + source[pos:pos + self.keep]
            at = window.find(self.delimiter)
            if 0 <= at < held:
                self._take(window[:at])
                self._end_part()
                return pos + at + len(self.delimiter) - held
        at = source.find(self.delimiter, pos)
        if at >= 0:
            self._take(self.tail)
            self._take(memoryview(source)[pos:at])
            self._end_part()
            return at + len(self.delimiter)
        if len(source) - pos >= self.keep:
            self._take(self.tail)
            self._take(memoryview(source)[pos:len(source) - self.keep])
            self.tail = source[len(source) - self.keep:]
        else:
            combined = self.tail + source[pos:]
            self._take(combined[:-self.keep])
            self.tail = combined[-self.keep:]
        return None

    def _take(self, piece: bytes | memoryview) -> None:
        part = self.part
        assert part is not None
        cap = self.limits.max_file_bytes + 1 if part.is_file else self.limits.max_field_bytes
        if self.size + len(piece) > cap:
            if not part.is_file:
                raise FormError(f"field {part.name!r} is longer than {cap} bytes")
            piece = piece[:cap - self.size]  # enough to refuse the file as too large; the rest is not kept
        if piece:
            self.pieces.append(piece)
            self.size += len(piece)

    def _end_part(self) -> None:
        part = self.part
        assert part is not None
        data = b"".join(self.pieces)
        self.part, self.pieces, self.size, self.tail = None, [], 0, b""
        self._close(part, data)

    def _close(self, part: _Part, data: bytes) -> None:
        if part.is_file:
            # One BLAKE3 call over the whole file: fed chunk by chunk (4-64 KiB) it cost 3-5 times as much.
            self.form.items.append(FilePart(name=part.name, data=data, digest=image_digest(data)))
            return
        try:
            self.form.items.append((part.name, data.decode("utf-8")))
        except UnicodeDecodeError as exc:
            raise FormError(f"field {part.name!r} is not valid UTF-8") from exc


def _field_name(raw: str) -> str:
    # Header values were decoded as Latin-1; a UTF-8 field name is decoded as such when it is one.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


async def read_form(content_type: str, stream: AsyncIterator[bytes], limits: FormLimits) -> Form:
    """Parse a ``multipart/form-data`` body as it streams in."""
    reader = _Reader(boundary_of(content_type), limits)
    async for chunk in stream:
        if chunk:
            reader.feed(chunk)
    if not reader.ended:
        raise FormError("the form ended before its closing boundary")
    return reader.form
