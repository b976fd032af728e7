"""ServiceMonitors, alerts and the Grafana dashboard: switchable, and only about metrics vlq exports."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import Render
from tests.deploy.objects import WORKER, find, find_all, kinds, matches
from tests.deploy.scenarios import MONITORING

# The metric families the gateway and the worker export (histograms as their family name).
GATEWAY_METRICS = {
    "vlq_http_requests_total", "vlq_http_request_duration_seconds", "vlq_cache_hits_total",
    "vlq_cache_misses_total", "vlq_coalesced_total", "vlq_refused_total", "vlq_queue_depth",
    "vlq_queue_started_jobs", "vlq_queue_oldest_age_seconds",
}
WORKER_METRICS = {
    "vlq_worker_jobs_inflight", "vlq_worker_job_queue_wait_seconds", "vlq_worker_job_engine_seconds",
    "vlq_worker_jobs_total", "vlq_worker_failures_total", "vlq_worker_prompt_tokens_total",
    "vlq_worker_generated_tokens_total", "vlq_worker_gpu_memory_used_bytes", "vlq_worker_gpu_memory_total_bytes",
}
HISTOGRAMS = {"vlq_http_request_duration_seconds", "vlq_worker_job_queue_wait_seconds",
              "vlq_worker_job_engine_seconds"}
KNOWN = GATEWAY_METRICS | WORKER_METRICS


def metric_names(expr: str) -> set[str]:
    """vlq metric families named in a PromQL expression (_bucket/_sum/_count folded into the histogram)."""
    names = set(re.findall(r"\bvlq_[a-z0-9_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in HISTOGRAMS
            else n for n in names}


def assert_promql_sane(expr: str) -> None:
    assert expr.count("(") == expr.count(")"), expr
    assert expr.count("{") == expr.count("}"), expr
    unknown = metric_names(expr) - KNOWN
    assert not unknown, f"unknown metrics {unknown} in {expr}"
    for name in re.findall(r"\b(vlq_[a-z0-9_]+_bucket)\b", expr):
        assert re.sub(r"_bucket$", "", name) in HISTOGRAMS, name


def groups(docs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Alert rules by group name, then by alert name."""
    return {g["name"]: {r["alert"]: r for r in g["rules"] or []}
            for g in find(docs, "PrometheusRule")["spec"]["groups"]}


def alerts(docs: list[dict[str, Any]], pool: str = "default") -> dict[str, dict[str, Any]]:
    """The gateway's alerts and those of one worker pool."""
    by_group = groups(docs)
    gateway = next(rules for name, rules in by_group.items() if name.endswith(".rules") and ".worker-" not in name)
    (pool_rules,) = [rules for name, rules in by_group.items() if name.endswith(f".worker-{pool}.rules")]
    return {**gateway, **pool_rules}


def test_monitoring_objects_are_off_unless_asked_for(render: Render) -> None:
    docs = render({})
    assert not {"ServiceMonitor", "PrometheusRule"} & kinds(docs)
    assert find(docs, "ConfigMap", "-dashboard")  # a plain ConfigMap: on by default
    off = render({"monitoring": {"dashboard": {"enabled": False}}})
    assert not [d for d in off if d["metadata"]["name"].endswith("-dashboard")]


def test_service_monitors_scrape_gateway_and_worker_metrics_ports(render: Render) -> None:
    docs = render(MONITORING)
    monitors = find_all(docs, "ServiceMonitor")
    assert len(monitors) == 2
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        services = [s for s in find_all(docs, "Service")
                    if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(services) == 1, monitor["metadata"]["name"]
        assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["vlq"]}
    worker_service = find(docs, "Service", WORKER)
    assert worker_service["spec"]["clusterIP"] == "None"


def test_alerts_cover_latency_errors_gpu_memory_and_queue(render: Render) -> None:
    rules = alerts(render(MONITORING))
    assert set(rules) == {"VlqHighLatencyP95", "VlqHigh5xxRate", "VlqGpuMemoryHigh", "VlqQueueBackingUp",
                          "VlqNoWorkers"}
    latency = rules["VlqHighLatencyP95"]["expr"]
    assert "histogram_quantile(0.95" in latency and "vlq_http_request_duration_seconds_bucket" in latency
    assert re.search(r">\s*5\s*$", latency)
    errors = rules["VlqHigh5xxRate"]["expr"]
    assert 'status=~"5.."' in errors and re.search(r">\s*0\.01\s*$", errors)
    gpu = rules["VlqGpuMemoryHigh"]
    assert "vlq_worker_gpu_memory_used_bytes" in gpu["expr"] and "vlq_worker_gpu_memory_total_bytes" in gpu["expr"]
    assert re.search(r">\s*0\.9\s*$", gpu["expr"]) and gpu["for"] == "5m"
    assert "vlq_queue_oldest_age_seconds" in rules["VlqQueueBackingUp"]["expr"]
    for rule in rules.values():
        assert_promql_sane(rule["expr"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        # Prometheus templating survives Helm: {{ $value }} reaches Prometheus verbatim.
        assert "{{ $value" in rule["annotations"]["description"]


def test_alert_thresholds_come_from_values(render: Render) -> None:
    values = {"monitoring": {"prometheusRule": {"enabled": True, "alerts": {
        "latencyP95": {"thresholdSeconds": 2.5, "for": "15m"},
        "errorRate": {"ratio": 0.05},
        "noWorkers": {"enabled": False},
    }}}}
    rules = alerts(render(values))
    assert re.search(r">\s*2\.5\s*$", rules["VlqHighLatencyP95"]["expr"])
    assert rules["VlqHighLatencyP95"]["for"] == "15m"
    assert re.search(r">\s*0\.05\s*$", rules["VlqHigh5xxRate"]["expr"])
    assert "VlqNoWorkers" not in rules


def test_alerts_select_this_release(render: Render) -> None:
    rules = alerts(render(MONITORING, namespace="ml-prod"))
    assert 'namespace="ml-prod",service="vlq-gateway"' in rules["VlqHigh5xxRate"]["expr"]
    assert 'namespace="ml-prod",service="vlq-worker-default"' in rules["VlqGpuMemoryHigh"]["expr"]
    model = 'model="Qwen/Qwen3-VL-2B-Instruct"'
    assert f'namespace="ml-prod",service="vlq-gateway",{model}' in rules["VlqQueueBackingUp"]["expr"]
    assert f'namespace="ml-prod",service="vlq-gateway",{model}' in rules["VlqNoWorkers"]["expr"]


def dashboard(docs: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = find(docs, "ConfigMap", "-dashboard")
    (text,) = configmap["data"].values()
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_dashboard_configmap_is_found_by_the_grafana_sidecar(render: Render) -> None:
    docs = render({"monitoring": {"dashboard": {"label": "grafana_dashboard", "labelValue": "yes",
                                                "namespace": "grafana", "annotations": {"grafana_folder": "ML"}}}})
    configmap = find(docs, "ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "yes"
    assert configmap["metadata"]["namespace"] == "grafana"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "ML"}


def test_dashboard_charts_every_metric_and_only_known_ones(render: Render) -> None:
    board = dashboard(render({}))
    assert board["uid"] == "vlq-overview"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    seen: set[str] = set()
    for expr in exprs:
        assert_promql_sane(expr)
        seen |= metric_names(expr)
    assert seen == KNOWN, f"not charted: {KNOWN - seen}"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "gateway", "worker", "model"} <= variables
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


@pytest.mark.parametrize("mode", ["keda", "hpa"])
def test_autoscaling_queries_use_known_metrics(render: Render, mode: str) -> None:
    docs = render({"autoscaling": {"mode": mode}})
    if mode == "keda":
        (trigger,) = find(docs, "ScaledObject")["spec"]["triggers"]
        assert_promql_sane(trigger["metadata"]["query"])
    else:
        rules = yaml.safe_load(find(docs, "ConfigMap", "-prometheus-adapter-rules")["data"]["external-rules.yaml"])
        for rule in rules["externalRules"]:
            assert_promql_sane(rule["seriesQuery"])
            assert_promql_sane(rule["metricsQuery"])
