"""Worker pools: one model each, with its own Deployment, ConfigMap, Service, PDB, autoscaler and alerts.

The two-pool example (helm/vlq/examples/two-pools.yaml) is rendered as it ships and with changes: pool "ocr"
serves Qwen3-VL-2B as "qwen3-vl-2b" on L4s, scales to zero and has the LoRA adapter "invoices"; pool "hard"
serves Qwen3-VL-4B as "qwen3-vl-4b" on H100s and is the gateway's default model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import GatewaySettings
from tests.deploy import helmtool
from tests.deploy.conftest import Notes, Render
from tests.deploy.objects import (
    container,
    container_env,
    env_list,
    find,
    find_all,
    kinds,
    matches,
    pod_spec,
    settings_from_env,
)
from tests.deploy.scenarios import SCENARIOS, TWO_POOLS, TWO_POOLS_FILE, two_pools
from tests.deploy.test_chart_monitoring import assert_promql_sane
from worker.config import WorkerSettings
from worker.constants import BATCH_QUEUE_NAME, QUEUE_NAME

POOLS = {"ocr": "qwen3-vl-2b", "hard": "qwen3-vl-4b"}
WEIGHTS = {"ocr": "Qwen/Qwen3-VL-2B-Instruct", "hard": "Qwen/Qwen3-VL-4B-Instruct"}
POOL_KINDS = ("Deployment", "ConfigMap", "Service", "PodDisruptionBudget")
Docs = list[dict[str, Any]]


def named(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)}"
    return found[0]


def pool_labels(docs: Docs, pool: str) -> dict[str, str]:
    labels: dict[str, str] = named(docs, "Deployment", f"vlq-worker-{pool}")["spec"]["template"]["metadata"]["labels"]
    return labels


def worker_env(docs: Docs, pool: str) -> dict[str, str]:
    return container_env(docs, named(docs, "Deployment", f"vlq-worker-{pool}"), "worker")


# ---- objects ----------------------------------------------------------------------------------------------


def test_two_pool_example_lints_strictly(helm: Path) -> None:
    out = helmtool.run_helm(helm, ["lint", "--strict", str(helmtool.CHART), "--values", str(TWO_POOLS_FILE)])
    assert "0 chart(s) failed" in out
    rendered = helmtool.run_helm(helm, ["template", "vlq", str(helmtool.CHART), "--namespace", "vlq",
                                        "--values", str(TWO_POOLS_FILE)])
    assert {d["metadata"]["name"] for d in helmtool.documents(rendered) if d["kind"] == "Deployment"} == {
        "vlq-gateway", "vlq-webhooks", "vlq-worker-ocr", "vlq-worker-hard"}


def test_each_pool_has_its_own_objects_selecting_only_its_pods(render: Render) -> None:
    docs = render(TWO_POOLS)
    for kind in (*POOL_KINDS, "ScaledObject", "ServiceMonitor"):
        names = sorted(d["metadata"]["name"] for d in find_all(docs, kind) if "-worker" in d["metadata"]["name"])
        assert names == ["vlq-worker-hard", "vlq-worker-ocr"], kind
    assert not [d for d in docs if d["metadata"]["name"] == "vlq-worker-default"]
    for pool in POOLS:
        other = next(p for p in POOLS if p != pool)
        mine, theirs = pool_labels(docs, pool), pool_labels(docs, other)
        assert mine["vlq/worker-pool"] == pool and mine["app.kubernetes.io/component"] == "worker"
        for selector in (named(docs, "PodDisruptionBudget", f"vlq-worker-{pool}")["spec"]["selector"]["matchLabels"],
                         named(docs, "Service", f"vlq-worker-{pool}")["spec"]["selector"],
                         named(docs, "Deployment", f"vlq-worker-{pool}")["spec"]["selector"]["matchLabels"]):
            assert matches(selector, mine) and not matches(selector, theirs)
        monitor = named(docs, "ServiceMonitor", f"vlq-worker-{pool}")
        services = [s for s in find_all(docs, "Service")
                    if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert [s["metadata"]["name"] for s in services] == [f"vlq-worker-{pool}"]
        deployment = named(docs, "Deployment", f"vlq-worker-{pool}")
        assert container(deployment, "worker")["envFrom"] == [{"configMapRef": {"name": f"vlq-worker-{pool}"}}]
    # Workers of every pool reach Redis through the one NetworkPolicy rule for worker pods.
    (rule,) = find(docs, "NetworkPolicy", "-redis")["spec"]["ingress"]
    for pool in POOLS:
        assert sum(matches(p.get("podSelector", {}).get("matchLabels", {}), pool_labels(docs, pool))
                   for p in rule["from"] if "namespaceSelector" not in p) == 1


def test_pools_land_on_their_own_gpus_and_inherit_the_rest(render: Render) -> None:
    docs = render(TWO_POOLS)
    pools = {p["name"]: p for p in TWO_POOLS["workerPools"]}
    for pool in POOLS:
        deployment = named(docs, "Deployment", f"vlq-worker-{pool}")
        spec = pod_spec(deployment)
        worker = container(deployment, "worker")
        assert spec["nodeSelector"] == pools[pool]["nodeSelector"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert worker["resources"]["limits"]["memory"] == pools[pool]["resources"]["limits"]["memory"]
        # From worker: the example's image repository, values.yaml's tolerations and probes.
        assert worker["image"] == "registry.example.com/vlq/worker:0.1.0"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert worker["startupProbe"]["failureThreshold"] == 150
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "vlq-worker-models"}
    # One shared model cache claim.
    assert [p["metadata"]["name"] for p in find_all(docs, "PersistentVolumeClaim")] == ["vlq-worker-models"]


def test_a_pool_can_switch_off_what_worker_switches_on(render: Render) -> None:
    """Pool values replace worker's, empty and false ones included (a plain sprig merge would keep worker's)."""
    docs = render(two_pools(
        worker={**TWO_POOLS["worker"], "engine": {"enforceEager": True}, "nodeSelector": {"pool": "gpu"},
                "pdb": {"enabled": True, "maxUnavailable": 1}},
        ocr={"tolerations": [], "nodeSelector": {}, "engine": {"enforceEager": False}, "pdb": {"enabled": False},
             "gpu": {"resourceName": "nvidia.com/mig-3g.40gb", "count": 2}},
    ))
    ocr = pod_spec(named(docs, "Deployment", "vlq-worker-ocr"))
    assert "tolerations" not in ocr and "nodeSelector" not in ocr
    assert container(named(docs, "Deployment", "vlq-worker-ocr"), "worker")["resources"]["limits"][
        "nvidia.com/mig-3g.40gb"] == 2
    assert worker_env(docs, "ocr")["VLQ_WORKER_ENFORCE_EAGER"] == "false"
    assert worker_env(docs, "hard")["VLQ_WORKER_ENFORCE_EAGER"] == "true"
    # Only hard keeps its PDB; a non-empty map merges key by key, so hard's nodeSelector adds to worker's.
    assert [p["metadata"]["name"] for p in find_all(docs, "PodDisruptionBudget")
            if "-worker" in p["metadata"]["name"]] == ["vlq-worker-hard"]
    assert pod_spec(named(docs, "Deployment", "vlq-worker-hard"))["nodeSelector"] == {
        "pool": "gpu", "cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}


def test_model_cache_per_pool(render: Render) -> None:
    docs = render(two_pools(ocr={"modelCache": {"type": "emptyDir"}},
                            hard={"modelCache": {"pvc": {"existingClaim": "w"}}}))
    assert pod_spec(named(docs, "Deployment", "vlq-worker-ocr"))["volumes"][0]["emptyDir"] == {"sizeLimit": "50Gi"}
    assert pod_spec(named(docs, "Deployment", "vlq-worker-hard"))["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "w"}
    # No pool uses the chart's claim: none is made.
    assert "PersistentVolumeClaim" not in kinds(docs)


# ---- environment ------------------------------------------------------------------------------------------


def test_each_pool_is_told_its_model_served_name_adapters_and_engine(render: Render) -> None:
    docs = render(TWO_POOLS)
    ocr, hard = worker_env(docs, "ocr"), worker_env(docs, "hard")
    for pool, env in (("ocr", ocr), ("hard", hard)):
        assert env["VLQ_WORKER_MODEL"] == WEIGHTS[pool]
        assert env["VLQ_WORKER_SERVED_MODEL_NAME"] == POOLS[pool]
        assert env["VLQ_WORKER_DRAIN_TIMEOUT_S"] == "600"
    assert json.loads(ocr["VLQ_WORKER_LORA_ADAPTERS"]) == {"invoices": "acme/qwen3-vl-2b-invoices-lora"}
    assert (ocr["VLQ_WORKER_MAX_LORAS"], ocr["VLQ_WORKER_MAX_LORA_RANK"]) == ("2", "16")
    assert json.loads(hard["VLQ_WORKER_LORA_ADAPTERS"]) == {}  # LoRA off
    assert (ocr["VLQ_WORKER_MAX_INFLIGHT"], hard["VLQ_WORKER_MAX_INFLIGHT"]) == ("32", "16")
    assert (ocr["VLQ_WORKER_MAX_NUM_SEQS"], hard["VLQ_WORKER_MAX_NUM_SEQS"]) == ("32", "16")
    assert (ocr["VLQ_WORKER_MAX_MODEL_LEN"], hard["VLQ_WORKER_MAX_MODEL_LEN"]) == ("8192", "32768")
    assert (ocr["VLQ_WORKER_DTYPE"], hard["VLQ_WORKER_DTYPE"]) == ("auto", "bfloat16")
    # Inherited from worker.engine.
    assert ocr["VLQ_WORKER_LIMIT_MM_IMAGES"] == hard["VLQ_WORKER_LIMIT_MM_IMAGES"] == "4"
    for pool in POOLS:
        names = {e["name"] for e in env_list(named(docs, "Deployment", f"vlq-worker-{pool}"), "worker")}
        assert {"VLQ_WORKER_NAME", "VLQ_WORKER_REDIS_URL", "REDIS_PASSWORD"} <= names


def test_the_default_pool_serves_model_name_with_lora_off(render: Render) -> None:
    env = worker_env(render({"model": {"name": "Qwen/Qwen3-VL-8B-Instruct"}}), "default")
    assert env["VLQ_WORKER_MODEL"] == env["VLQ_WORKER_SERVED_MODEL_NAME"] == "Qwen/Qwen3-VL-8B-Instruct"
    assert env["VLQ_WORKER_LORA_ADAPTERS"] == "{}"
    adapters = worker_env(render({"worker": {"lora": {"adapters": {"a": "/models/a"}}}}), "default")
    assert json.loads(adapters["VLQ_WORKER_LORA_ADAPTERS"]) == {"a": "/models/a"}


@pytest.mark.parametrize("scenario", ["two-pools", "defaults", "everything"])
def test_every_pools_environment_is_read_by_worker_settings(render: Render, scenario: str) -> None:
    docs = render(SCENARIOS[scenario])
    for deployment in find_all(docs, "Deployment"):
        if not deployment["metadata"]["name"].startswith(("vlq-worker-", "vlq-prod-worker-")):
            continue
        env = {k: v for k, v in container_env(docs, deployment, "worker").items() if k.startswith("VLQ_WORKER_")}
        unknown = {k for k in env if k[len("VLQ_WORKER_"):].lower() not in WorkerSettings.model_fields}
        assert not unknown, unknown
        settings = settings_from_env(WorkerSettings, env)
        assert settings.served_model_name == env["VLQ_WORKER_SERVED_MODEL_NAME"]
        assert settings.lora_adapters == json.loads(env["VLQ_WORKER_LORA_ADAPTERS"])
        assert settings.max_lora_rank == int(env["VLQ_WORKER_MAX_LORA_RANK"])


def test_gateway_knows_every_model_its_adapters_and_the_default(render: Render) -> None:
    env = find(render(TWO_POOLS), "ConfigMap", "-gateway")["data"]
    assert env["VLQ_GATEWAY_MODEL"] == "qwen3-vl-4b"  # gateway.defaultModel
    assert json.loads(env["VLQ_GATEWAY_MODELS"]) == ["qwen3-vl-2b", "qwen3-vl-4b"]
    assert json.loads(env["VLQ_GATEWAY_ADAPTERS"]) == {"qwen3-vl-2b": ["invoices"]}
    settings = settings_from_env(GatewaySettings, env)
    assert settings.model == "qwen3-vl-4b" and set(settings.models) == {"qwen3-vl-2b", "qwen3-vl-4b"}
    assert settings.adapters == {"qwen3-vl-2b": ["invoices"]}
    # With ocr scaling to zero no worker may be up when a job arrives: the gateway must accept it.
    assert settings.require_live_worker is False
    first = find(render(two_pools(gateway={})), "ConfigMap", "-gateway")["data"]
    assert first["VLQ_GATEWAY_MODEL"] == "qwen3-vl-2b"  # no defaultModel: the first pool's
    single = find(render({}), "ConfigMap", "-gateway")["data"]
    assert single["VLQ_GATEWAY_MODEL"] == "Qwen/Qwen3-VL-2B-Instruct"
    assert json.loads(single["VLQ_GATEWAY_MODELS"]) == ["Qwen/Qwen3-VL-2B-Instruct"]
    assert json.loads(single["VLQ_GATEWAY_ADAPTERS"]) == {}


def test_a_pools_change_rolls_only_that_pool(render: Render) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for d in render(values) if d["kind"] == "Deployment"}

    base = checksums(TWO_POOLS)
    changed = checksums(two_pools(ocr={"engine": {"maxModelLen": 4096, "maxNumSeqs": 32}}))
    assert changed["vlq-worker-ocr"] != base["vlq-worker-ocr"]
    assert changed["vlq-worker-hard"] == base["vlq-worker-hard"]
    assert changed["vlq-gateway"] == base["vlq-gateway"]
    adapter = checksums(two_pools(ocr={"lora": {"adapters": {"receipts": "acme/receipts"}}}))
    # A new adapter is news to the ocr workers and to the gateway (it routes "qwen3-vl-2b:receipts").
    assert adapter["vlq-worker-ocr"] != base["vlq-worker-ocr"] and adapter["vlq-gateway"] != base["vlq-gateway"]
    assert adapter["vlq-worker-hard"] == base["vlq-worker-hard"]


# ---- autoscaling ------------------------------------------------------------------------------------------


def test_keda_prometheus_scales_each_pool_on_its_models_jobs(render: Render) -> None:
    docs = render(TWO_POOLS)
    expected = {"ocr": (0, 4, "32", 600), "hard": (1, 8, "12", 300)}  # hard: ceil(16 x 0.75)
    for pool, (low, high, threshold, cooldown) in expected.items():
        spec = named(docs, "ScaledObject", f"vlq-worker-{pool}")["spec"]
        assert spec["scaleTargetRef"]["name"] == f"vlq-worker-{pool}"
        assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (low, high, cooldown)
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == threshold
        selector = f'namespace="vlq",service="vlq-gateway",model="{POOLS[pool]}"'
        assert trigger["metadata"]["query"] == (
            f"max(vlq_queue_depth{{{selector}}}) + max(vlq_queue_started_jobs{{{selector}}})")
        assert_promql_sane(trigger["metadata"]["query"])


def test_keda_redis_watches_both_lists_of_each_pools_model(render: Render) -> None:
    docs = render(two_pools(ocr={"autoscaling": {"scaleToZero": True, "keda": {"trigger": "redis"}}},
                            hard={"autoscaling": {"keda": {"trigger": "redis"}}}))
    (auth,) = find_all(docs, "TriggerAuthentication")
    for pool, model in POOLS.items():
        triggers = named(docs, "ScaledObject", f"vlq-worker-{pool}")["spec"]["triggers"]
        assert [t["metadata"]["listName"] for t in triggers] == [f"rq:queue:{QUEUE_NAME}:{model}",
                                                                 f"rq:queue:{BATCH_QUEUE_NAME}:{model}"]
        for trigger in triggers:
            assert trigger["type"] == "redis"
            assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
            assert trigger["metadata"]["address"] == "vlq-redis.vlq.svc:6379"


def test_keda_trigger_can_differ_per_pool(render: Render) -> None:
    docs = render(SCENARIOS["two-pools-keda-redis"])
    ocr = named(docs, "ScaledObject", "vlq-worker-ocr")["spec"]["triggers"]
    (hard,) = named(docs, "ScaledObject", "vlq-worker-hard")["spec"]["triggers"]
    assert [t["type"] for t in ocr] == ["redis", "redis"] and hard["type"] == "prometheus"
    assert "TriggerAuthentication" in kinds(docs)
    # One pool on the redis trigger is enough for KEDA's operator to be let through to Redis.
    (rule,) = find(docs, "NetworkPolicy", "-redis")["spec"]["ingress"]
    assert [p for p in rule["from"] if "namespaceSelector" in p]
    (plain,) = find(render(TWO_POOLS), "NetworkPolicy", "-redis")["spec"]["ingress"]
    assert not [p for p in plain["from"] if "namespaceSelector" in p]
    assert "TriggerAuthentication" not in kinds(render(TWO_POOLS))


def test_hpa_per_pool_on_its_own_external_metric_and_adapter_rule(render: Render) -> None:
    docs = render(SCENARIOS["two-pools-hpa"])
    assert "ScaledObject" not in kinds(docs)
    rules = yaml.safe_load(find(docs, "ConfigMap", "-prometheus-adapter-rules")["data"]["external-rules.yaml"])
    by_name = {r["name"]["as"]: r for r in rules["externalRules"]}
    expected = {"ocr": (1, 3, "32"), "hard": (1, 8, "12")}
    for pool, (low, high, target) in expected.items():
        hpa = named(docs, "HorizontalPodAutoscaler", f"vlq-worker-{pool}")["spec"]
        assert hpa["scaleTargetRef"]["name"] == f"vlq-worker-{pool}"
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (low, high)
        (metric,) = hpa["metrics"]
        name = metric["external"]["metric"]["name"]
        assert name == f"vlq_queue_jobs_{pool}"
        assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": target}
        # Label values may not hold "/", so the model is in the rule's query, not in the HPA's selector.
        for value in metric["external"]["metric"]["selector"]["matchLabels"].values():
            assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", value)
        rule = by_name[name]
        assert f'model="{POOLS[pool]}"' in rule["seriesQuery"]
        assert rule["metricsQuery"] == (f'max(vlq_queue_depth{{<<.LabelMatchers>>,model="{POOLS[pool]}"}}) + '
                                        f'max(vlq_queue_started_jobs{{<<.LabelMatchers>>,model="{POOLS[pool]}"}})')
    assert set(by_name) == {"vlq_queue_jobs_ocr", "vlq_queue_jobs_hard"}


def test_fixed_replicas_per_pool_without_an_autoscaler(render: Render) -> None:
    docs = render(two_pools(autoscaling={"mode": "none"}, worker={"replicaCount": 2},
                            ocr={"autoscaling": None, "replicaCount": 1}))
    assert named(docs, "Deployment", "vlq-worker-ocr")["spec"]["replicas"] == 1
    assert named(docs, "Deployment", "vlq-worker-hard")["spec"]["replicas"] == 2
    assert not {"ScaledObject", "HorizontalPodAutoscaler"} & kinds(docs)


# ---- alerts -----------------------------------------------------------------------------------------------


def test_each_pool_has_its_own_alerts_on_its_model_and_workers(render: Render) -> None:
    groups = find(render(TWO_POOLS), "PrometheusRule")["spec"]["groups"]
    assert [g["name"] for g in groups] == ["vlq.rules", "vlq.worker-ocr.rules", "vlq.worker-hard.rules"]
    assert {r["alert"] for r in groups[0]["rules"]} == {"VlqHighLatencyP95", "VlqHigh5xxRate"}
    for group, pool in zip(groups[1:], ("ocr", "hard"), strict=True):
        rules = {r["alert"]: r for r in group["rules"]}
        assert set(rules) == {"VlqGpuMemoryHigh", "VlqQueueBackingUp", "VlqNoWorkers"}
        model = f'model="{POOLS[pool]}"'
        service = f'service="vlq-worker-{pool}"'
        assert service in rules["VlqGpuMemoryHigh"]["expr"]
        assert model in rules["VlqQueueBackingUp"]["expr"] and "vlq_queue_oldest_age_seconds" in rules[
            "VlqQueueBackingUp"]["expr"]
        assert model in rules["VlqNoWorkers"]["expr"] and service in rules["VlqNoWorkers"]["expr"]
        for rule in rules.values():
            assert_promql_sane(rule["expr"])
            assert rule["labels"]["pool"] == pool and rule["labels"]["model"] == POOLS[pool]
            assert "{{ $value" in rule["annotations"]["description"]
        # The example waits longer for ocr's workers: a scale-from-zero includes a GPU node coming up.
        assert rules["VlqNoWorkers"]["for"] == ("30m" if pool == "ocr" else "20m")


def test_a_pool_can_switch_its_alerts_off_or_retune_them(render: Render) -> None:
    docs = render(two_pools(ocr={"alerts": {"gpuMemory": {"enabled": False},
                                            "queueBacklog": {"oldestAgeSeconds": 900}}}))
    groups = {g["name"]: {r["alert"]: r for r in g["rules"]} for g in find(docs, "PrometheusRule")["spec"]["groups"]}
    ocr, hard = groups["vlq.worker-ocr.rules"], groups["vlq.worker-hard.rules"]
    assert "VlqGpuMemoryHigh" not in ocr and "VlqGpuMemoryHigh" in hard
    assert re.search(r">\s*900\s*$", ocr["VlqQueueBackingUp"]["expr"])
    assert re.search(r">\s*300\s*$", hard["VlqQueueBackingUp"]["expr"])


# ---- names and notes --------------------------------------------------------------------------------------


def test_longest_pool_names_keep_object_names_valid(render: Render) -> None:
    values = {"workerPools": [{"name": "a" * 15, "model": "m1"}, {"name": "b" * 15, "model": "m2"}],
              "autoscaling": {"mode": "keda", "keda": {"trigger": "redis"}},
              "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
    docs = render(values, release="a-release-name-of-fifty-three-characters-that-is-long")
    for obj in docs:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    assert len({(d["kind"], d["metadata"]["name"]) for d in docs}) == len(docs)


def test_notes_list_every_pool(notes: Notes) -> None:
    text = notes(SCENARIOS["two-pools"])
    assert 'Requests that name none get\n"qwen3-vl-4b"' in text
    assert '"qwen3-vl-2b": pool ocr, Deployment vlq-worker-ocr' in text and "adapters: invoices" in text
    assert '"qwen3-vl-4b": pool hard, Deployment vlq-worker-hard' in text
    assert "ocr: 0..4 workers" in text and "hard: 1..8 workers" in text
    assert "<no value>" not in text
