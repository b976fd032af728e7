"""The Files API (/v1/files): round trip, tenants, caps checked while the upload streams in, the OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from gateway import files
from gateway.auth import hash_key
from gateway.errors import ApiError
from gateway.files_routes import check_lines
from tests.gateway.conftest import Check, redis_keys
from worker.constants import FILE_DATA_PREFIX, FILE_PREFIX, TENANT_FILES_PREFIX
from worker.contract import FileRecord

KEYS = {"acme": ["key-acme"], "globex": ["key-globex"]}
LINES = [{"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions", "body": {"n": n}} for n in range(3)]
JSONL = b"".join(json.dumps(line).encode() + b"\n" for line in LINES)
BOUNDARY = "vlq-test-boundary"


@pytest.fixture
def auth_client(client_factory: Callable[..., TestClient], tmp_path: Path) -> TestClient:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({tenant: [hash_key(k) for k in keys] for tenant, keys in KEYS.items()}))
    return client_factory(auth_enabled=True, api_keys_file=path)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client: TestClient, data: bytes = JSONL, purpose: str | None = "batch", filename: str = "in.jsonl",
           headers: dict[str, str] | None = None):
    fields = {} if purpose is None else {"purpose": purpose}
    return client.post("/v1/files", data=fields, files={"file": (filename, data, "application/jsonl")},
                       headers=headers or {})


def stored_record(redis_client: Redis, file_id: str) -> FileRecord:
    return FileRecord.model_validate_json(redis_client.get(FILE_PREFIX + file_id))


# --- round trip -------------------------------------------------------------------------------------------

def test_upload_get_list_content_delete(client_factory: Callable[..., TestClient], redis_client: Redis) -> None:
    client = client_factory(file_ttl_s=3600)
    created = upload(client)
    assert created.status_code == 200, created.text
    body = created.json()
    file_id = body["id"]
    assert file_id.startswith("file-") and len(file_id) == 27
    assert {k: body[k] for k in ("object", "bytes", "filename", "purpose", "status")} == {
        "object": "file", "bytes": len(JSONL), "filename": "in.jsonl", "purpose": "batch", "status": "processed"}
    assert isinstance(body["created_at"], int) and body["expires_at"] - body["created_at"] in (3599, 3600, 3601)
    assert set(body) == {"id", "object", "bytes", "created_at", "expires_at", "filename", "purpose", "status"}

    assert client.get(f"/v1/files/{file_id}").json() == body
    listed = client.get("/v1/files").json()
    assert listed == {"object": "list", "data": [body], "first_id": file_id, "last_id": file_id, "has_more": False}
    content = client.get(f"/v1/files/{file_id}/content")
    assert (content.status_code, content.content) == (200, JSONL)
    assert content.headers["content-type"].startswith("application/jsonl")

    record = stored_record(redis_client, file_id)
    assert (record.tenant, record.lines, record.bytes) == ("public", 3, len(JSONL))
    for key in (FILE_PREFIX + file_id, FILE_DATA_PREFIX + file_id, TENANT_FILES_PREFIX + "public"):
        assert 3590 < redis_client.ttl(key) <= 3600

    deleted = client.delete(f"/v1/files/{file_id}")
    assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}").status_code == 404
    assert client.get(f"/v1/files/{file_id}/content").status_code == 404
    assert client.delete(f"/v1/files/{file_id}").status_code == 404
    assert client.get("/v1/files").json()["data"] == []
    assert not [key for key in redis_keys(redis_client) if b"file" in key]


@pytest.mark.parametrize("file_id", ["file-nope", "file-" + "A" * 22, "file-" + "A" * 21 + "%21", "med_" + "A" * 22])
def test_unknown_ids_are_404(client: TestClient, refused: Check, file_id: str) -> None:
    for response in (client.get(f"/v1/files/{file_id}"), client.get(f"/v1/files/{file_id}/content"),
                     client.delete(f"/v1/files/{file_id}")):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "file_not_found"
        assert response.json()["error"]["param"] == "file_id"
        assert response.json()["error"]["type"] == "not_found_error"


def test_list_newest_first_with_purpose_limit_and_after(client: TestClient) -> None:
    ids = [upload(client, filename=f"f{n}.jsonl").json()["id"] for n in range(5)]
    newest_first = ids[::-1]
    assert [item["id"] for item in client.get("/v1/files").json()["data"]] == newest_first
    first = client.get("/v1/files", params={"limit": 2}).json()
    assert ([item["id"] for item in first["data"]], first["has_more"]) == (newest_first[:2], True)
    assert (first["first_id"], first["last_id"]) == (newest_first[0], newest_first[1])
    rest = client.get("/v1/files", params={"limit": 10, "after": first["last_id"]}).json()
    assert ([item["id"] for item in rest["data"]], rest["has_more"]) == (newest_first[2:], False)
    assert client.get("/v1/files", params={"purpose": "batch_output"}).json()["data"] == []
    assert len(client.get("/v1/files", params={"purpose": "batch"}).json()["data"]) == 5
    unknown = client.get("/v1/files", params={"after": "file-" + "B" * 22})
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (404, "after")
    assert client.get("/v1/files", params={"limit": 0}).status_code == 422


# --- tenants ----------------------------------------------------------------------------------------------

def test_files_are_bound_to_their_tenant(auth_client: TestClient, redis_client: Redis) -> None:
    mine = upload(auth_client, headers=bearer("key-acme")).json()
    theirs = bearer("key-globex")
    for response in (auth_client.get(f"/v1/files/{mine['id']}", headers=theirs),
                     auth_client.get(f"/v1/files/{mine['id']}/content", headers=theirs),
                     auth_client.delete(f"/v1/files/{mine['id']}", headers=theirs)):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "file_not_found"
        assert "in.jsonl" not in response.text
    assert auth_client.get("/v1/files", headers=theirs).json()["data"] == []
    assert auth_client.get("/v1/files", params={"after": mine["id"]}, headers=theirs).status_code == 404
    assert auth_client.get(f"/v1/files/{mine['id']}", headers=bearer("key-acme")).json() == mine
    assert stored_record(redis_client, mine["id"]).tenant == "acme"
    anonymous = upload(auth_client)
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "missing_api_key")


def test_tenant_file_cap(client_factory: Callable[..., TestClient], redis_client: Redis) -> None:
    client = client_factory(tenant_max_files=2)
    first, _second = (upload(client).json()["id"] for _ in range(2))
    before = redis_keys(redis_client)
    third = upload(client)
    assert (third.status_code, third.json()["error"]["code"]) == (400, "too_many_files")
    assert redis_keys(redis_client) == before
    assert len(client.get("/v1/files").json()["data"]) == 2
    assert client.delete(f"/v1/files/{first}").status_code == 200
    assert upload(client).status_code == 200
    assert len(client.get("/v1/files").json()["data"]) == 2


def test_cap_holds_under_concurrent_uploads_and_batch_outputs_are_exempt(
        client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(tenant_max_files=3)
    backend = client.app.state.backend

    async def race() -> list[Any]:
        return await asyncio.gather(*(files.create(backend, "acme", "batch", f"{n}.jsonl", b"{}\n", 1)
                                      for n in range(8)), return_exceptions=True)

    results = client.portal.call(race)
    assert sum(isinstance(result, files.FileRecordView) for result in results) == 3
    assert [result.code for result in results if isinstance(result, ApiError)] == ["too_many_files"] * 5
    output = client.portal.call(files.create, backend, "acme", "batch_output", "out.jsonl", b"{}\n", 1)
    assert output.body()["purpose"] == "batch_output"
    listed = client.portal.call(files.list_files, backend, "acme", "batch_output", 10, None)
    assert [view.file_id for view in listed] == [output.file_id]
    assert client.portal.call(files.content, backend, "acme", output.file_id) == b"{}\n"
    assert len(client.portal.call(files.list_files, backend, "acme", None, 10, None)) == 4


def test_expired_files_do_not_count_and_leave_the_index(client_factory: Callable[..., TestClient],
                                                         redis_client: Redis) -> None:
    client = client_factory(file_ttl_s=60, tenant_max_files=1)
    old = upload(client).json()["id"]
    # What Redis does when the TTL passes: the keys go; the index entry stays until pruned.
    redis_client.delete(FILE_PREFIX + old, FILE_DATA_PREFIX + old)
    redis_client.zadd(TENANT_FILES_PREFIX + "public", {old: time.time() - 120})
    assert client.get(f"/v1/files/{old}").status_code == 404
    assert client.get("/v1/files").json()["data"] == []
    new = upload(client)
    assert new.status_code == 200, new.text
    assert redis_client.zrange(TENANT_FILES_PREFIX + "public", 0, -1) == [new.json()["id"].encode()]


# --- what an upload must be -------------------------------------------------------------------------------

def test_file_over_the_byte_cap_is_413_and_nothing_is_stored(client_factory: Callable[..., TestClient],
                                                             refused: Check) -> None:
    client = client_factory(file_max_bytes=2048)
    data = b'{"a": "' + b"x" * 3000 + b'"}\n'
    error = refused(upload(client, data), 413, "file_too_large", "file")
    assert "2048" in error["message"]


def test_upload_cap_is_per_path_above_max_body_bytes(client_factory: Callable[..., TestClient],
                                                     refused: Check) -> None:
    client = client_factory(max_body_bytes=2048, file_max_bytes=20_000)
    data = b"".join(json.dumps({"custom_id": str(n), "pad": "y" * 90}).encode() + b"\n" for n in range(150))
    assert 2048 * 5 < len(data) < 20_000
    created = upload(client, data)
    assert created.status_code == 200, created.text
    assert client.get(f"/v1/files/{created.json()['id']}/content").content == data
    # Other paths keep max_body_bytes, and an upload's body still has a cap (file_max_bytes + framing).
    other = client.post("/api/infer", content=b"{" + b" " * 4000 + b"}", headers={"content-type": "application/json"})
    assert (other.status_code, other.json()["error"]["code"]) == (413, "body_too_large")
    huge = upload(client, b"{}\n" * 40_000)
    assert (huge.status_code, huge.json()["error"]["code"]) == (413, "body_too_large")


def asgi_upload(client: TestClient, data: bytes, piece: int = 64 * 1024) -> tuple[int, dict[str, Any], int]:
    """POST ``data`` as a file to the app in pieces, as a server would pass them on (TestClient sends one piece).

    Returns the status, the JSON body, and how many pieces the app pulled.
    """
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n').encode()
    pieces = [head] + [data[at:at + piece] for at in range(0, len(data), piece)] + [f"\r\n--{BOUNDARY}--\r\n".encode()]
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        if pulled > len(pieces):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": pieces[pulled - 1], "more_body": pulled < len(pieces)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/files", "raw_path": b"/v1/files", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"),
                         (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}}
    client.portal.call(client.app, scope, receive, send)
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], json.loads(body), min(pulled, len(pieces))


def big_jsonl(lines: int) -> bytes:
    return b"".join(json.dumps({"custom_id": str(n), "pad": "p" * 200}).encode() + b"\n" for n in range(lines))


def test_upload_over_the_cap_stops_reading_the_body(client_factory: Callable[..., TestClient],
                                                    redis_client: Redis) -> None:
    client = client_factory(file_max_bytes=4096)
    before = redis_keys(redis_client)
    status, body, pulled = asgi_upload(client, big_jsonl(500), piece=1024)
    assert (status, body["error"]["code"]) == (413, "file_too_large")
    assert pulled <= 7  # the head and the first pieces past 4096 bytes, not the other ~110 KB
    assert redis_keys(redis_client) == before


def test_lines_are_checked_as_the_upload_streams_in(client: TestClient, redis_client: Redis) -> None:
    good = big_jsonl(4000)
    assert len(good) > 3 * 256 * 1024  # checked in several segments as it arrives
    status, body, _ = asgi_upload(client, good)
    assert status == 200, body
    assert stored_record(redis_client, body["id"]).lines == 4000
    assert client.get(f"/v1/files/{body['id']}/content").content == good
    # A bad line deep in the file is numbered right across segments (blank line 4001 counts for numbering).
    status, body, _ = asgi_upload(client, good + b"\n" + b"nope\n")
    assert (status, body["error"]["code"]) == (400, "invalid_jsonl")
    assert "line 4002 " in body["error"]["message"]
    # A bad first line is refused after one segment, not after the whole body.
    status, body, pulled = asgi_upload(client, b"nope\n" + good)
    assert (status, body["error"]["message"]) == (400, "line 1 is not valid JSON")
    assert pulled <= 7


def test_too_many_lines_while_streaming(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(file_max_lines=1000)
    status, body, pulled = asgi_upload(client, big_jsonl(4000))
    assert (status, body["error"]["code"]) == (413, "too_many_lines")
    assert pulled <= 7


def test_too_many_lines(client_factory: Callable[..., TestClient], refused: Check, redis_client: Redis) -> None:
    client = client_factory(file_max_lines=3)
    error = refused(upload(client, b"{}\n" * 4), 413, "too_many_lines", "file")
    assert "3 lines" in error["message"]
    # Blank lines do not count, and the record says how many requests the file holds.
    created = upload(client, b'{"a": 1}\n\n  \n{"b": 2}\r\n{"c": 3}').json()
    assert stored_record(redis_client, created["id"]).lines == 3


@pytest.mark.parametrize(("data", "line", "what"), [
    (b'{"a": 1}\n{"b": "\xff"}\n', 2, "UTF-8"),
    (b'{"a": 1}\n\n[1, 2]\n', 3, "not a JSON object"),
    (b'{"a": 1}\n{"a": \n', 2, "not valid JSON"),
    (b'"just a string"', 1, "not a JSON object"),
    (b"[" * 100_000, 1, "not valid JSON"),
], ids=["bad-utf8", "array", "truncated", "string", "deep"])
def test_not_jsonl_is_400_naming_the_line(client: TestClient, refused: Check, data: bytes, line: int,
                                          what: str) -> None:
    error = refused(upload(client, data), 400, "invalid_jsonl", "file")
    assert f"line {line} " in error["message"] and what in error["message"]


@pytest.mark.parametrize("data", [b"", b"\n \r\n\t\n"], ids=["empty", "blank-lines"])
def test_empty_file_is_400(client: TestClient, refused: Check, data: bytes) -> None:
    refused(upload(client, data), 400, "empty_file", "file")


@pytest.mark.parametrize(("purpose", "code"), [("batch_output", "invalid_purpose"), ("fine-tune", "invalid_purpose"),
                                               (None, "missing_purpose")])
def test_purpose_must_be_batch(client: TestClient, refused: Check, purpose: str | None, code: str) -> None:
    refused(upload(client, purpose=purpose), 400, code, "purpose")


def test_malformed_uploads(client: TestClient, refused: Check) -> None:
    no_file = client.post("/v1/files", data={"purpose": "batch"}, files={"other": ("x.jsonl", JSONL)})
    refused(no_file, 400, "unexpected_field", "other")
    only_purpose = client.post("/v1/files", files={"purpose": (None, "batch")})
    refused(only_purpose, 400, "missing_file", "file")
    extra = client.post("/v1/files", data={"purpose": "batch", "model": "x"}, files={"file": ("x.jsonl", JSONL)})
    refused(extra, 400, "unexpected_field", "model")
    twice = client.post("/v1/files", data={"purpose": ["batch", "batch"]}, files={"file": ("x.jsonl", JSONL)})
    refused(twice, 400, "unexpected_field", "purpose")
    two_files = client.post("/v1/files", data={"purpose": "batch"},
                            files=[("file", ("a.jsonl", JSONL)), ("file", ("b.jsonl", JSONL))])
    refused(two_files, 400, "malformed_multipart", None)
    text_file = client.post("/v1/files", files={"purpose": (None, "batch"), "file": (None, JSONL.decode())})
    refused(text_file, 400, "missing_file", "file")
    as_json = client.post("/v1/files", json={"purpose": "batch"})
    refused(as_json, 415, "unsupported_content_type", None)
    refused(upload(client, filename="x" * 300), 400, "invalid_filename", "file")


def test_check_lines_counts_and_numbers_lines() -> None:
    assert check_lines(bytearray(b'{"a": 1}\r\n\n{"b": 2}\n'), 1, 0, 10) == (3, 2)
    assert check_lines(bytearray(b'{"a": 1}'), 7, 0, 10) == (1, 1)
    with pytest.raises(Exception, match="line 9 is not a JSON object"):
        check_lines(bytearray(b'{}\n\n1\n'), 7, 0, 10)
    with pytest.raises(Exception, match="more than 4 lines"):
        check_lines(bytearray(b"{}\n{}\n"), 1, 3, 4)


# --- the OpenAI SDK ---------------------------------------------------------------------------------------

def test_openai_sdk_files_round_trip(auth_client: TestClient) -> None:
    # The SDK rides the TestClient itself (an httpx.Client), so the app runs in-process.
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="key-acme", http_client=auth_client,
                        max_retries=0)
    created = sdk.files.create(file=("requests.jsonl", JSONL), purpose="batch")
    assert (created.object, created.purpose, created.bytes, created.filename, created.status) == (
        "file", "batch", len(JSONL), "requests.jsonl", "processed")
    assert sdk.files.retrieve(created.id) == created
    assert sdk.files.content(created.id).content == JSONL
    assert [item.id for item in sdk.files.list()] == [created.id]
    assert [item.id for item in sdk.files.list(purpose="batch_output")] == []
    deleted = sdk.files.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "file")
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.files.retrieve(created.id)
    assert (caught.value.status_code, caught.value.code) == (404, "file_not_found")
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.create(file=("requests.jsonl", b"not json\n"), purpose="batch")
    assert bad.value.code == "invalid_jsonl"


def test_openai_sdk_pages_through_files(auth_client: TestClient) -> None:
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="key-globex", http_client=auth_client,
                        max_retries=0)
    ids = [sdk.files.create(file=(f"{n}.jsonl", JSONL), purpose="batch").id for n in range(5)]
    assert [item.id for item in sdk.files.list(limit=2)] == ids[::-1]  # auto-paging follows after=last_id
