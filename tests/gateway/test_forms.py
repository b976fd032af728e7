"""The streaming multipart reader: the same parts as Starlette's parser however the body is cut into chunks,
the digest of every file, its caps and its refusals."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from blake3 import blake3
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from gateway.forms import FilePart, Form, FormError, FormLimits, boundary_of, read_form

BOUNDARY = "vlq-test-boundary-1234"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
LIMITS = FormLimits(max_files=4, max_fields=11, max_field_bytes=70_000, max_file_bytes=1 << 20)


def field(name: str, value: bytes) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"


def file(name: str, data: bytes, filename: str = "a.png") -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n")
    return head.encode() + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def _chunks(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    at = 0
    for size in sizes:
        yield data[at:at + size]
        at += size
    yield data[at:]
    yield b""  # Starlette's request.stream() ends with an empty chunk


def parse(data: bytes, sizes: list[int] | None = None, limits: FormLimits = LIMITS,
          content_type: str = CONTENT_TYPE) -> Form:
    return asyncio.run(read_form(content_type, _chunks(data, sizes or []), limits))


def items(form: Form) -> list[tuple[str, str | bytes]]:
    return [(item.name, item.data) if isinstance(item, FilePart) else item for item in form.items]


def starlette_items(data: bytes) -> list[tuple[str, str | bytes]]:
    async def run() -> list[tuple[str, str | bytes]]:
        parser = MultiPartParser(Headers({"content-type": CONTENT_TYPE}), _chunks(data, []))
        form = await parser.parse()
        found: list[tuple[str, str | bytes]] = []
        for name, value in form.multi_items():
            found.append((name, await value.read() if isinstance(value, UploadFile) else value))
        await form.close()
        return found

    return asyncio.run(run())


def random_form(rng: random.Random) -> bytes:
    parts = []
    for index in range(rng.randint(1, 4)):
        # Bytes that look like the start of a delimiter, to be split across chunks.
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 3000))) + b"\r\n--vlq-test-bound"
        parts.append(file("image", payload) if rng.random() < 0.5 else field(f"f{index}", b"text \xc3\xa9 " * 5))
    return body(*parts)


@pytest.mark.parametrize("seed", range(12))
def test_same_parts_as_starlette_however_the_body_is_cut(seed: int) -> None:
    rng = random.Random(seed)
    data = random_form(rng)
    expected = starlette_items(data)
    cuts = sorted(rng.sample(range(1, len(data)), k=min(40, len(data) - 1)))
    sizes = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
    assert items(parse(data)) == expected
    assert items(parse(data, sizes)) == expected
    assert items(parse(data, [1] * len(data))) == expected  # one byte at a time


def test_each_file_carries_its_blake3_digest() -> None:
    first, second = b"\x89PNG first" * 1000, b"\xff\xd8 second" * 999
    form = parse(body(field("prompt", b"hi"), file("image", first), file("image", second)), [700, 1, 5000])
    files = [item for item in form.items if isinstance(item, FilePart)]
    assert [f.digest for f in files] == [blake3(first).hexdigest(), blake3(second).hexdigest()]
    assert [f.data for f in files] == [first, second]
    assert form.items[0] == ("prompt", "hi")


def test_a_file_over_its_cap_is_kept_only_to_one_byte_over() -> None:
    limits = FormLimits(max_files=4, max_fields=11, max_field_bytes=100, max_file_bytes=1000)
    form = parse(body(file("image", b"x" * 50_000), field("prompt", b"after")), [333] * 100, limits)
    assert isinstance(form.items[0], FilePart) and form.items[0].data == b"x" * 1001
    assert form.items[1] == ("prompt", "after")


def test_preamble_epilogue_padding_and_quoted_boundary() -> None:
    data = (b"a preamble\r\n" + body(field("prompt", b"hi")).replace(b"\r\nContent", b"  \r\nContent", 1)
            + b"epilogue --garbage")
    assert items(parse(data, content_type=f'multipart/form-data; charset=utf-8; boundary="{BOUNDARY}"')) == [
        ("prompt", "hi")]


@pytest.mark.parametrize(("data", "message"), [
    (b"no boundary at all" * 100, "no multipart boundary"),
    (field("prompt", b"hi"), "ended before its closing boundary"),  # no close delimiter
    (f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--".encode(), "without a colon"),
    (f"--{BOUNDARY}\r\n\r\nx\r\n--{BOUNDARY}--".encode(), "without a Content-Disposition"),
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--".encode(), "without a field name"),
    (f"--{BOUNDARY}junk\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
     "garbage after"),
    (f"--{BOUNDARY}\r\nX-Long: {'h' * 9000}\r\n\r\nx\r\n--{BOUNDARY}--".encode(), "headers are longer than 8192"),
    (body(*[file("image", b"x")] * 5), "too many files"),
    (body(*[field(f"f{n}", b"1") for n in range(12)]), "too many fields"),
    (body(field("prompt", b"x" * 70_001)), "longer than 70000 bytes"),
    (body(field("prompt", b"caf\xe9")), "not valid UTF-8"),
])
def test_refusals(data: bytes, message: str) -> None:
    for sizes in ([], [7] * (len(data) // 7)):
        with pytest.raises(FormError, match=message):
            parse(data, sizes)


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=",
                                          'multipart/form-data; boundary="bad\x00"'])
def test_a_content_type_without_a_usable_boundary_is_refused(content_type: str) -> None:
    with pytest.raises(FormError, match="boundary"):
        boundary_of(content_type)
