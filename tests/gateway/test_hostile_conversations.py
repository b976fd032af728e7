"""Hostile conversations, schemas and media: each a 4xx in the error envelope, with Redis untouched."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_image
from tests.gateway.conftest import Check
from tests.gateway.test_hostile_input import data_url, post_json

PNG = make_image((10, 200, 30))
IMAGE = {"type": "image_url", "image_url": {"url": data_url(PNG)}}


def user(*parts: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def deep(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"a": node}}
    return node


CASES: dict[str, tuple[dict[str, Any], int, str, str | None]] = {
    "10000-messages": ({"messages": [user(text("hi"))] * 10_000}, 422, "too_many_messages", "messages"),
    "no-messages": ({"messages": []}, 400, "missing_messages", "messages"),
    "http-image-url": ({"messages": [user({"type": "image_url", "image_url": {"url": "http://169.254.169.254/x"}},
                                          text("q"))]},
                       422, "unsupported_image_url", "messages[0].content[0].image_url.url"),
    "file-image-url": ({"messages": [user({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}})]},
                       422, "unsupported_image_url", "messages[0].content[0].image_url.url"),
    "unknown-part-type": ({"messages": [user({"type": "audio", "audio": "x"})]}, 422, "invalid_parameter", None),
    "image-in-assistant-turn": ({"messages": [user(text("a")), {"role": "assistant", "content": [IMAGE]},
                                              user(text("b"))]},
                                422, "image_not_allowed", "messages[1].content[0]"),
    "system-last": ({"messages": [user(text("a")), {"role": "system", "content": "late"}]},
                    422, "invalid_conversation", "messages[1]"),
    "two-systems": ({"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"},
                                  user(text("q"))]}, 422, "invalid_conversation", "messages[1]"),
    "assistant-first": ({"messages": [{"role": "assistant", "content": "hi"}, user(text("q"))]},
                        422, "invalid_conversation", "messages[0]"),
    "ends-with-assistant": ({"messages": [user(text("q")), {"role": "assistant", "content": "a"}]},
                            422, "invalid_conversation", "messages[1]"),
    "unknown-role": ({"messages": [{"role": "tool", "content": "x"}]}, 422, "invalid_parameter", None),
    "nul-in-text": ({"messages": [user(text("a\x00b"))]}, 422, "invalid_parameter", None),
    "lone-surrogate": ({"messages": [user(text("\ud800"))]}, 422, "invalid_parameter", None),
    "messages-and-prompt": ({"messages": [user(text("q"))], "prompt": "p"}, 422, "invalid_parameter", None),
    "too-many-images": ({"messages": [user(*[IMAGE] * 5, text("q"))]}, 400, "too_many_images", "messages"),
    "text-too-long": ({"messages": [user(text("x" * 9000)), {"role": "assistant", "content": "y"},
                                    user(text("z" * 9000))]}, 422, "prompt_too_long", "messages"),
    "unknown-task": ({"messages": [user(text("q"))], "task": "poetry"}, 422, "invalid_parameter", "task"),
    "schema-1mb": ({"messages": [user(text("q"))],
                    "response_format": schema_format({"type": "object", "description": "x" * 1_000_000})},
                   413, "schema_too_large", "response_format.json_schema.schema"),
    "schema-too-deep": ({"messages": [user(text("q"))], "response_format": schema_format(deep(40))},
                        422, "schema_too_deep", None),
    "schema-remote-ref": ({"messages": [user(text("q"))],
                           "response_format": schema_format({"$ref": "https://evil.example/s.json"})},
                          422, "schema_remote_ref", None),
    "schema-recursive-ref": ({"messages": [user(text("q"))], "response_format": schema_format(
        {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
         "$ref": "#/$defs/n"})}, 422, "schema_recursive_ref", None),
    "schema-unsupported-keyword": ({"messages": [user(text("q"))], "response_format": schema_format(
        {"type": "object", "patternProperties": {"^a": {"type": "string"}}})},
                                   422, "schema_unsupported_keyword", None),
    "schema-not-a-schema": ({"messages": [user(text("q"))], "response_format": schema_format({"type": 5})},
                            422, "invalid_schema", None),
    "json-schema-without-schema": ({"messages": [user(text("q"))], "response_format": {"type": "json_schema"}},
                                   422, "invalid_parameter", None),
    "unknown-response-format": ({"messages": [user(text("q"))], "response_format": {"type": "xml"}},
                                422, "invalid_parameter", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_conversation(client: TestClient, refused: Check, name: str) -> None:
    body, status, code, param = CASES[name]
    error = refused(post_json(client, body), status, code, *([param] if param is not None else []))
    assert "Traceback" not in json.dumps(error)


def test_invalid_utf8_bytes_in_a_json_body(client: TestClient, refused: Check) -> None:
    raw = b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\xff\xfe"}]}]}'
    refused(post_json(client, raw), 400, "invalid_json")


MEDIA_CASES: dict[str, tuple[dict[str, Any] | None, bytes, int, str]] = {
    "not-an-image": ({"file": ("a.png", b"<html>hi</html>", "image/png")}, b"", 415, "unsupported_image_type"),
    "empty": ({"file": ("a.png", b"", "image/png")}, b"", 422, "empty_image"),
    "truncated": ({"file": ("a.png", PNG[:60], "image/png")}, b"", 422, "corrupt_image"),
    "wrong-part": ({"image": ("a.png", PNG, "image/png")}, b"", 400, "missing_file"),
    "not-multipart": (None, b'{"file": 1}', 415, "unsupported_content_type"),
}


@pytest.mark.parametrize("name", sorted(MEDIA_CASES))
def test_hostile_media_upload(client: TestClient, refused: Check, name: str) -> None:
    files, content, status, code = MEDIA_CASES[name]
    if files is None:
        response = client.post("/api/media", content=content, headers={"content-type": "application/json"})
    else:
        response = client.post("/api/media", files=files)
    refused(response, status, code)


@pytest.mark.parametrize("media_id", ["med_short", "%3Cscript%3E", "med_" + "A" * 22, "x" * 500])
def test_unknown_media_ids(client: TestClient, media_id: str) -> None:
    for response in (client.get(f"/api/media/{media_id}"), client.delete(f"/api/media/{media_id}")):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "media_not_found"
        assert response.json()["error"]["type"] == "not_found_error"


def test_bad_last_event_id(client: TestClient, refused: Check) -> None:
    refused(client.get("/api/stream?request_id=" + "a" * 22, headers={"Last-Event-ID": "1; DROP"}), 400,
            "invalid_last_event_id")
    unknown = client.get("/api/stream?request_id=" + "a" * 22)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"
