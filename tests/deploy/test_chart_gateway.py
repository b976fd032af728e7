"""The gateway's own settings as the chart sets them: it listens on the pod's address, its tenant and admission
limits come from values, it refuses work without a live worker unless workers scale to zero, several uvicorn
processes share their metrics, and the ingress lets through every body the gateway accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewaySettings
from tests.deploy.conftest import Render
from tests.deploy.gatewaypod import gateway_settings
from tests.deploy.objects import container, find, pod_spec
from tests.deploy.scenarios import INGRESS, SCENARIOS


def gateway_config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", "-gateway")["data"])


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_gateway_listens_on_the_pod_address_and_the_container_port(render: Render, scenario: str,
                                                                   tmp_path: Path) -> None:
    docs = render(SCENARIOS[scenario])
    settings = gateway_settings(docs, tmp_path)
    assert settings.host == "0.0.0.0"
    (port,) = container(find(docs, "Deployment", "-gateway"), "gateway")["ports"]
    assert settings.port == port["containerPort"] == 8000


def test_tenant_and_admission_settings_come_from_values(render: Render, tmp_path: Path) -> None:
    config = {"rateLimitPerMinute": 90, "tenantMaxInflight": 12, "maxQueueDepth": 2500, "sharedCache": True,
              "requireLiveWorker": False, "maxBodyBytes": 268435456, "bodyReadTimeoutSeconds": 7.5,
              "bodyDeadlineSeconds": 45, "maxImageBytes": 52428800}
    docs = render({"gateway": {"workers": 3, "config": config}})
    env = gateway_config(docs)
    assert env["VLQ_GATEWAY_MAX_BODY_BYTES"] == "268435456"  # a plain integer, not 2.68435456e+08
    settings = gateway_settings(docs, tmp_path)
    assert (settings.rate_limit_per_minute, settings.tenant_max_inflight, settings.max_queue_depth) == (90, 12, 2500)
    assert settings.shared_cache is True and settings.require_live_worker is False
    assert (settings.max_body_bytes, settings.body_read_timeout_s, settings.body_deadline_s) == (268435456, 7.5, 45)
    assert settings.workers == 3


def test_chart_defaults_limit_every_tenant(render: Render, tmp_path: Path) -> None:
    settings = gateway_settings(render({}), tmp_path)
    # GatewaySettings' own defaults suit a laptop: loopback, and 0 (unlimited) for the tenant limits. An installed
    # gateway listens where the kubelet's probes and the Service reach it, and bounds each tenant.
    assert GatewaySettings.model_fields["host"].default == "127.0.0.1"
    assert (settings.rate_limit_per_minute, settings.tenant_max_inflight) == (600, 256)
    assert settings.shared_cache is False and settings.auth_enabled is True
    assert settings.max_body_bytes >= settings.max_images * settings.max_image_bytes


@pytest.mark.parametrize(
    ("values", "required"),
    [
        ({}, True),
        ({"autoscaling": {"mode": "keda"}}, True),
        ({"autoscaling": {"mode": "hpa"}}, True),
        # No worker runs until a job is queued: refusing jobs while none is alive would never wake one.
        ({"autoscaling": {"mode": "keda", "scaleToZero": True}}, False),
        ({"gateway": {"config": {"requireLiveWorker": False}}}, False),
        ({"autoscaling": {"mode": "keda", "scaleToZero": True}, "gateway": {"config": {"requireLiveWorker": False}}},
         False),
        ({"gateway": {"config": {"requireLiveWorker": True}}}, True),
    ],
)
def test_require_live_worker_follows_scale_to_zero(render: Render, values: dict[str, Any], required: bool) -> None:
    assert gateway_config(render(values))["VLQ_GATEWAY_REQUIRE_LIVE_WORKER"] == str(required).lower()


def test_several_processes_share_metrics_through_an_emptydir(render: Render) -> None:
    deployment = find(render(SCENARIOS["gateway-processes"]), "Deployment", "-gateway")
    gateway = container(deployment, "gateway")
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    # A volume of its own: emptied when the pod starts, so no file of an earlier pod's processes is merged in.
    assert "emptyDir" in volumes[mounts[env["PROMETHEUS_MULTIPROC_DIR"]]]
    assert gateway_config(render(SCENARIOS["gateway-processes"]))["VLQ_GATEWAY_WORKERS"] == "4"
    single = container(find(render({}), "Deployment", "-gateway"), "gateway")
    assert "PROMETHEUS_MULTIPROC_DIR" not in {e["name"] for e in single["env"]}
    assert "/tmp/prometheus" not in {m["mountPath"] for m in single["volumeMounts"]}


def nginx_bytes(size: str) -> int:
    """Bytes of an nginx size: k, m, g are powers of 1024."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    assert match, size
    return int(match.group(1)) << (10 * " kmg".index(match.group(2).lower() or " "))


@pytest.mark.parametrize(
    "values",
    [INGRESS, SCENARIOS["everything"],
     {"gateway": {"ingress": {**INGRESS["gateway"]["ingress"], "maxBodySize": "100m"},
                  "config": {"maxBodyBytes": 104857600}}}],
    ids=["ingress", "everything", "larger-bodies"],
)
def test_ingress_lets_through_every_body_the_gateway_accepts(render: Render, values: dict[str, Any]) -> None:
    docs = render(values)
    annotation = find(docs, "Ingress")["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert nginx_bytes(annotation) >= int(gateway_config(docs)["VLQ_GATEWAY_MAX_BODY_BYTES"])
    assert nginx_bytes("50m") == 52428800 and nginx_bytes("512k") == 524288 and nginx_bytes("1024") == 1024
