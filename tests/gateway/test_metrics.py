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
