"""Webhooks on real Redis: the URL policy, signatures (checked with the README's receiver code), RQ's own
retries, redirects and pinned connections against local receivers, and the dispatcher turning an ended job
(instant engine) into a delivery."""

from __future__ import annotations

import asyncio
import datetime
import http.server
import ipaddress
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from gateway import webhook_targets, webhooks
from gateway.backend import connect
from gateway.config import GatewaySettings
from gateway.errors import ApiError
from gateway.webhook_worker import build_worker
from tests.conftest import ROOT
from tests.gateway.conftest import ThreadWorker, job_of
from worker.constants import ENDED_STREAM, JOB_HOOKS_PREFIX, WEBHOOK_QUEUE_NAME
from worker.contract import WebhookState
from worker.engine import InstantEngine

SECRET = "whsec-test"


# --- receivers --------------------------------------------------------------------------------------------

@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP(S) server answering scripted (status, headers) replies, recording what it got."""

    replies: list[tuple[int, dict[str, str]]]
    seen: list[Seen] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.seen.append(Seen(self.path, dict(self.headers.items()), body))
            status, headers = receiver.replies.pop(0) if receiver.replies else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def create(*statuses: int | tuple[int, dict[str, str]], tls: ssl.SSLContext | None = None) -> Receiver:
        replies = [(s, {}) if isinstance(s, int) else s for s in statuses]
        receiver = Receiver(replies=replies)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        receiver.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return receiver

    yield create
    for server in servers:
        server.shutdown()
        server.server_close()


# --- settings and helpers ---------------------------------------------------------------------------------

LOCAL = {"webhook_secret": SECRET, "webhook_allow_http": True, "webhook_allow_cidrs": ["127.0.0.1/32"],
         "webhook_retry_base_s": 0, "webhook_timeout_s": 5.0}


def readme_verify() -> Callable[..., bool]:
    """The receiver's ``verify`` exactly as README.md shows it, so the documentation cannot rot."""
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("## Webhooks", 1)[1]
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify" in block)
    scope: dict[str, Any] = {}
    exec(code, scope)
    return scope["verify"]  # type: ignore[no-any-return]


def state(redis: Redis, key: str) -> WebhookState:
    raw = redis.get("vlq:webhook:" + key)
    assert raw is not None
    return WebhookState.model_validate_json(raw)


def run_deliveries(settings: GatewaySettings, redis: Redis) -> None:
    """RQ's own SimpleWorker, in this process, until the webhook queue is empty (retries at interval 0)."""
    build_worker(settings, redis).work(burst=True)


def enqueue(settings: GatewaySettings, key: str, url: str, body: dict[str, Any], tenant: str = "public") -> None:
    async def go() -> None:
        backend = connect(settings)
        try:
            await webhooks.enqueue_delivery(backend, key, tenant, url, body)
        finally:
            await backend.aredis.aclose()
            await backend.stream_redis.aclose()
            backend.redis.close()
            backend.l2.close()

    asyncio.run(go())


def check(settings: GatewaySettings, url: str, tenant: str | None = None) -> ApiError | None:
    try:
        asyncio.run(webhooks.check_target(settings, url, "webhook_url", tenant=tenant))
    except ApiError as exc:
        return exc
    return None


# --- the URL policy ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "status"), [
    ("https://127.0.0.1/hook", 422),
    ("https://10.0.0.1/hook", 422),
    ("https://169.254.169.254/latest/meta-data/", 422),
    ("https://[::1]/hook", 422),
    ("https://[::ffff:127.0.0.1]/hook", 422),
    ("https://[fd00:ec2::254]/", 422),
    ("https://100.100.100.200/", 422),
    ("https://0.0.0.0/", 422),
    ("https://2130706433/", 422),  # 127.0.0.1 written as one number: judged by what it resolves to
    ("https://localhost/hook", 422),  # a name resolving to loopback
    ("http://93.184.216.34/hook", 400),  # http while https is required
    ("https://user:pw@93.184.216.34/hook", 400),
    ("https:///no-host", 400),
    ("https://93.184.216.34:0/", 400),
    ("https://93.184.216.34:99999/", 400),
    ("ftp://93.184.216.34/", 400),
    ("https://93.184.216.34/a b", 400),
])
def test_refused_targets(settings_factory: Callable[..., GatewaySettings], url: str, status: int) -> None:
    error = check(settings_factory(), url)
    assert error is not None, url
    assert (error.status, error.code, error.param) == (status, "webhook_url_refused", "webhook_url")


def test_a_public_address_passes_and_allowed_cidrs_exempt_a_private_one(
        settings_factory: Callable[..., GatewaySettings]) -> None:
    assert check(settings_factory(), "https://93.184.216.34/hook?x=1") is None
    assert check(settings_factory(), "https://[2606:2800:220:1:248:1893:25c8:1946]/hook") is None
    local = settings_factory(webhook_allow_cidrs=["10.0.0.0/8"])
    assert check(local, "https://10.1.2.3/hook") is None
    # Metadata addresses stay refused even inside an exempt network.
    metadata = settings_factory(webhook_allow_cidrs=["169.254.0.0/16"])
    assert check(metadata, "https://169.254.169.254/").status == 422  # type: ignore[union-attr]


def test_a_name_resolving_to_a_private_address_is_refused(
        settings_factory: Callable[..., GatewaySettings], monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"inside.example": ["10.9.8.7"], "mixed.example": ["93.184.216.34", "192.168.1.1"],
               "public.example": ["93.184.216.34"], "gone.example": []}

    async def fake(host: str, port: int) -> list[str]:
        return answers[host]

    monkeypatch.setattr(webhooks, "aresolve", fake)
    settings = settings_factory()
    for host in ("inside.example", "mixed.example", "gone.example"):
        error = check(settings, f"https://{host}/hook")
        assert error is not None and (error.status, error.code) == (422, "webhook_url_refused"), host
    assert check(settings, "https://public.example/hook") is None


def test_a_tenant_without_a_secret_is_refused(settings_factory: Callable[..., GatewaySettings],
                                              tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"acme": "s1"}))
    settings = settings_factory(webhook_secrets_file=secrets)
    assert webhooks.secret_for(settings, "acme") == "s1"
    assert webhooks.secret_for(settings, "other") is None
    error = check(settings, "https://93.184.216.34/", tenant="other")
    assert error is not None and (error.status, error.code) == (400, "webhook_not_configured")
    assert check(settings, "https://93.184.216.34/", tenant="acme") is None
    assert webhooks.secret_for(settings_factory(webhook_secret="shared"), "anyone") == "shared"


@pytest.mark.parametrize("address", ["100.64.0.1", "224.0.0.1", "fe80::1", "fc00::1", "ff02::1", "::",
                                     "64:ff9b::a00:1", "2002:a00:1::", "::ffff:10.0.0.1", "192.0.2.1",
                                     "240.0.0.1", "169.254.170.2"])
def test_every_non_public_address_is_refused(address: str) -> None:
    assert webhook_targets.refusal(address, webhook_targets.Policy()) is not None
    assert webhook_targets.refusal("93.184.216.34", webhook_targets.Policy()) is None
    # An IPv4 exemption never matches an IPv6 address by its low bits.
    exempt = webhook_targets.Policy(allowed=(ipaddress.ip_network("0.0.0.0/0"),))
    assert webhook_targets.refusal("::1", exempt) is not None


# --- signing and delivery ---------------------------------------------------------------------------------

def test_signature_verifies_with_the_readme_receiver(settings_factory: Callable[..., GatewaySettings],
                                                     redis_client: Redis,
                                                     receiver_factory: Callable[..., Receiver]) -> None:
    settings = settings_factory(**LOCAL)
    receiver = receiver_factory(204)
    body = {"request_id": "r1", "status": "done", "result": {"text": "héllo"}}
    enqueue(settings, "r1", receiver.url(), body)
    run_deliveries(settings, redis_client)
    (seen,) = receiver.seen
    verify = readme_verify()
    signature = seen.headers["X-Vlq-Signature"]
    assert json.loads(seen.body) == body and seen.headers["Content-Type"] == "application/json"
    assert verify(SECRET, signature, seen.body)
    assert not verify(SECRET, signature, seen.body + b" ")
    assert not verify("another secret", signature, seen.body)
    old = int(time.time()) - 301
    assert not verify(SECRET, webhooks.sign(SECRET, seen.body, old), seen.body)  # a replay
    assert verify(SECRET, webhooks.sign(SECRET, seen.body, int(time.time()) - 10), seen.body)
    assert seen.headers["X-Vlq-Delivery"] == webhooks.delivery_id("r1")
    assert state(redis_client, "r1") == WebhookState(tenant="public", url=receiver.url(), state="delivered",
                                                     attempts=1, last_status=204)


def test_a_receiver_that_fails_twice_gets_the_third_try(settings_factory: Callable[..., GatewaySettings],
                                                        redis_client: Redis,
                                                        receiver_factory: Callable[..., Receiver]) -> None:
    settings = settings_factory(**LOCAL)
    receiver = receiver_factory(500, 503, 200)
    enqueue(settings, "r2", receiver.url(), {"request_id": "r2", "status": "done"})
    assert state(redis_client, "r2").state == "pending"
    run_deliveries(settings, redis_client)
    assert len(receiver.seen) == 3
    assert {seen.headers["X-Vlq-Delivery"] for seen in receiver.seen} == {webhooks.delivery_id("r2")}
    assert webhooks.state_body(state(redis_client, "r2")) == {"state": "delivered", "attempts": 3,
                                                               "last_status": 200}


def test_a_receiver_that_always_fails_ends_failed_after_max_attempts(
        settings_factory: Callable[..., GatewaySettings], redis_client: Redis,
        receiver_factory: Callable[..., Receiver]) -> None:
    settings = settings_factory(**LOCAL, webhook_max_attempts=3)
    receiver = receiver_factory(500, 500, 500, 500)
    enqueue(settings, "r3", receiver.url(), {"status": "done"})
    run_deliveries(settings, redis_client)
    assert len(receiver.seen) == 3
    final = state(redis_client, "r3")
    assert (final.state, final.attempts, final.last_status, final.last_error) == ("failed", 3, 500, "HTTP 500")
    assert webhooks.delivery_id("r3") in FailedJobRegistry(WEBHOOK_QUEUE_NAME, connection=redis_client,
                                                           serializer=JSONSerializer).get_job_ids()
    # A second enqueue of the same delivery (a re-read stream entry) is dropped.
    enqueue(settings, "r3", receiver.url(), {"status": "done"})
    run_deliveries(settings, redis_client)
    assert len(receiver.seen) == 3


def test_retry_intervals_back_off_exponentially_and_are_bounded(
        settings_factory: Callable[..., GatewaySettings]) -> None:
    retry = webhooks.retry_of(settings_factory(webhook_max_attempts=7, webhook_retry_base_s=2,
                                               webhook_retry_max_s=600))
    assert retry is not None and (retry.max, retry.intervals) == (6, [2, 8, 32, 128, 512, 600])
    assert webhooks.retry_of(settings_factory(webhook_max_attempts=1)) is None


@pytest.mark.parametrize("location", ["http://10.0.0.1/steal", "http://[::1]/x", "http://169.254.169.254/",
                                      "https://127.0.0.2/", "file:///etc/passwd"])
def test_a_redirect_to_a_refused_target_fails_without_retry(
        settings_factory: Callable[..., GatewaySettings], redis_client: Redis,
        receiver_factory: Callable[..., Receiver], location: str) -> None:
    settings = settings_factory(**LOCAL)
    receiver = receiver_factory((302, {"Location": location}), 200, 200)
    enqueue(settings, "r4", receiver.url(), {"status": "done"})
    run_deliveries(settings, redis_client)
    assert len(receiver.seen) == 1
    final = state(redis_client, "r4")
    assert (final.state, final.attempts) == ("failed", 1)
    assert final.last_error is not None and final.last_error.startswith("refused")


def test_redirects_are_followed_up_to_the_limit(settings_factory: Callable[..., GatewaySettings],
                                                redis_client: Redis,
                                                receiver_factory: Callable[..., Receiver]) -> None:
    settings = settings_factory(**LOCAL, webhook_max_redirects=1)
    receiver = receiver_factory((307, {"Location": "/moved"}), 200)
    enqueue(settings, "r5", receiver.url(), {"status": "done"})
    run_deliveries(settings, redis_client)
    assert [seen.path for seen in receiver.seen] == ["/hook", "/moved"]
    assert receiver.seen[1].body == receiver.seen[0].body
    assert state(redis_client, "r5").state == "delivered"
    looping = receiver_factory(*[(302, {"Location": "/again"})] * 3)
    enqueue(settings, "r6", looping.url(), {"status": "done"})
    run_deliveries(settings, redis_client)
    assert len(looping.seen) == 2 and state(redis_client, "r6").state == "failed"


def _delivery(settings: GatewaySettings, redis: Redis, answers: dict[str, list[str]],
              context: ssl.SSLContext | None = None) -> webhooks.Delivery:
    def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    return webhooks.Delivery(settings=settings, redis=redis, resolve=resolve,
                             context=context or ssl.create_default_context())


def test_the_connection_goes_to_the_checked_address_and_rebinding_is_refused(
        settings_factory: Callable[..., GatewaySettings], redis_client: Redis,
        receiver_factory: Callable[..., Receiver]) -> None:
    settings = settings_factory(**LOCAL)
    receiver = receiver_factory(200)
    # "hooks.test" exists only in this resolver: reaching the receiver proves the connect used its answer.
    delivery = _delivery(settings, redis_client, {"hooks.test": ["127.0.0.1"], "rebound.test": ["10.0.0.1"]})
    delivery.run("r7", receiver.url(host="hooks.test"), "public", '{"status":"done"}')
    assert receiver.seen[0].headers["Host"] == f"hooks.test:{receiver.port}"
    assert state(redis_client, "r7").state == "delivered"
    # The name checked fine at submit, then answers a private address at delivery: nothing is sent.
    delivery.run("r8", receiver.url(host="rebound.test"), "public", "{}")
    assert len(receiver.seen) == 1 and state(redis_client, "r8").state == "failed"


def test_http_is_refused_at_delivery_when_https_is_required(settings_factory: Callable[..., GatewaySettings],
                                                            redis_client: Redis,
                                                            receiver_factory: Callable[..., Receiver]) -> None:
    settings = settings_factory(**{**LOCAL, "webhook_allow_http": False})
    receiver = receiver_factory(200)
    _delivery(settings, redis_client, {}).run("r9", receiver.url(), "public", "{}")
    assert receiver.seen == [] and state(redis_client, "r9").state == "failed"


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_sends_sni_and_verifies_the_certificate_for_the_name(
        settings_factory: Callable[..., GatewaySettings], redis_client: Redis,
        receiver_factory: Callable[..., Receiver], tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "hooks.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    receiver = receiver_factory(200, 200, tls=server_tls)
    settings = settings_factory(**{**LOCAL, "webhook_allow_http": False})
    trust = ssl.create_default_context(cafile=str(cert))
    answers = {"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    delivery = _delivery(settings, redis_client, answers, trust)
    delivery.run("r10", receiver.url(host="hooks.test", scheme="https"), "public", "{}")
    assert state(redis_client, "r10").state == "delivered" and len(receiver.seen) == 1
    # Same address, another name: the certificate does not match it, so nothing is sent.
    with pytest.raises(webhooks.DeliveryFailedError):
        delivery.run("r11", receiver.url(host="other.test", scheme="https"), "public", "{}")
    final = state(redis_client, "r11")
    assert (final.state, final.attempts, final.last_status) == ("pending", 1, None)
    assert final.last_error is not None and final.last_error.startswith("network error")
    assert len(receiver.seen) == 1


# --- the dispatcher: a job's end becomes a delivery -------------------------------------------------------

def _queued_deliveries(redis: Redis) -> int:
    return int(redis.llen(f"rq:queue:{WEBHOOK_QUEUE_NAME}"))


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _submit_with_hook(client: TestClient, redis: Redis, prompt: str, url: str) -> tuple[str, str]:
    """A request submitted through the API, then given a webhook as submit would (before any worker runs)."""
    response = client.post("/api/infer", json={"messages": [{"role": "user", "content": prompt}],
                                               "max_tokens": 8})
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    job_id = job_of(redis, request_id)
    with redis.pipeline() as pipe:
        pipe.multi()
        webhooks.register(pipe, request_id, "public", url, job_id, 600)
        pipe.execute()
    return request_id, job_id


def test_an_ended_job_is_delivered_by_the_dispatcher(
        client_factory: Callable[..., TestClient], settings_factory: Callable[..., GatewaySettings],
        worker_factory: Callable[..., ThreadWorker], redis_client: Redis,
        receiver_factory: Callable[..., Receiver]) -> None:
    client = client_factory(**LOCAL)
    receiver = receiver_factory(200)
    request_id, job_id = _submit_with_hook(client, redis_client, "hook me", receiver.url())
    worker_factory(InstantEngine())
    _wait(lambda: _queued_deliveries(redis_client) == 1 and not redis_client.exists(JOB_HOOKS_PREFIX + job_id)
          and redis_client.xpending(ENDED_STREAM, webhooks.GROUP)["pending"] == 0)
    run_deliveries(settings_factory(**LOCAL), redis_client)
    (seen,) = receiver.seen
    body = json.loads(seen.body)
    answer = client.get(f"/api/result?request_id={request_id}").json()
    assert body["request_id"] == request_id and body["status"] == "done"
    assert body["result"] == answer["result"]
    assert readme_verify()(SECRET, seen.headers["X-Vlq-Signature"], seen.body)
    assert state(redis_client, request_id).state == "delivered"


def test_a_canceled_job_reaches_its_webhook(client_factory: Callable[..., TestClient],
                                            settings_factory: Callable[..., GatewaySettings],
                                            redis_client: Redis,
                                            receiver_factory: Callable[..., Receiver]) -> None:
    client = client_factory(**LOCAL)
    receiver = receiver_factory(200)
    request_id, _job_id = _submit_with_hook(client, redis_client, "cancel me", receiver.url())
    assert client.delete(f"/api/result?request_id={request_id}").json()["status"] == "canceled"
    _wait(lambda: _queued_deliveries(redis_client) == 1)
    run_deliveries(settings_factory(**LOCAL), redis_client)
    assert json.loads(receiver.seen[0].body)["status"] == "canceled"


def test_entries_a_dead_gateway_left_pending_are_reclaimed(settings_factory: Callable[..., GatewaySettings],
                                                          redis_client: Redis) -> None:
    settings = settings_factory(**LOCAL)
    redis_client.xgroup_create(ENDED_STREAM, webhooks.GROUP, id="0", mkstream=True)
    redis_client.xadd(ENDED_STREAM, {"job": "gone-job"})
    # A consumer reads the entry and dies before acknowledging it.
    assert redis_client.xreadgroup(webhooks.GROUP, "dead", {ENDED_STREAM: ">"}, count=10)

    async def go() -> tuple[int, int]:
        backend = connect(settings)
        try:
            dispatcher = webhooks.Dispatcher(backend, consumer="alive", block_ms=10, claim_idle_ms=0)
            await dispatcher.ensure_group()
            return await dispatcher.reclaim(), await dispatcher.step()
        finally:
            await backend.aredis.aclose()
            await backend.stream_redis.aclose()
            backend.redis.close()
            backend.l2.close()

    assert asyncio.run(go()) == (1, 0)
    assert redis_client.xpending(ENDED_STREAM, webhooks.GROUP)["pending"] == 0


def test_a_delivery_job_runs_only_the_webhook_function(settings_factory: Callable[..., GatewaySettings],
                                                       redis_client: Redis) -> None:
    from rq.queue import Queue

    queue = Queue(WEBHOOK_QUEUE_NAME, connection=redis_client, serializer=JSONSerializer)
    planted = queue.enqueue_call("os.getpid")
    run_deliveries(settings_factory(**LOCAL), redis_client)
    job = Job.fetch(planted.id, connection=redis_client, serializer=JSONSerializer)
    assert job.get_status() == "failed"
    assert "refusing job function" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]


def test_the_webhook_worker_process_retries_after_a_backoff(
        settings_factory: Callable[..., GatewaySettings], redis_url: str, redis_client: Redis,
        receiver_factory: Callable[..., Receiver], processes: Any) -> None:
    settings = settings_factory(**{**LOCAL, "webhook_retry_base_s": 1})
    receiver = receiver_factory(502, 200)
    env = {"VLQ_GATEWAY_REDIS_URL": redis_url, "VLQ_GATEWAY_WEBHOOK_SECRET": SECRET,
           "VLQ_GATEWAY_WEBHOOK_ALLOW_HTTP": "true", "VLQ_GATEWAY_WEBHOOK_ALLOW_CIDRS": '["127.0.0.1/32"]'}
    worker = processes.start("webhooks", ["-m", "gateway.webhook_worker"], env)
    enqueue(settings, "r12", receiver.url(), {"status": "done"})
    _wait(lambda: state(redis_client, "r12").state == "delivered", timeout_s=20)
    assert worker.poll() is None, processes.log_of(worker)
    assert len(receiver.seen) == 2
    # RQ's scheduler held the retry back for its interval (1 s) before it ran again.
    first, second = (seen.headers["X-Vlq-Signature"].split(",")[0] for seen in receiver.seen)
    assert int(second[2:]) - int(first[2:]) >= 1


# --- webhook_url on the API: every way a request ends is delivered ---------------------------------------

def _ask(client: TestClient, url: str, prompt: str = "hook this") -> dict[str, Any]:
    response = client.post("/api/infer", json={"messages": [{"role": "user", "content": prompt}],
                                               "max_tokens": 8, "webhook_url": url})
    assert response.status_code in (200, 202), response.text
    return dict(response.json())


def test_miss_coalesced_and_cache_hit_requests_are_each_delivered(
        client_factory: Callable[..., TestClient], settings_factory: Callable[..., GatewaySettings],
        worker_factory: Callable[..., ThreadWorker], redis_client: Redis,
        receiver_factory: Callable[..., Receiver]) -> None:
    client = client_factory(**LOCAL)
    receiver = receiver_factory(200, 200, 200)
    first, second = _ask(client, receiver.url()), _ask(client, receiver.url())
    assert client.get(f"/api/result?request_id={first['request_id']}").json()["webhook"] == {
        "state": "pending", "attempts": 0, "last_status": None}
    worker_factory(InstantEngine())
    _wait(lambda: _queued_deliveries(redis_client) == 2)
    hit = _ask(client, receiver.url())
    assert hit["x_cache"] == "HIT-L1"
    run_deliveries(settings_factory(**LOCAL), redis_client)
    delivered = {json.loads(seen.body)["request_id"]: json.loads(seen.body) for seen in receiver.seen}
    assert set(delivered) == {first["request_id"], second["request_id"], hit["request_id"]}
    assert {body["x_cache"] for body in delivered.values()} == {"MISS", "COALESCED", "HIT-L1"}
    assert len({body["result"]["text"] for body in delivered.values()}) == 1
    for request_id in delivered:
        shown = client.get(f"/api/result?request_id={request_id}").json()["webhook"]
        assert shown == {"state": "delivered", "attempts": 1, "last_status": 200}
    assert all(readme_verify()(SECRET, seen.headers["X-Vlq-Signature"], seen.body) for seen in receiver.seen)


def test_a_refused_webhook_url_writes_nothing(client_factory: Callable[..., TestClient], refused: Any) -> None:
    client = client_factory(webhook_secret=SECRET)
    body = {"messages": [{"role": "user", "content": "q"}]}
    for url in ("https://127.0.0.1/hook", "https://169.254.169.254/", "http://93.184.216.34/hook"):
        response = client.post("/api/infer", json={**body, "webhook_url": url})
        refused(response, 400 if url.startswith("http:") else 422, "webhook_url_refused", "webhook_url")
    unset = client_factory()
    refused(unset.post("/api/infer", json={**body, "webhook_url": "https://93.184.216.34/"}), 400,
            "webhook_not_configured", "webhook_url")


def test_a_batch_with_a_webhook_delivers_the_batch_object(
        server_factory: Any, settings_factory: Callable[..., GatewaySettings],
        worker_factory: Callable[..., ThreadWorker], redis_client: Redis,
        receiver_factory: Callable[..., Receiver]) -> None:
    import httpx

    receiver = receiver_factory(200)
    base = server_factory(**LOCAL, batch_poll_s=0.05)
    worker_factory(InstantEngine())
    line = {"custom_id": "one", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}}
    with httpx.Client(base_url=base) as http:
        file_id = http.post("/v1/files", data={"purpose": "batch"},
                            files={"file": ("in.jsonl", json.dumps(line).encode() + b"\n")}).json()["id"]
        batch = http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                               "completion_window": "24h", "webhook_url": receiver.url()}).json()
        _wait(lambda: _queued_deliveries(redis_client) == 1)
        run_deliveries(settings_factory(**LOCAL), redis_client)
        (seen,) = receiver.seen
        delivered = json.loads(seen.body)
        assert delivered["id"] == batch["id"] and delivered["status"] == "completed"
        assert delivered["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
        assert http.get(f"/v1/batches/{batch['id']}").json()["webhook"]["state"] == "delivered"
