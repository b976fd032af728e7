"""Value sets the chart is rendered with in the deploy tests: one per feature switch that changes objects.

The chart refuses to render with auth on and no API keys (as the gateway refuses to start), so value sets that
say nothing about ``auth`` are given one tenant's key hash (``with_keys``); those that do are taken as they are.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from gateway.auth import hash_key
from tests.deploy.helmtool import CHART

# A key the tests know in full; the chart only ever sees its hash.
TEST_KEY = "vlq_deploy-test-key"
TEST_AUTH: dict[str, Any] = {"auth": {"tenants": {"ci": [hash_key(TEST_KEY)]}}}


def with_keys(values: dict[str, Any] | None) -> dict[str, Any]:
    """``values`` plus TEST_AUTH, unless they configure auth themselves."""
    values = dict(values or {})
    return values if "auth" in values else {**TEST_AUTH, **values}

INGRESS: dict[str, Any] = {
    "gateway": {"ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
        "hosts": [{"host": "vlq.example.org", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "vlq-tls", "hosts": ["vlq.example.org"]}],
    }},
}

EXTERNAL_REDIS: dict[str, Any] = {
    "redis": {"enabled": False},
    "externalRedis": {"host": "redis.example.internal", "port": 6380, "db": 2, "tls": True,
                      "existingSecret": "shared-redis", "existingSecretPasswordKey": "password"},
}

MONITORING: dict[str, Any] = {
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {"enabled": True, "annotations": {"grafana_folder": "vlq"}},
    },
}

# helm/vlq/examples/two-pools.yaml: pool "ocr" (2B, scale to zero, a LoRA adapter) and pool "hard" (4B), KEDA.
TWO_POOLS_FILE = CHART / "examples" / "two-pools.yaml"
TWO_POOLS: dict[str, Any] = yaml.safe_load(TWO_POOLS_FILE.read_text())


def two_pools(**changes: Any) -> dict[str, Any]:
    """The two-pool example with top-level keys replaced (``autoscaling=...``) and, under ``ocr=`` / ``hard=``,
    keys of that pool replaced (``None`` deletes one)."""
    values = copy.deepcopy(TWO_POOLS)
    for key, value in changes.items():
        if key in {"ocr", "hard"}:
            (pool,) = [p for p in values["workerPools"] if p["name"] == key]
            for pool_key, pool_value in value.items():
                if pool_value is None:
                    pool.pop(pool_key, None)
                else:
                    pool[pool_key] = pool_value
        else:
            values[key] = value
    return values


_SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "auth-existing-secret": {"auth": {"existingSecret": "vlq-api-keys", "existingSecretKey": "tenants.json"}},
    "auth-off": {"auth": {"enabled": False}},
    "gateway-processes": {"gateway": {"workers": 4}},
    "ingress": INGRESS,
    "keda-prometheus": {"autoscaling": {"mode": "keda", "minReplicas": 1, "maxReplicas": 8}},
    "keda-redis": {"autoscaling": {"mode": "keda", "keda": {"trigger": "redis"}}},
    "keda-scale-to-zero": {"autoscaling": {"mode": "keda", "scaleToZero": True}},
    "hpa": {"autoscaling": {"mode": "hpa", "minReplicas": 2, "maxReplicas": 6}},
    "external-redis": {**EXTERNAL_REDIS, "autoscaling": {"mode": "keda", "keda": {"trigger": "redis"}}},
    "external-redis-no-auth": {"redis": {"enabled": False}, "externalRedis": {"host": "10.0.0.5"}},
    "external-redis-password": {"redis": {"enabled": False},
                                "externalRedis": {"host": "redis.example.internal", "password": "s3cret"}},
    "monitoring": MONITORING,
    "two-pools": TWO_POOLS,
    "two-pools-hpa": two_pools(autoscaling={"mode": "hpa"}, ocr={"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}),
    # ocr on KEDA's redis trigger (both of its model's lists), hard on the prometheus one.
    "two-pools-keda-redis": two_pools(ocr={"autoscaling": {"scaleToZero": True, "keda": {"trigger": "redis"}}}),
    "host-path-cache": {"worker": {"modelCache": {"type": "hostPath"}}},
    "ephemeral": {
        "worker": {"modelCache": {"type": "emptyDir"}, "hfToken": {"existingSecret": "hf"},
                   "extraEnv": [{"name": "HF_HUB_OFFLINE", "value": "1"}]},
        "redis": {"persistence": {"enabled": False}, "networkPolicy": {"enabled": False}},
        "gateway": {"pdb": {"enabled": False}},
    },
    "everything": {
        **INGRESS, **MONITORING,
        "fullnameOverride": "vlq-prod",
        "gateway": {
            **INGRESS["gateway"],
            "workers": 2,
            "config": {"rateLimitPerMinute": 120, "tenantMaxInflight": 32, "maxQueueDepth": 5000,
                       "sharedCache": True, "requireLiveWorker": False, "maxBodyBytes": 48 * 1024 * 1024,
                       "bodyReadTimeoutSeconds": 30, "bodyDeadlineSeconds": 300},
        },
        "commonLabels": {"team": "ml"},
        "imagePullSecrets": ["registry"],
        "model": {"name": "Qwen/Qwen3-VL-8B-Instruct"},
        "jobTimeoutSeconds": 1200,
        "autoscaling": {"mode": "hpa", "minReplicas": 2, "maxReplicas": 10, "targetUtilization": 0.75},
        "worker": {
            "maxInflight": 12,
            "runtimeClassName": "nvidia",
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}]}}},
            "modelCache": {"pvc": {"existingClaim": "models"}},
            "engine": {"dtype": "bfloat16", "maxModelLen": 16384, "gpuMemoryUtilization": 0.8},
        },
        "redis": {"auth": {"password": "fixed-password"}, "networkPolicy": {"extraFrom": [
            {"podSelector": {"matchLabels": {"app": "redis-exporter"}}}]}},
        "auth": {"tenants": {"ci": [hash_key(TEST_KEY)], "team-b": [hash_key("b-old"), hash_key("b-new")]}},
        "webhooks": {"replicaCount": 2, "secrets": {"ci": "whsec-ci-0123456789"}, "allowCidrs": ["10.20.0.0/16"],
                     "maxAttempts": 8, "retryMaxSeconds": 3600},
    },
}

SCENARIOS: dict[str, dict[str, Any]] = {name: with_keys(values) for name, values in _SCENARIOS.items()}
