"""The page against the product's own path: a vLLM worker on the tiny random-weight Qwen3-VL (answers are
noise, but they stream token by token through the real engine), the gateway and Redis, each a process.
Slow to start (the engine takes about a minute on CPU), so one stack serves the module."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import ROOT, ProcessGroup, RedisProcess, free_port, make_image
from tests.e2e.test_stack import wait_http
from tests.web.conftest import Pages, Watched
from tests.web.pagekit import ask, png, saved_turns, status, wait_state
from worker.config import DEFAULT_MODEL

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
MODEL_DIR = ROOT / DEFAULT_MODEL


@pytest.fixture(scope="module")
def vllm_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (MODEL_DIR / "config.json").exists():
        subprocess.run([sys.executable, "-m", "worker.tiny_model", "--out", str(MODEL_DIR)], cwd=ROOT, check=True)
    workdir = tmp_path_factory.mktemp("web-vllm")
    redis = RedisProcess(workdir)
    redis.start()
    procs = ProcessGroup(workdir)
    metrics_port, port = free_port(), free_port()
    try:
        worker = procs.start("worker", ["-m", "worker"], {
            "VLQ_WORKER_REDIS_URL": redis.url, "VLQ_WORKER_MODEL": DEFAULT_MODEL, "VLQ_WORKER_ENGINE": "vllm",
            "VLQ_WORKER_METRICS_PORT": str(metrics_port), "VLQ_WORKER_MAX_INFLIGHT": "4",
            "VLQ_WORKER_MAX_NUM_SEQS": "4", "VLQ_WORKER_MAX_MODEL_LEN": "1024", "VLQ_WORKER_ENFORCE_EAGER": "true"})
        wait_http(f"http://127.0.0.1:{metrics_port}/healthz", 300, worker, procs)
        gateway = procs.start("gateway", ["-m", "gateway"], {
            "VLQ_GATEWAY_REDIS_URL": redis.url, "VLQ_GATEWAY_MODEL": DEFAULT_MODEL, "VLQ_GATEWAY_PORT": str(port),
            "VLQ_GATEWAY_AUTH_ENABLED": "false", "VLQ_GATEWAY_L2_PATH": str(workdir / "l2.sqlite3")})
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", 60, gateway, procs)
        yield base
    finally:
        procs.stop_all()
        redis.stop()


@pytest.fixture
def vllm_page(browser: Any, vllm_base: str) -> Iterator[Callable[[], Watched]]:
    pages = Pages(browser, timeout_ms=60_000)
    yield lambda: pages.open(vllm_base + "/")
    pages.check()


def test_tokens_stream_from_vllm_and_the_repeat_is_a_hit(vllm_page: Callable[[], Watched]) -> None:
    page = vllm_page().page
    page.fill("#p-max-tokens", "48")
    page.fill("#p-seed", "7")
    image = png("real.png", make_image((200, 60, 10), size=(224, 224)))
    turn = ask(page, "Describe the picture.", image)
    wait_state(turn, "done", timeout_ms=120_000)
    saved = saved_turns(page)[0]
    text = saved["final"]["result"]["text"]
    assert text and saved["text"] == text
    assert re.match(r"^done · .* · MISS$", status(turn)), status(turn)
    deltas = [line for line in saved["log"] if re.search(r"#\d+ delta", line["text"])]
    assert len(deltas) >= 2  # the real engine streams in pieces, not one final blob
    page.click("#new-chat")
    again = ask(page, "Describe the picture.", image)
    wait_state(again, "done", timeout_ms=10_000)
    assert re.match(r"^done · .* · HIT-L1$", status(again)), status(again)
    assert saved_turns(page)[0]["final"]["result"]["text"] == text


def test_a_conversation_and_a_reload_on_the_real_engine(vllm_page: Callable[[], Watched]) -> None:
    page = vllm_page().page
    page.fill("#p-max-tokens", "96")
    first = ask(page, "What is it?", png("conv.png", make_image((10, 90, 200), size=(224, 224))))
    wait_state(first, "done", timeout_ms=120_000)
    second = ask(page, "And what else?")
    expect(second).to_have_attribute("data-state", re.compile("^(queued|running|done)$"))
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    second = page.locator(".turn").nth(1)
    wait_state(second, "done", timeout_ms=120_000)
    saved = saved_turns(page)
    assert saved[1]["text"] == saved[1]["final"]["result"]["text"]
    assert [m["role"] for m in saved[1]["body"]["messages"]] == ["user", "assistant", "user"]
