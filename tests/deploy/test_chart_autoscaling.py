"""Worker autoscaling on queued + started jobs: KEDA (prometheus or redis trigger), plain HPA, or none.

The target per worker is ceil(worker.maxInflight x autoscaling.targetUtilization) in every mode.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import Render
from tests.deploy.objects import WORKER, find, kinds
from tests.deploy.scenarios import EXTERNAL_REDIS, SCENARIOS
from worker.constants import BATCH_QUEUE_NAME, QUEUE_NAME

# The model of the one pool a release has by default (model.name in values.yaml).
DEFAULT_MODEL = "Qwen/Qwen3-VL-2B-Instruct"

AUTOSCALER_KINDS = {"ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler"}


def keda(**autoscaling: Any) -> dict[str, Any]:
    return {"autoscaling": {"mode": "keda", **autoscaling}}


@pytest.mark.parametrize(
    ("max_inflight", "utilization"), [(16, 1.0), (12, 0.75), (10, 0.33), (8, 2.0), (1, 0.1)],
)
def test_target_is_derived_from_max_inflight(render: Render, max_inflight: int, utilization: float) -> None:
    expected = str(max(1, math.ceil(max_inflight * utilization)))
    values = {"worker": {"maxInflight": max_inflight, "engine": {"maxNumSeqs": max(max_inflight, 16)}}}
    keda_docs = render({**values, **keda(targetUtilization=utilization)})
    (trigger,) = find(keda_docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["threshold"] == expected
    hpa_docs = render({**values, "autoscaling": {"mode": "hpa", "targetUtilization": utilization}})
    (metric,) = find(hpa_docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": expected}
    redis_docs = render({**values, **keda(targetUtilization=utilization, keda={"trigger": "redis"})})
    redis_triggers = find(redis_docs, "ScaledObject")["spec"]["triggers"]
    assert [trigger["metadata"]["listLength"] for trigger in redis_triggers] == [expected, expected]


def test_none_mode_has_fixed_replicas_and_no_autoscaler(render: Render) -> None:
    docs = render({"worker": {"replicaCount": 3}})
    assert find(docs, "Deployment", WORKER)["spec"]["replicas"] == 3
    assert not AUTOSCALER_KINDS & kinds(docs)


@pytest.mark.parametrize("scenario", ["keda-prometheus", "keda-redis", "keda-scale-to-zero", "hpa"])
def test_autoscaled_deployment_leaves_replicas_to_the_autoscaler(render: Render, scenario: str) -> None:
    docs = render(SCENARIOS[scenario])
    assert "replicas" not in find(docs, "Deployment", WORKER)["spec"]


def test_keda_prometheus_trigger_counts_queued_and_started_jobs(render: Render) -> None:
    docs = render(keda(minReplicas=2, maxReplicas=9, prometheus={"serverAddress": "http://prom.mon:9090"}))
    spec = find(docs, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vlq-worker-default"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 9)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"] == "http://prom.mon:9090"
    selector = f'namespace="vlq",service="vlq-gateway",model="{DEFAULT_MODEL}"'
    assert meta["query"] == f"max(vlq_queue_depth{{{selector}}}) + max(vlq_queue_started_jobs{{{selector}}})"
    assert meta["activationThreshold"] == "0"
    assert "TriggerAuthentication" not in kinds(docs)


def test_keda_prometheus_matchers_can_be_overridden(render: Render) -> None:
    docs = render(keda(prometheus={"labelMatchers": 'kubernetes_namespace="ml",app="vlq"'}))
    (trigger,) = find(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["query"] == (
        f'max(vlq_queue_depth{{kubernetes_namespace="ml",app="vlq",model="{DEFAULT_MODEL}"}}) + '
        f'max(vlq_queue_started_jobs{{kubernetes_namespace="ml",app="vlq",model="{DEFAULT_MODEL}"}})')


def test_keda_redis_trigger_reads_rqs_queue_lists(render: Render) -> None:
    docs = render(SCENARIOS["keda-redis"])
    triggers = find(docs, "ScaledObject")["spec"]["triggers"]
    # One trigger per priority queue of the pool's model: batch work alone wakes and scales the pool too.
    assert [t["metadata"]["listName"] for t in triggers] == [f"rq:queue:{QUEUE_NAME}:{DEFAULT_MODEL}",
                                                             f"rq:queue:{BATCH_QUEUE_NAME}:{DEFAULT_MODEL}"]
    trigger = triggers[0]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis"
    # KEDA's operator lives in another namespace: the address must be namespace-qualified.
    assert meta["address"] == "vlq-redis.vlq.svc:6379"
    assert (meta["databaseIndex"], meta["enableTLS"]) == ("0", "false")
    auth = find(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", "name": "vlq-redis", "key": "redis-password"}]


def test_keda_redis_trigger_on_external_redis(render: Render) -> None:
    docs = render({**EXTERNAL_REDIS, **keda(keda={"trigger": "redis"})})
    trigger, batch_trigger = find(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["address"] == batch_trigger["metadata"]["address"] == "redis.example.internal:6380"
    assert (trigger["metadata"]["databaseIndex"], trigger["metadata"]["enableTLS"]) == ("2", "true")
    assert find(docs, "TriggerAuthentication")["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "shared-redis", "key": "password"}]
    no_auth = render({"redis": {"enabled": False}, "externalRedis": {"host": "r"}, **keda(keda={"trigger": "redis"})})
    open_triggers = find(no_auth, "ScaledObject")["spec"]["triggers"]
    assert all("authenticationRef" not in t for t in open_triggers) and "TriggerAuthentication" not in kinds(no_auth)


def test_keda_scale_to_zero(render: Render) -> None:
    spec = find(render(keda(scaleToZero=True, minReplicas=2)), "ScaledObject")["spec"]
    assert spec["minReplicaCount"] == 0
    assert spec["cooldownPeriod"] == 300
    assert find(render(keda()), "ScaledObject")["spec"]["minReplicaCount"] == 1


def test_scale_down_is_stabilized_in_both_modes(render: Render) -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 600,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]}}
    expected = {**behavior["scaleDown"], "selectPolicy": "Max"}  # merged over values.yaml's scaleDown
    scaled = find(render(keda(behavior=behavior)), "ScaledObject")["spec"]
    assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == expected
    hpa = find(render({"autoscaling": {"mode": "hpa", "behavior": behavior}}), "HorizontalPodAutoscaler")
    assert hpa["spec"]["behavior"]["scaleDown"] == expected
    default = find(render(keda()), "ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    assert default["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_hpa_scales_on_the_external_queue_metric(render: Render) -> None:
    docs = render(SCENARIOS["hpa"])
    spec = find(docs, "HorizontalPodAutoscaler")["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vlq-worker-default"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    (metric,) = spec["metrics"]
    assert metric["type"] == "External"
    # One metric per pool (a model name is no valid label value), selected for this release's gateway.
    assert metric["external"]["metric"] == {"name": "vlq_queue_jobs_default",
                                            "selector": {"matchLabels": {"service": "vlq-gateway"}}}


def test_prometheus_adapter_rule_serves_the_hpa_metric(render: Render) -> None:
    docs = render({"autoscaling": {"mode": "hpa", "hpa": {"metricName": "vlq_jobs_held"}}})
    (metric,) = find(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    rules = yaml.safe_load(find(docs, "ConfigMap", "-prometheus-adapter-rules")["data"]["external-rules.yaml"])
    (rule,) = rules["externalRules"]
    assert rule["name"]["as"] == metric["external"]["metric"]["name"] == "vlq_jobs_held_default"
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    model = f'model="{DEFAULT_MODEL}"'
    assert f"vlq_queue_depth{{<<.LabelMatchers>>,{model}}}" in rule["metricsQuery"]
    assert f"vlq_queue_started_jobs{{<<.LabelMatchers>>,{model}}}" in rule["metricsQuery"]
    assert model in rule["seriesQuery"]
    # The HPA's selector label must exist on the series the rule discovers.
    for label in metric["external"]["metric"]["selector"]["matchLabels"]:
        assert f'{label}!=""' in rule["seriesQuery"]
    off = render({"autoscaling": {"mode": "hpa", "hpa": {"adapterRules": False}}})
    assert not [d for d in off if d["metadata"]["name"].endswith("-prometheus-adapter-rules")]
