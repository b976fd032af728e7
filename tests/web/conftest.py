"""Browser tests of the web page: Debian's chromium driven by Playwright, against real processes.

One stack serves the session: a redis-server, a worker on the instant test engine (its answers stream in
four chunks over ``INSTANT_DELAY_S``, long enough to catch a turn queued or running) and two gateways on
that Redis, one open and one with API keys; and a gateway on a second Redis that no worker serves, where
requests wait ("warming"). Each test gets a fresh browser context (empty storage) whose
page is watched: a page error or a CSP violation fails the test that caused it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright
from redis import Redis

from gateway.auth import hash_key
from tests.conftest import ROOT, ProcessGroup, RedisProcess, free_port
from tests.e2e.test_stack import wait_http
from worker.config import DEFAULT_MODEL
from worker.contract import Priority
from worker.rqjobs import queue_names

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = ROOT / "docs" / "screenshots"
INSTANT_DELAY_S = 1.5
API_KEY = "vlq_browser-test-key-0123456789abcdef"
# The interactive queue of the default model, which the stack's gateway and worker both serve.
QUEUE = "rq:queue:" + queue_names(DEFAULT_MODEL)[Priority.INTERACTIVE]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}

# Runs before the page's own scripts: records every CSP violation the browser reports.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


@dataclass
class Gateway:
    base: str
    proc: subprocess.Popen[bytes]
    auth: bool


@dataclass
class WebStack:
    redis: RedisProcess
    procs: ProcessGroup
    open: Gateway
    keyed: Gateway
    worker: subprocess.Popen[bytes]
    idle: Gateway
    idle_redis: RedisProcess

    def queue_length(self, redis: RedisProcess | None = None) -> int:
        with Redis.from_url((redis or self.redis).url) as client:
            return int(client.llen(QUEUE))


def _gateway(procs: ProcessGroup, redis_url: str, workdir: Path, name: str, auth: bool) -> Gateway:
    port = free_port()
    env = {"VLQ_GATEWAY_REDIS_URL": redis_url, "VLQ_GATEWAY_PORT": str(port),
           "VLQ_GATEWAY_L2_PATH": str(workdir / f"{name}-l2.sqlite3"), "VLQ_GATEWAY_MAX_IMAGES": "3",
           "VLQ_GATEWAY_AUTH_ENABLED": "true" if auth else "false"}
    if auth:
        keys = workdir / "keys.json"
        keys.write_text(json.dumps({"browser-tenant": [hash_key(API_KEY)]}))
        env["VLQ_GATEWAY_API_KEYS_FILE"] = str(keys)
    proc = procs.start(f"gateway-{name}", ["-m", "gateway"], env)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", 60, proc, procs)
    return Gateway(base, proc, auth)


@pytest.fixture(scope="package")
def web_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    workdir = tmp_path_factory.mktemp("web-stack")
    redis, idle_redis = RedisProcess(workdir), RedisProcess(workdir / "idle")
    (workdir / "idle").mkdir()
    redis.start()
    idle_redis.start()
    procs = ProcessGroup(workdir)
    try:
        metrics_port = free_port()
        worker = procs.start("worker", ["-m", "worker"], {
            "VLQ_WORKER_REDIS_URL": redis.url, "VLQ_WORKER_ENGINE": "instant",
            "VLQ_WORKER_INSTANT_DELAY_S": str(INSTANT_DELAY_S), "VLQ_WORKER_METRICS_PORT": str(metrics_port),
            "VLQ_WORKER_HEARTBEAT_INTERVAL_S": "1"})
        wait_http(f"http://127.0.0.1:{metrics_port}/healthz", 60, worker, procs)
        open_gateway = _gateway(procs, redis.url, workdir, "open", auth=False)
        keyed_gateway = _gateway(procs, redis.url, workdir, "keyed", auth=True)
        idle_gateway = _gateway(procs, idle_redis.url, workdir, "idle", auth=False)
        yield WebStack(redis, procs, open_gateway, keyed_gateway, worker, idle_gateway, idle_redis)
    finally:
        procs.stop_all()
        redis.stop()
        idle_redis.stop()


# Package scope, not session: Playwright's sync API keeps an event loop running in the main thread while it
# is open, and the tests after tests/web (tests/worker) call asyncio.run(), which refuses to run then.
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: `make browser` installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Watched:
    """A page and what it reported: console lines, uncaught errors, CSP violations."""

    page: Any
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        reported = self.page.evaluate("window.__csp || []") if not self.page.is_closed() else []
        in_console = [line for line in self.console if "Content Security Policy" in line]
        return [*reported, *in_console]

    def forget_csp_violations(self) -> None:
        """For a test that provokes violations on purpose: they are not the page's."""
        self.page.evaluate("window.__csp = []")
        self.console[:] = [line for line in self.console if "Content Security Policy" not in line]


class Pages:
    """Opens watched pages, each in a fresh browser context; ``check()`` closes them and fails on what they
    reported (an uncaught error or a CSP violation)."""

    def __init__(self, browser: Any, timeout_ms: int = 15_000) -> None:
        self.browser = browser
        self.timeout_ms = timeout_ms
        self.contexts: list[Any] = []
        self.watched: list[Watched] = []

    def open(self, url: str, viewport: dict[str, int] | None = None) -> Watched:
        context = self.browser.new_context(viewport=viewport or DESKTOP)
        context.set_default_timeout(self.timeout_ms)
        context.add_init_script(WATCH_CSP)
        self.contexts.append(context)
        page = context.new_page()
        watch = Watched(page)
        page.on("console", lambda message: watch.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: watch.errors.append(str(error)))
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        self.watched.append(watch)
        return watch

    def check(self) -> None:
        problems = [(w.errors, w.csp_violations()) for w in self.watched]
        for context in self.contexts:
            context.close()
        for errors, violations in problems:
            assert errors == [], f"uncaught errors in the page: {errors}"
            assert violations == [], f"CSP violations: {violations}"


@pytest.fixture
def open_page(browser: Any, web_stack: WebStack) -> Iterator[Callable[..., Watched]]:
    """Opens the page in a fresh context: ``open_page(gateway=None, viewport=DESKTOP)``."""
    pages = Pages(browser)
    yield lambda gateway=None, viewport=None: pages.open((gateway or web_stack.open).base + "/", viewport)
    pages.check()
