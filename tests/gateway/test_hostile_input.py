"""Hostile and broken input to ``POST /api/infer`` and ``GET /api/result``.

Every refusal must be an exact 4xx in the one error envelope, carry no traceback, and write nothing to Redis:
the keys after the request are the keys before it (bar the janitor's lock, which it takes on a timer). The
control test shows that check can fail: an accepted request does write ``rq:*`` and ``vlq:*`` keys. Images
are built here, small on the wire: Pillow for ordinary files, zlib and struct for the ones Pillow would refuse
to write.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import random
import socket
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from redis import Redis

from gateway.app import create_app
from gateway.config import GatewaySettings
from tests.conftest import free_port
from tests.gateway.conftest import Check, redis_keys

BOUNDARY = "vlq-hostile-7d1f0c"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
DEFAULTS = {name: field.default for name, field in GatewaySettings.model_fields.items()}  # the limits tested
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# Each case takes well under a second; a hang (a body read that never times out) fails fast instead.
pytestmark = pytest.mark.timeout(30)


# --- what a refusal must look like -------------------------------------------------------------------------

# --- request builders --------------------------------------------------------------------------------------

def text_part(name: str, value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + raw + b"\r\n"


def file_part(data: bytes, name: str = "image", content_type: str = "image/png") -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="upload"\r\n'
            f"Content-Type: {content_type}\r\n\r\n")
    return head.encode() + data + b"\r\n"


def form_body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post_form(client: TestClient, *parts: bytes) -> httpx.Response:
    return client.post("/api/infer", content=form_body(*parts), headers={"content-type": MULTIPART})


def post_image(client: TestClient, data: bytes, content_type: str = "image/png", **fields: str) -> httpx.Response:
    return client.post("/api/infer", data={"prompt": "What is this?", **fields},
                       files=[("image", ("upload", data, content_type))])


def post_json(client: TestClient, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/api/infer", content=content, headers={"content-type": "application/json"})


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


# --- image builders ----------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zlib_png(width: int, height: int, extra: bytes = b"") -> bytes:
    """A valid 1-bit grayscale PNG of zero rows in one IDAT: 20000x20000 compresses to about 48 KB."""
    row = bytes(1 + (width + 7) // 8)
    deflate = zlib.compressobj(9)
    block = row * 256
    idat = b"".join(deflate.compress(block[:len(row) * min(256, height - done)]) for done in range(0, height, 256))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (PNG_MAGIC + png_chunk(b"IHDR", header) + extra + png_chunk(b"IDAT", idat + deflate.flush())
            + png_chunk(b"IEND", b""))


def noise(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Incompressible pixels, so a file cut in half loses image data and not just a trailer."""
    return Image.frombytes("RGB", size, random.Random(size[0]).randbytes(size[0] * size[1] * 3))


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def animation(fmt: str, frames: int = 1001) -> bytes:
    # Distinct colours: Pillow merges identical consecutive frames.
    images = [Image.new("RGB", (8, 8), (n % 256, n // 256, 0)) for n in range(frames)]
    options = {"lossless": True} if fmt == "WEBP" else {}
    return encode(images[0], fmt, save_all=True, append_images=images[1:], **options)


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat.png", b"not really")
    return buffer.getvalue()


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# --- control: the checks above can fail --------------------------------------------------------------------

def test_control_accepted_request_writes_redis(client: TestClient, redis_client: Redis) -> None:
    image = zlib_png(64, 32)
    with Image.open(io.BytesIO(image)) as opened:
        assert opened.size == (64, 32)
    response = post_image(client, image)
    assert response.status_code == 202, response.text
    written = {key.decode().rsplit(":", 1)[0] for key in redis_keys(redis_client)}
    assert {"rq:job", "rq:queue:vlq-infer", "vlq:req", "vlq:img"} <= written


# --- request bodies: size and speed ------------------------------------------------------------------------

def _over_limit_body(kind: str) -> tuple[bytes, str]:
    if kind == "json":
        return json.dumps({"prompt": "x" * 4000, "images": []}).encode(), "application/json"
    return form_body(text_part("prompt", "hi"), file_part(encode(noise(), "PNG"))), MULTIPART


@pytest.mark.parametrize("kind", ["json", "multipart"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_limit(client_factory: Callable[..., TestClient], refused: Check, kind: str,
                         chunked: bool) -> None:
    client = client_factory(max_body_bytes=2048)
    body, content_type = _over_limit_body(kind)
    assert len(body) > 2048
    pieces = (body[start:start + 512] for start in range(0, len(body), 512))  # no Content-Length: chunked
    response = client.post("/api/infer", content=pieces if chunked else body, headers={"content-type": content_type})
    assert ("content-length" in response.request.headers) is not chunked
    refused(response, 413, "body_too_large", None)
    assert response.headers["connection"] == "close"


@pytest.fixture
def live_port(settings_factory: Callable[..., GatewaySettings]) -> Iterator[int]:
    """A real uvicorn server in a thread: TestClient reads a streamed body whole, so it cannot stall one."""
    port = free_port()
    app = create_app(settings_factory(body_read_timeout_s=0.3, body_deadline_s=1.0))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(timeout=5)


_STALLS = {
    # Declares 1000 bytes, sends 10, then goes quiet.
    "json-content-length": b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"prompt\":",
    # One chunk of a chunked multipart body, then nothing.
    "multipart-chunked": (f"Content-Type: {MULTIPART}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                          + b"%x\r\n" % len(text_part("prompt", "hi")) + text_part("prompt", "hi") + b"\r\n"),
}


@pytest.mark.parametrize("stall", sorted(_STALLS))
def test_stalled_body_times_out(live_port: int, refused: Check, stall: str) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", live_port), timeout=5) as sock:
        sock.sendall(b"POST /api/infer HTTP/1.1\r\nHost: gateway\r\n" + _STALLS[stall])
        raw = http.client.HTTPResponse(sock)
        raw.begin()
        response = httpx.Response(raw.status, headers=raw.getheaders(), content=raw.read())
    elapsed = time.monotonic() - started
    refused(response, 408, "body_timeout", None)
    assert response.headers["connection"] == "close"
    assert 0.3 <= elapsed < 3.0  # the gateway's 0.3 s read timeout answered, not the socket's 5 s


def test_trickled_body_hits_the_whole_body_deadline(live_port: int, refused: Check) -> None:
    # Slowloris: every read arrives within the 0.3 s read timeout, but the body never ends.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", live_port), timeout=5) as sock:
        sock.sendall(b"POST /api/infer HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        with contextlib.suppress(OSError):  # the server may close while we still trickle
            for _ in range(40):
                sock.sendall(b" ")
                time.sleep(0.1)
                if time.monotonic() - started > 3:
                    break
        raw = http.client.HTTPResponse(sock)
        raw.begin()
        response = httpx.Response(raw.status, headers=raw.getheaders(), content=raw.read())
    refused(response, 408, "body_timeout", None)


# --- pixels and shapes -------------------------------------------------------------------------------------

def test_decompression_bomb(client: TestClient, refused: Check) -> None:
    bomb = zlib_png(20000, 20000)
    assert len(bomb) < 64 * 1024  # 400 megapixels in a few dozen KB
    refused(post_image(client, bomb), 413, "too_many_pixels", "image[0]")


def test_pillow_warning_band_is_refused(client_factory: Callable[..., TestClient], refused: Check) -> None:
    # Over Pillow's warning threshold but under its hard limit (2x): Pillow only warns; the gateway refuses.
    width = height = 10_000
    assert Image.MAX_IMAGE_PIXELS is not None
    assert Image.MAX_IMAGE_PIXELS < width * height < 2 * Image.MAX_IMAGE_PIXELS
    client = client_factory(max_image_pixels=200_000_000)
    refused(post_image(client, zlib_png(width, height)), 413, "too_many_pixels", "image[0]")


@pytest.mark.parametrize("size", [(10000, 10), (10, 10000)], ids=["wide", "tall"])
def test_extreme_aspect_ratio(client: TestClient, refused: Check, size: tuple[int, int]) -> None:
    image = encode(Image.new("L", size), "PNG")
    refused(post_image(client, image), 422, "extreme_aspect_ratio", "image[0]")


_CORRUPT = {
    "truncated-png": half(encode(noise(), "PNG")),
    "truncated-jpeg": half(encode(noise(), "JPEG")),
    "truncated-webp": half(encode(noise(), "WEBP")),
    "png-magic-then-garbage": PNG_MAGIC + random.Random(1).randbytes(256),
    "jpeg-magic-then-garbage": b"\xff\xd8\xff" + random.Random(2).randbytes(256),
    "webp-magic-then-garbage": b"RIFF\x00\x01\x00\x00WEBP" + random.Random(3).randbytes(256),
    "png-zero-by-zero": (PNG_MAGIC + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0))
                         + png_chunk(b"IEND", b"")),
}


@pytest.mark.parametrize("name", sorted(_CORRUPT))
def test_corrupt_image(client: TestClient, refused: Check, name: str) -> None:
    refused(post_image(client, _CORRUPT[name]), 422, "corrupt_image", "image[0]")


# --- types ---------------------------------------------------------------------------------------------------

_NOT_IMAGES = {
    "zip": zip_bytes(),
    "html": b"<!doctype html><html><body><script>alert(1)</script></body></html>",
    "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
    "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
}


@pytest.mark.parametrize("name", sorted(_NOT_IMAGES))
def test_non_image_sent_as_png(client: TestClient, refused: Check, name: str) -> None:
    refused(post_image(client, _NOT_IMAGES[name], "image/png"), 415, "unsupported_image_type", "image[0]")


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_format_pillow_reads_but_gateway_refuses(client: TestClient, refused: Check, fmt: str) -> None:
    data = encode(Image.new("RGB", (32, 32), (9, 99, 199)), fmt)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.format == fmt
    refused(post_image(client, data, "image/png"), 415, "unsupported_image_type", "image[0]")


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_image(client: TestClient, refused: Check, fmt: str) -> None:
    data = animation(fmt)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.format == fmt and opened.n_frames == 1001
    refused(post_image(client, data), 422, "animated_image", "image[0]")


_BIG_TEXT = zlib.compress(bytes(2 * PngImagePlugin.MAX_TEXT_CHUNK), 9)


@pytest.mark.parametrize("chunk", [png_chunk(b"zTXt", b"Comment\x00\x00" + _BIG_TEXT),
                                   png_chunk(b"iTXt", b"Comment\x00\x01\x00\x00\x00" + _BIG_TEXT)],
                         ids=["zTXt", "iTXt"])
def test_compressed_text_chunk_over_pillow_limit(client: TestClient, refused: Check, chunk: bytes) -> None:
    data = zlib_png(64, 64, extra=chunk)
    assert len(data) < 16 * 1024  # 2 MiB of text once inflated
    refused(post_image(client, data), 422, "corrupt_image", "image[0]")


def test_plain_text_chunk_is_bounded_by_image_bytes(client_factory: Callable[..., TestClient],
                                                    refused: Check) -> None:
    # Pillow caps only compressed text chunks; a plain tEXt costs its own bytes, so max_image_bytes bounds it.
    data = zlib_png(64, 64, extra=png_chunk(b"tEXt", b"Comment\x00" + b"a" * 2 * PngImagePlugin.MAX_TEXT_CHUNK))
    client = client_factory(max_image_bytes=PngImagePlugin.MAX_TEXT_CHUNK)
    refused(post_image(client, data), 413, "image_too_large", "image[0]")


# --- parts of the form -------------------------------------------------------------------------------------

def test_empty_file(client: TestClient, refused: Check) -> None:
    refused(post_form(client, text_part("prompt", "hi"), file_part(b"")), 422, "empty_image", "image[0]")
    refused(post_json(client, {"prompt": "hi", "images": ["data:image/png;base64,"]}), 422, "empty_image",
            "images[0]")


def test_missing_image(client: TestClient, refused: Check) -> None:
    refused(post_form(client, text_part("prompt", "hi")), 400, "missing_image", "image")
    refused(post_json(client, {"prompt": "hi"}), 400, "missing_image", "images")


def test_missing_prompt(client: TestClient, refused: Check) -> None:
    png = encode(noise(), "PNG")
    refused(post_form(client, file_part(png)), 422, "prompt_empty", "prompt")
    refused(post_json(client, {"images": [data_url(png)]}), 422, "prompt_empty", "prompt")


def test_too_many_images(client: TestClient, refused: Check) -> None:
    png = encode(noise(), "PNG")
    count = DEFAULTS["max_images"] + 1
    # The multipart parser stops at the limit itself, before buffering the extra file.
    refused(post_form(client, text_part("prompt", "hi"), *[file_part(png)] * count), 400, "malformed_multipart")
    refused(post_json(client, {"prompt": "hi", "images": [data_url(png)] * count}), 400, "too_many_images", "images")


_FIELD_ABUSE = {
    "unknown-field": ([text_part("prompt", "hi"), text_part("colour", "red")], "unexpected_field", "colour"),
    "repeated-field": ([text_part("prompt", "hi"), text_part("prompt", "again")], "unexpected_field", "prompt"),
    "file-in-wrong-field": ([text_part("prompt", "hi"), file_part(b"x", name="file")], "unexpected_field", "file"),
    "too-many-fields": ([text_part(f"f{n}", "1") for n in range(12)], "malformed_multipart", None),
}


@pytest.mark.parametrize("name", sorted(_FIELD_ABUSE))
def test_field_abuse(client: TestClient, refused: Check, name: str) -> None:
    parts, code, param = _FIELD_ABUSE[name]
    refused(post_form(client, *parts, file_part(encode(noise(), "PNG"))), 400, code, param)


@pytest.mark.parametrize("body", [
    b"garbage without a boundary",
    f"--{BOUNDARY}\r\nno headers at all\r\n--{BOUNDARY}--\r\n".encode(),
    f'--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nnameless\r\n--{BOUNDARY}--\r\n'.encode(),
], ids=["no-parts", "part-without-headers", "part-without-name"])
def test_malformed_multipart(client: TestClient, refused: Check, body: bytes) -> None:
    response = client.post("/api/infer", content=body, headers={"content-type": MULTIPART})
    refused(response, 400, "malformed_multipart", None)


# --- prompts -------------------------------------------------------------------------------------------------

_PROMPTS = {
    "empty": (b"", 422, "prompt_empty", "prompt"),
    "whitespace": (b" \t\r\n ", 422, "prompt_empty", "prompt"),
    "one-over-the-limit": (b"x" * (DEFAULTS["max_prompt_chars"] + 1), 422, "prompt_too_long", "prompt"),
    "nul": (b"describe\x00this", 422, "invalid_parameter", "prompt"),
    # Starlette would decode it as Latin-1; the gateway's parser refuses it.
    "invalid-utf8": (b"caf\xe9 \xff\xfe", 400, "malformed_multipart", None),
    # Past what the parser buffers for one text part: refused while parsing, before any length check.
    "far-over-the-limit": (b"x" * (DEFAULTS["max_prompt_chars"] * 4 + 2048), 400, "malformed_multipart", None),
}


@pytest.mark.parametrize("name", sorted(_PROMPTS))
def test_bad_prompt_multipart(client: TestClient, refused: Check, name: str) -> None:
    prompt, status, code, param = _PROMPTS[name]
    refused(post_form(client, text_part("prompt", prompt), file_part(encode(noise(), "PNG"))), status, code, param)


@pytest.mark.parametrize(("prompt", "code"), [
    ("", "prompt_empty"), ("   ", "prompt_empty"), ("x" * (DEFAULTS["max_prompt_chars"] + 1), "prompt_too_long"),
    ("a\x00b", "invalid_parameter"), (5, "invalid_parameter"), (["a"], "invalid_parameter"),
], ids=["empty", "whitespace", "too-long", "nul", "number", "list"])
def test_bad_prompt_json(client: TestClient, refused: Check, prompt: object, code: str) -> None:
    body = {"prompt": prompt, "images": [data_url(encode(noise(), "PNG"))]}
    refused(post_json(client, body), 422, code, "prompt")


# --- sampling parameters -----------------------------------------------------------------------------------

_OUT_OF_RANGE = [
    ("temperature", -1), ("temperature", 3), ("temperature", "hot"), ("top_p", 0), ("top_p", 1.5),
    ("max_tokens", 0), ("max_tokens", DEFAULTS["max_tokens_limit"] + 1), ("max_tokens", 2.5), ("seed", -1),
    ("seed", 2**31), ("cache", "bogus"), ("deadline_s", 0), ("deadline_s", -5),
]


@pytest.mark.parametrize(("field", "value"), _OUT_OF_RANGE, ids=[f"{f}={v}" for f, v in _OUT_OF_RANGE])
@pytest.mark.parametrize("kind", ["multipart", "json"])
def test_out_of_range_parameter(client: TestClient, refused: Check, kind: str, field: str, value: object) -> None:
    png = encode(noise(), "PNG")
    if kind == "multipart":
        response = post_form(client, text_part("prompt", "hi"), text_part(field, str(value)), file_part(png))
    else:
        response = post_json(client, {"prompt": "hi", field: value, "images": [data_url(png)]})
    refused(response, 422, "invalid_parameter", field)


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"prompt": "hi", "temperature": NaN, "images": []}', "temperature"),
    (b'{"prompt": "hi", "deadline_s": Infinity, "images": []}', "deadline_s"),
], ids=["nan", "infinity"])
def test_non_finite_json_numbers(client: TestClient, refused: Check, raw: bytes, param: str) -> None:
    refused(post_json(client, raw), 422, "invalid_parameter", param)


# --- JSON bodies ---------------------------------------------------------------------------------------------

_BAD_JSON = {
    "syntax": b'{"prompt": "hi",',
    "array": b"[1, 2]",
    "string": b'"hi"',
    "null": b"null",
    "invalid-utf8": b'{"prompt": "caf\xe9"}',
    "deeply-nested": b"[" * 100_000,
    "five-thousand-digit-int": b'{"prompt": "hi", "seed": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("name", sorted(_BAD_JSON))
def test_bad_json(client: TestClient, refused: Check, name: str) -> None:
    refused(post_json(client, _BAD_JSON[name]), 400, "invalid_json", None)


_BAD_JSON_FIELDS = {
    "http-url": ({"images": ["https://example.com/cat.png"]}, "invalid_image_url", "images[0]"),
    "non-image-data-url": ({"images": ["data:text/html;base64,PGgxPmhpPC9oMT4="]}, "invalid_image_url", "images[0]"),
    "bad-base64": ({"images": ["data:image/png;base64,iVBOR!!!w0KGgo="]}, "invalid_base64", "images[0]"),
    "unknown-field": ({"images": [], "colour": "red"}, "invalid_parameter", "colour"),
    "images-not-a-list": ({"images": "data:image/png;base64,AAAA"}, "invalid_parameter", "images"),
    "image-not-a-string": ({"images": [1]}, "invalid_parameter", "images[0]"),
}


@pytest.mark.parametrize("name", sorted(_BAD_JSON_FIELDS))
def test_bad_json_field(client: TestClient, refused: Check, name: str) -> None:
    fields, code, param = _BAD_JSON_FIELDS[name]
    refused(post_json(client, {"prompt": "hi", **fields}), 422, code, param)


def test_json_non_image_data_url(client: TestClient, refused: Check) -> None:
    body = {"prompt": "hi", "images": [data_url(_NOT_IMAGES["html"])]}
    refused(post_json(client, body), 415, "unsupported_image_type", "images[0]")


def test_oversized_image_is_413_in_both_encodings(client_factory: Callable[..., TestClient],
                                                  refused: Check) -> None:
    client = client_factory(max_image_bytes=1024)
    png = encode(noise(), "PNG")
    assert len(png) > 1024
    refused(post_image(client, png), 413, "image_too_large", "image[0]")
    refused(post_json(client, {"prompt": "hi", "images": [data_url(png)]}), 413, "image_too_large", "images[0]")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "image/png", None])
def test_unsupported_content_type(client: TestClient, refused: Check, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/api/infer", content=b"prompt=hi", headers=headers)
    refused(response, 415, "unsupported_content_type", None)


# --- request ids -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("request_id", [
    "a" * 65, "short", "", "*" * 16, "*", "abcdefgh:ijklmnop", "../../../../etc/passwd", "a" * 15 + "\x00",
    "rq:job:" + "a" * 32, "a" * 16 + " ", "a" * 16 + "\n",
], ids=["too-long", "too-short", "empty", "stars", "star", "colon", "dot-dot-slash", "nul", "redis-key", "space",
        "trailing-newline"])
def test_malformed_request_id(client: TestClient, refused: Check, request_id: str) -> None:
    response = client.get("/api/result", params={"request_id": request_id})
    refused(response, 400, "invalid_request_id", "request_id")


def test_result_query_errors(client: TestClient, refused: Check) -> None:
    refused(client.get("/api/result"), 422, "invalid_parameter", "request_id")
    refused(client.get("/api/result", params={"request_id": "a" * 22, "wait": "-1"}), 422, "invalid_parameter",
            "wait")
    refused(client.get("/api/result", params={"request_id": "a" * 22, "wait": "soon"}), 422, "invalid_parameter",
            "wait")
