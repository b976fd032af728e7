# Locust's own API is only partly annotated (ResponseContextManager.failure, LoadTestShape, events).
# mypy: disable-error-code="no-untyped-call,untyped-decorator"
"""Locust load test for vlq: weighted personas that submit images and long-poll for the answer.

Personas (weights in brackets):

- ``ColdUser`` [3]: a new image every time (pixel-distinct, 448x336), so every request misses the cache;
- ``RepeatUser`` [2]: a fixed set of four images and one prompt, so after the first round every request is a
  cache hit (``200`` with ``X-Cache: HIT-*``);
- ``SeedScenarioUser`` [1]: the seed scenario, a distinct 1080p JPEG with a ~256-token prompt.

Every user submits ``POST /api/infer`` and, on ``202``, long-polls ``GET /api/result?wait=S`` (grouped in
the stats as ``/api/result?wait``) until the request ends; the whole submit -> done time is reported as a
``JOB`` entry per persona and cache outcome. Every non-2xx response must carry the error envelope
``{"error": {"message", "type", "param", "code"}}``; it is counted as a failure either way, with the error
code as the message when the envelope is right and "malformed error envelope" when it is not.

``make loadtest`` starts a local stack and runs this headless (see ``loadtest/run_local.py``). By hand,
against a running ``make run``::

    locust --config loadtest/locust.conf --host http://127.0.0.1:8000

Environment: ``VLQ_API_KEY`` (sent as a Bearer token when set), ``LOADTEST_STAGES`` (or ``--stages``),
``LOADTEST_MAX_TOKENS`` (default 16), ``LOADTEST_WAIT_S`` (long-poll seconds, default 30). Traffic goes to
a loopback host only, unless ``LOADTEST_ALLOW_REMOTE=1`` says otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

from locust import FastHttpUser, LoadTestShape, between, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment

from loadtest.images import DistinctPhotos, Upload, multipart, prompt, solid_jpeg

ENVELOPE_FIELDS = ("message", "type", "param", "code")
POLL_NAME = "/api/result?wait"
DEFAULT_STAGES = "10:2:1,30:6:1,48:12:2,58:4:4"

log = logging.getLogger("vlq.loadtest")


def envelope_problem(response: ResponseContextManager) -> str:
    """The failure message for a non-2xx response: its error code if the envelope is right, else why not."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {status}: malformed error envelope (body is not JSON)"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or any(field not in error for field in ENVELOPE_FIELDS):
        return f"HTTP {status}: malformed error envelope {str(body)[:120]}"
    if not all(isinstance(error[field], str) for field in ("message", "type", "code")) or not (
            error["param"] is None or isinstance(error["param"], str)):
        return f"HTTP {status}: malformed error envelope (wrong field types) {str(error)[:120]}"
    return f"HTTP {status} {error['type']}/{error['code']}: {error['message']}"


@dataclass
class Ended:
    """How a submitted request ended."""

    status: str
    x_cache: str


class VlqUser(FastHttpUser):
    """Base persona: submit, long-poll, validate every response. Subclasses pick the images and prompt."""

    abstract = True
    wait_time = between(0.5, 2.0)
    max_tokens = os.environ.get("LOADTEST_MAX_TOKENS", "16")
    wait_s = float(os.environ.get("LOADTEST_WAIT_S", "30"))

    def on_start(self) -> None:
        key = os.environ.get("VLQ_API_KEY")
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}

    def request(self) -> tuple[list[Upload], str]:
        """The images and prompt of the next request."""
        raise NotImplementedError

    @task
    def ask(self) -> None:
        images, text = self.request()
        started = time.perf_counter()
        ended = self.submit(images, text)
        if ended is not None:
            self.report_job(ended, (time.perf_counter() - started) * 1000)

    def submit(self, images: list[Upload], text: str) -> Ended | None:
        """POST /api/infer, then long-poll until the request ends; None when a request failed."""
        body, content_type = multipart({"prompt": text, "max_tokens": self.max_tokens}, images)
        headers = {"Content-Type": content_type, **self.auth}
        # The annotation says str/dict; geventhttpclient sends bytes as they are (a multipart body must be).
        with self.client.post("/api/infer", data=body, headers=headers,  # type: ignore[arg-type]
                              catch_response=True) as response:
            data = self.accept(response, (200, 202))
            x_cache = response.headers.get("X-Cache", "") if data is not None else ""
            if data is not None and not x_cache:
                response.failure("no X-Cache header")
                return None
        if data is None:
            return None
        if response.status_code == 200:
            return Ended(str(data.get("status")), x_cache)
        return self.poll(str(data["request_id"]), x_cache)

    def poll(self, request_id: str, x_cache: str) -> Ended | None:
        url = f"/api/result?request_id={request_id}&wait={self.wait_s:g}"
        while True:
            with self.client.get(url, headers=self.auth, name=POLL_NAME, catch_response=True) as response:
                data = self.accept(response, (200, 202))
            if data is None:
                return None
            if response.status_code == 200:
                return Ended(str(data.get("status")), x_cache)

    def accept(self, response: ResponseContextManager, expected: tuple[int, ...]) -> dict[str, Any] | None:
        """The JSON body if the status is one of ``expected``; otherwise mark the request failed."""
        if not 200 <= response.status_code < 300:
            response.failure(envelope_problem(response))
            return None
        if response.status_code not in expected:
            response.failure(f"unexpected HTTP {response.status_code}")
            return None
        try:
            data = response.json()
        except ValueError:
            response.failure("response body is not JSON")
            return None
        if not isinstance(data, dict) or "request_id" not in data or "status" not in data:
            response.failure(f"unexpected body {str(data)[:120]}")
            return None
        return data

    def report_job(self, ended: Ended, elapsed_ms: float) -> None:
        """One ``JOB`` stats entry per persona and cache outcome: the time from submit to done."""
        failed = None if ended.status == "done" else RuntimeError(f"request ended {ended.status}")
        self.environment.events.request.fire(
            request_type="JOB", name=f"{type(self).__name__} submit->done ({ended.x_cache})",
            response_time=elapsed_ms, response_length=0, exception=failed, context={})


class ColdUser(VlqUser):
    """Cache misses: a pixel-distinct image each time."""

    weight = 3

    def on_start(self) -> None:
        super().on_start()
        self.photos = DistinctPhotos(seed=random.randrange(1 << 30), size=(448, 336))

    def request(self) -> tuple[list[Upload], str]:
        return [Upload(self.photos.next())], "What is in this picture?"


class RepeatUser(VlqUser):
    """Cache hits: a small fixed set of images and one prompt."""

    weight = 2
    images = tuple(solid_jpeg(color) for color in ((200, 30, 30), (30, 160, 60), (30, 60, 200), (230, 200, 40)))

    def request(self) -> tuple[list[Upload], str]:
        return [Upload(random.choice(self.images))], "Which color fills this image?"


class SeedScenarioUser(VlqUser):
    """The seed scenario: a distinct 1080p JPEG and a prompt of about 256 tokens."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.photos = DistinctPhotos(seed=random.randrange(1 << 30))

    def request(self) -> tuple[list[Upload], str]:
        return [Upload(self.photos.next())], prompt(250)


def parse_stages(text: str) -> list[tuple[float, int, float]]:
    """``"10:2:1,30:6:1"`` -> [(end second, users, spawn rate), ...], ends strictly increasing."""
    stages = []
    for item in text.split(","):
        end, users, rate = item.strip().split(":")
        stages.append((float(end), int(users), float(rate)))
    if not stages or any(later[0] <= earlier[0] for earlier, later in pairwise(stages)):
        raise ValueError(f"stages must be end:users:rate with increasing ends, got {text!r}")
    return stages


class StagesShape(LoadTestShape):
    """Ramp in stages: each stage holds a user count until its end second; the test stops after the last.

    Stages come from ``--stages`` or ``LOADTEST_STAGES`` as ``end:users:spawn_rate,...``.
    """

    use_common_options = True
    _stages: list[tuple[float, int, float]] | None = None

    def stages(self) -> list[tuple[float, int, float]]:
        if self._stages is None:
            options = self.runner.environment.parsed_options if self.runner else None
            text = getattr(options, "stages", None) or os.environ.get("LOADTEST_STAGES") or DEFAULT_STAGES
            self._stages = parse_stages(text)
        return self._stages

    def tick(self) -> tuple[int, float] | None:
        now = self.get_run_time()
        # Locust starts its --run-time clock only after a shape ends, so the shape honours it itself.
        run_time = getattr(self.runner.environment.parsed_options, "run_time", None) if self.runner else None
        if run_time and now >= run_time:
            return None
        for end, users, rate in self.stages():
            if now < end:
                return users, rate
        return None


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument("--stages", default="", help="load stages end_s:users:spawn_rate,... (or LOADTEST_STAGES)")


def is_loopback(url: str) -> bool:
    """True for http(s) URLs whose host is ``localhost`` or a loopback address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@events.init.add_listener
def _loopback_only(environment: Environment, **kwargs: Any) -> None:
    # Checked before any user starts: a load test must not hit a shared or production host by accident.
    if not is_loopback(environment.host or "") and os.environ.get("LOADTEST_ALLOW_REMOTE") != "1":
        log.error("refusing to send load to %r: loopback only (LOADTEST_ALLOW_REMOTE=1 overrides)", environment.host)
        sys.exit(2)
