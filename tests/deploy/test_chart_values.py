"""Values are checked before anything renders: bad values fail `helm lint` and `helm template` with a message
that names the value. The schema is closed everywhere, and values.yaml documents every key."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.auth import hash_key
from tests.deploy import helmtool
from tests.deploy.conftest import Notes
from tests.deploy.scenarios import SCENARIOS

SCHEMA = json.loads((helmtool.CHART / "values.schema.json").read_text())
VALUES_TEXT = (helmtool.CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)

HASH = hash_key("vlq_test")
BAD_VALUES = [
    pytest.param({"autoscaling": {"maxReplicas": 0}}, "autoscaling.maxReplicas: Must be greater than or equal to 1",
                 id="max-replicas-zero"),
    pytest.param({"autoscaling": {"minReplicas": 0}}, "autoscaling.minReplicas: Must be greater than or equal to 1",
                 id="min-replicas-zero-without-scale-to-zero"),
    pytest.param({"gateway": {"replicas": 3}}, "gateway: Additional property replicas is not allowed",
                 id="unknown-key"),
    pytest.param({"worker": {"engine": {"maxModelLength": 4096}}},
                 "worker.engine: Additional property maxModelLength is not allowed", id="unknown-nested-key"),
    pytest.param({"replicaCount": 2}, "Additional property replicaCount is not allowed", id="unknown-top-level-key"),
    pytest.param({"autoscaling": {"mode": "cpu"}}, "autoscaling.mode", id="unknown-autoscaling-mode"),
    pytest.param({"autoscaling": {"keda": {"trigger": "kafka"}}}, "autoscaling.keda.trigger", id="unknown-trigger"),
    pytest.param({"worker": {"engine": {"gpuMemoryUtilization": 1.5}}},
                 "worker.engine.gpuMemoryUtilization: Must be less than or equal to 1", id="gpu-utilization-above-1"),
    pytest.param({"jobTimeoutSeconds": "600"}, "jobTimeoutSeconds: Invalid type", id="timeout-as-string"),
    pytest.param({"worker": {"modelCache": {"type": "nfs"}}}, "worker.modelCache.type", id="unknown-cache-type"),
    pytest.param({"worker": {"resources": {"limits": {"memory": "lots"}}}}, "worker.resources.limits.memory",
                 id="bad-quantity"),
    pytest.param({"worker": {"maxInflight": 0}}, "worker.maxInflight: Must be greater than or equal to 1",
                 id="max-inflight-zero"),
    pytest.param({"monitoring": {"serviceMonitor": {"interval": "30 seconds"}}},
                 "monitoring.serviceMonitor.interval", id="bad-duration"),
    pytest.param({"gateway": {"ingress": {"enabled": True, "hosts": []}}}, "gateway.ingress.hosts",
                 id="ingress-without-hosts"),
    pytest.param({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
                 "autoscaling.minReplicas (5) must not exceed autoscaling.maxReplicas (2)", id="min-above-max"),
    pytest.param({"autoscaling": {"mode": "hpa", "scaleToZero": True}},
                 "autoscaling.scaleToZero needs autoscaling.mode=keda", id="hpa-scale-to-zero"),
    pytest.param({"redis": {"enabled": False}}, "redis.enabled=false needs externalRedis.host",
                 id="no-redis-at-all"),
    pytest.param({"worker": {"engine": {"limitMmImages": 2}}},
                 "worker.engine.limitMmImages (2) must be at least gateway.config.maxImages (4)",
                 id="engine-accepts-fewer-images-than-gateway"),
    pytest.param({"worker": {"engine": {"gpuMemoryUtilization": 0.95}},
                  "monitoring": {"prometheusRule": {"enabled": True}}},
                 "monitoring.prometheusRule.alerts.gpuMemory.ratio (0.9) must be above "
                 "worker.engine.gpuMemoryUtilization (0.95)", id="gpu-alert-always-firing"),
    pytest.param({"auth": {"tenants": {"acme": ["vlq_a-raw-key"]}}},
                 "auth.tenants.acme.0: Does not match pattern '^sha256:[0-9a-f]{64}$'", id="raw-api-key"),
    pytest.param({"auth": {"tenants": {"acme corp": [HASH]}}}, 'Property name of "acme corp" does not match',
                 id="bad-tenant-name"),
    pytest.param({"auth": {"tenants": {"acme": []}}}, "auth.tenants.acme: Array must have at least 1 items",
                 id="tenant-without-keys"),
    pytest.param({"auth": {"tenants": {"acme": [HASH]}, "existingSecret": "keys"}},
                 'set auth.tenants or auth.existingSecret ("keys"), not both', id="two-key-files"),
    pytest.param({"auth": {"enabled": "no"}}, "auth.enabled: Invalid type", id="auth-enabled-as-string"),
    pytest.param({"auth": {"apiKeys": ["k"]}}, "auth: Additional property apiKeys is not allowed",
                 id="unknown-auth-key"),
    pytest.param({"gateway": {"workers": 0}}, "gateway.workers: Must be greater than or equal to 1",
                 id="no-gateway-processes"),
    pytest.param({"gateway": {"config": {"requireLiveWorker": "sometimes"}}}, "gateway.config.requireLiveWorker",
                 id="require-live-worker-not-auto-or-bool"),
    pytest.param({"autoscaling": {"mode": "keda", "scaleToZero": True},
                  "gateway": {"config": {"requireLiveWorker": True}}},
                 "gateway.config.requireLiveWorker=true contradicts autoscaling.scaleToZero",
                 id="require-live-worker-with-scale-to-zero"),
    pytest.param({"gateway": {"config": {"maxBodyBytes": 20971520}}},
                 "gateway.config.maxBodyBytes (20971520) must be at least gateway.config.maxImages x maxImageBytes "
                 "(41943040)", id="body-limit-below-images"),
    # Worker pools: the schema checks each entry, the template what spans entries or defaults.
    pytest.param({"workerPools": [{"model": "Qwen/Qwen3-VL-2B-Instruct"}]}, "workerPools.0: name is required",
                 id="pool-without-name"),
    pytest.param({"workerPools": [{"name": "ocr"}]}, "workerPools.0: model is required",
                 id="pool-without-model"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "m", "replicas": 2}]},
                 "workerPools.0: Additional property replicas is not allowed", id="pool-unknown-key"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "m", "engine": {"maxModelLength": 4096}}]},
                 "workerPools.0.engine: Additional property maxModelLength is not allowed",
                 id="pool-unknown-engine-key"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "m", "autoscaling": {"mode": "hpa"}}]},
                 "workerPools.0.autoscaling: Additional property mode is not allowed",
                 id="pool-sets-release-wide-mode"),
    pytest.param({"workerPools": [{"name": "OCR_pool", "model": "m"}]}, "workerPools.0.name: Does not match pattern",
                 id="pool-name-not-dns"),
    pytest.param({"workerPools": [{"name": "a-very-long-pool-name", "model": "m"}]},
                 "workerPools.0.name: String length must be less than or equal to 15", id="pool-name-too-long"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "m", "servedModelName": "m:v2"}]},
                 "workerPools.0.servedModelName: Does not match pattern", id="served-name-with-colon"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "m", "lora": {"maxLoraRank": 24}}]},
                 "workerPools.0.lora.maxLoraRank", id="lora-rank-vllm-refuses"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "m", "lora": {"adapters": {"in voices": "a/b"}}}]},
                 'Property name of "in voices" does not match', id="bad-adapter-name"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "m", "modelCache": {"pvc": {"size": "1Ti"}}}]},
                 "workerPools.0.modelCache.pvc: Additional property size is not allowed", id="pool-sizes-shared-claim"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "a"}, {"name": "ocr", "model": "b"}]},
                 'workerPools: the name "ocr" is used twice', id="duplicate-pool-names"),
    pytest.param({"workerPools": [{"name": "a", "model": "Qwen/Qwen3-VL-2B-Instruct"},
                                  {"name": "b", "model": "/models/qwen",
                                   "servedModelName": "Qwen/Qwen3-VL-2B-Instruct"}]},
                 'workerPools: the served model name "Qwen/Qwen3-VL-2B-Instruct" is used by two pools',
                 id="duplicate-served-names"),
    pytest.param({"workerPools": [{"name": "a", "model": "Qwen/Qwen3-VL-2B-Instruct:latest"}]},
                 'workerPools[a]: the served model name "Qwen/Qwen3-VL-2B-Instruct:latest" may hold only',
                 id="served-name-defaulted-from-model-with-colon"),
    pytest.param({"gateway": {"defaultModel": "qwen3-vl-8b"}},
                 'gateway.defaultModel "qwen3-vl-8b" is served by no pool (served: Qwen/Qwen3-VL-2B-Instruct)',
                 id="default-model-not-served"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "m", "autoscaling": {"minReplicas": 5}}]},
                 "workerPools[ocr].autoscaling.minReplicas (5) must not exceed autoscaling.maxReplicas (4)",
                 id="pool-min-above-max"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "m", "autoscaling": {"scaleToZero": True}}]},
                 "workerPools[ocr].autoscaling.scaleToZero needs autoscaling.mode=keda",
                 id="pool-scale-to-zero-without-keda"),
    pytest.param({"workerPools": [{"name": "ok", "model": "a"}, {"name": "ocr", "model": "b",
                                                                   "engine": {"limitMmImages": 1}}]},
                 "workerPools[ocr].engine.limitMmImages (1) must be at least gateway.config.maxImages (4)",
                 id="pool-engine-accepts-fewer-images"),
    pytest.param({"workerPools": [{"name": "ocr", "model": "m", "engine": {"gpuMemoryUtilization": 0.92}}],
                  "monitoring": {"prometheusRule": {"enabled": True}}},
                 "monitoring.prometheusRule.alerts.gpuMemory.ratio (0.9) must be above "
                 "workerPools[ocr].engine.gpuMemoryUtilization (0.92)", id="pool-gpu-alert-always-firing"),
    pytest.param({"autoscaling": {"mode": "keda"},
                  "workerPools": [{"name": "ocr", "model": "m", "autoscaling": {"scaleToZero": True}}],
                  "gateway": {"config": {"requireLiveWorker": True}}},
                 "gateway.config.requireLiveWorker=true contradicts autoscaling.scaleToZero",
                 id="require-live-worker-with-a-pool-scaling-to-zero"),
    pytest.param({"gateway": {"ingress": {"enabled": True, "maxBodySize": "40m"}}},
                 "gateway.ingress.maxBodySize (40m = 41943040 bytes) must be at least gateway.config.maxBodyBytes "
                 "(52428800)", id="ingress-body-below-gateway-body"),
]


def _values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_bad_values_fail_template_with_a_clear_message(helm: Path, tmp_path: Path, values: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(helmtool.HelmToolError) as caught:
        helmtool.run_helm(helm, ["template", "vlq", str(helmtool.CHART), "--values", _values_file(tmp_path, values)])
    assert message in str(caught.value)


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_bad_values_fail_lint(helm: Path, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helmtool.HelmToolError) as caught:
        helmtool.run_helm(helm, ["lint", "--strict", str(helmtool.CHART), "--values", _values_file(tmp_path, values)])
    assert message in str(caught.value)


def _objects(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if node.get("type") == "object":
        yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _objects(child, f"{path}.{key}" if path else key)
    for keyword in ("items", "additionalProperties"):
        child = node.get(keyword)
        if isinstance(child, dict):
            yield from _objects(child, f"{path}[]")
    for keyword in ("anyOf", "oneOf", "allOf"):
        for child in node.get(keyword, []):
            yield from _objects(child, path)


def test_schema_is_closed_everywhere_but_kubernetes_pass_throughs() -> None:
    objects = list(_objects(SCHEMA, ""))
    assert len(objects) > 50
    for path, node in objects:
        assert "additionalProperties" in node, f"{path or '<root>'} does not say whether it is closed"
        if node["additionalProperties"] is True:
            # Open only where the value is a Kubernetes type handed through (checked when rendered).
            assert "properties" not in node and "A Kubernetes" in node.get("$comment", ""), path
        elif "properties" in node:
            assert node["additionalProperties"] is False, path


def _schema_paths(node: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, child in node.get("properties", {}).items():
        yield (*path, key)
        yield from _schema_paths(child, (*path, key))


def test_values_yaml_sets_every_schema_key() -> None:
    for path in _schema_paths(SCHEMA):
        node: Any = VALUES
        for key in path:
            assert isinstance(node, dict) and key in node, f"values.yaml lacks {'.'.join(path)}"
            node = node[key]


def _leaf_keys_without_doc(text: str) -> list[str]:
    """Keys of values.yaml not covered by a `# --` comment: each key needs one, unless an ancestor mapping
    has one (then the whole block is documented there, as helm-docs reads it)."""
    lines = text.splitlines()
    missing: list[str] = []
    skip_below: int | None = None
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_.]+):(.*)$", line)
        if not match:
            continue
        indent = len(match.group(1))
        if skip_below is not None and indent > skip_below:
            continue
        skip_below = None
        is_parent = not match.group(3).strip()
        if _documented(lines, number):
            if is_parent:
                skip_below = indent
        elif not is_parent:
            missing.append(match.group(2))
        elif _first_child(lines, number).lstrip().startswith("- "):
            missing.append(match.group(2))  # an undocumented list
    return missing


def _first_child(lines: list[str], number: int) -> str:
    return next((ln for ln in lines[number + 1:] if ln.strip() and not ln.strip().startswith("#")), "")


def _documented(lines: list[str], number: int) -> bool:
    above = number - 1
    while above >= 0 and lines[above].strip().startswith("#"):
        if lines[above].strip().startswith("# --"):
            return True
        above -= 1
    return False


def test_every_value_is_documented_with_a_helm_docs_comment() -> None:
    assert _leaf_keys_without_doc(VALUES_TEXT) == []
    # The checker itself catches an undocumented key.
    assert _leaf_keys_without_doc("a:\n  # -- doc\n  b: 1\n  c: 2\n") == ["c"]
    assert _leaf_keys_without_doc("# -- doc\na:\n  b: 1\nc:\n  - 1\n") == ["c"]


def test_values_yaml_documents_the_autoscaling_formula() -> None:
    assert "targetJobsPerWorker = ceil(worker.maxInflight x targetUtilization)" in VALUES_TEXT
    assert "desiredWorkers = ceil((queued + started) / targetJobsPerWorker)" in VALUES_TEXT


def test_chart_metadata() -> None:
    chart = yaml.safe_load((helmtool.CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "vlq"
    assert chart["kubeVersion"].startswith(">=")
    templates = sorted(p.name for p in (helmtool.CHART / "templates").glob("*.yaml"))
    for name in templates:
        assert re.fullmatch(r"(gateway|worker|webhooks|redis|monitoring|dashboard|adapter)-[a-z]+\.yaml", name), name
    helpers = (helmtool.CHART / "templates" / "_helpers.tpl").read_text()
    for define in ("vlq.name", "vlq.fullname", "vlq.labels", "vlq.selectorLabels"):
        assert f'define "{define}"' in helpers
    assert (helmtool.CHART / "templates" / "NOTES.txt").is_file()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_notes_render_in_every_scenario(notes: Notes, scenario: str) -> None:
    text = notes(SCENARIOS[scenario])
    assert "<no value>" not in text
    assert "helm test vlq -n vlq" in text
    mode = SCENARIOS[scenario].get("autoscaling", {}).get("mode", "none")
    assert f"Autoscaling: {mode}" in text
