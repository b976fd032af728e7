"""/metrics after real requests: the counters the dashboards and alerts read move as they should."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.gateway.conftest import ThreadWorker
from tests.gateway.test_request_path import post


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move_with_requests(client: TestClient, worker_factory: Callable[..., ThreadWorker],
                                    image_factory: Callable[..., bytes]) -> None:
    before = client.get("/metrics").text
    worker_factory()
    image = image_factory((12, 34, 56))
    accepted = post(client, [image])
    client.get(accepted.json()["result_url"] + "&wait=10")
    post(client, [image])  # L1 hit
    post(client, [b"GIF89a" + bytes(20)])  # refused: 415
    after = client.get("/metrics").text

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("vlq_http_requests_total", route="/api/infer", method="POST", status="202") == 1
    assert moved("vlq_http_requests_total", route="/api/infer", method="POST", status="200") == 1
    assert moved("vlq_http_requests_total", route="/api/infer", method="POST", status="415") == 1
    assert moved("vlq_http_request_duration_seconds_count", route="/api/result", method="GET") == 1
    assert moved("vlq_cache_hits_total", tier="l1") == 1
    assert moved("vlq_cache_misses_total") == 1
    assert moved("vlq_refused_total", reason="unsupported_image_type") == 1


def test_unmatched_paths_share_one_label(client: TestClient) -> None:
    for n in range(3):
        client.get(f"/scan/{n}")
    text = client.get("/metrics").text
    assert sample(text, "vlq_http_requests_total", route="unmatched", method="GET", status="404") == 3
    assert "/scan/" not in text


def test_access_log_line_has_ids_hashes_and_sizes_but_no_prompt(
        client: TestClient, image_factory: Callable[..., bytes], caplog) -> None:
    import json
    import logging

    from cache.keys import image_digest

    image = image_factory((42, 42, 42))
    with caplog.at_level(logging.INFO, logger="vlq.access"):
        accepted = post(client, [image], prompt="SECRET-PROMPT-TEXT")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "vlq.access"]
    line = next(entry for entry in lines if entry["route"] == "/api/infer")
    assert line["request"] == accepted.json()["request_id"]
    assert line["request_id"] == accepted.headers["x-request-id"]
    assert line["images"] == [image_digest(image)[:16]]
    assert line["image_bytes"] == [len(image)]
    assert line["status"] == 202
    assert line["tenant"] == "public"
    assert "SECRET-PROMPT-TEXT" not in caplog.text


def test_metrics_are_merged_across_uvicorn_worker_processes(processes, redis_url: str, tmp_path) -> None:
    import time

    import httpx

    from tests.conftest import free_port

    port = free_port()
    env = {"VLQ_GATEWAY_REDIS_URL": redis_url, "VLQ_GATEWAY_PORT": str(port), "VLQ_GATEWAY_WORKERS": "2",
           "VLQ_GATEWAY_AUTH_ENABLED": "false", "VLQ_GATEWAY_L2_PATH": str(tmp_path / "l2.db"),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    (tmp_path / "prom").mkdir()
    processes.start("gateway", ["-m", "gateway"], env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.2)
    # New connections each time, so both processes serve some of them.
    for _ in range(40):
        httpx.get(base + "/healthz", timeout=5)
    text = httpx.get(base + "/metrics", timeout=5).text
    served = sample(text, "vlq_http_requests_total", route="/healthz", method="GET", status="200")
    assert served >= 41
    pids = {p.name for p in (tmp_path / "prom").glob("counter_*.db")}
    assert len(pids) >= 2, pids
