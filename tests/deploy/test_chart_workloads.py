"""What the gateway, worker and Redis objects promise: probes, drain, GPU, settings, Redis wiring.

Environment variables are checked against the services' own settings classes, so a renamed setting breaks
this test rather than a deployment.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from gateway.config import GatewaySettings
from tests.deploy.conftest import Render
from tests.deploy.objects import (
    WORKER,
    component,
    container,
    env_list,
    env_values,
    find,
    find_all,
    kinds,
    matches,
    pod_spec,
    settings_from_env,
)
from tests.deploy.scenarios import EXTERNAL_REDIS, INGRESS, SCENARIOS
from worker.config import WorkerSettings


def configmap_env(docs: list[dict[str, Any]], suffix: str) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", suffix)["data"])


def all_env_names(docs: list[dict[str, Any]], workload_suffix: str, name: str) -> set[str]:
    workload = find(docs, "Deployment", workload_suffix)
    names = {e["name"] for e in env_list(workload, name)}
    for source in container(workload, name).get("envFrom", []):
        names |= set(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    return names


# ---- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workload", "prefix", "settings"),
    [("-gateway", "VLQ_GATEWAY_", GatewaySettings), (WORKER, "VLQ_WORKER_", WorkerSettings)],
)
def test_every_vlq_variable_is_a_setting_of_its_service(
    render: Render, workload: str, prefix: str, settings: type[BaseSettings]
) -> None:
    names = all_env_names(render(SCENARIOS["everything"]), workload, component(workload))
    ours = {n for n in names if n.startswith("VLQ_")}
    assert ours, names
    unknown = {n for n in ours if not n.startswith(prefix) or n[len(prefix):].lower() not in settings.model_fields}
    assert not unknown, f"not settings of {settings.__name__}: {sorted(unknown)}"


def test_gateway_and_workers_name_the_same_model(render: Render) -> None:
    docs = render({"model": {"name": "Qwen/Qwen3-VL-8B-Instruct"}})
    assert configmap_env(docs, "-gateway")["VLQ_GATEWAY_MODEL"] == "Qwen/Qwen3-VL-8B-Instruct"
    assert configmap_env(docs, WORKER)["VLQ_WORKER_MODEL"] == "Qwen/Qwen3-VL-8B-Instruct"
    assert configmap_env(render({}), WORKER)["VLQ_WORKER_MODEL"] == "Qwen/Qwen3-VL-2B-Instruct"


def test_vllm_settings_come_from_values(render: Render) -> None:
    engine = {"dtype": "bfloat16", "maxModelLen": 32768, "enableChunkedPrefill": False,
              "maxNumBatchedTokens": 4096, "maxNumSeqs": 64, "gpuMemoryUtilization": 0.75}
    env = configmap_env(render({"worker": {"engine": engine, "maxInflight": 48}}), WORKER)
    assert env["VLQ_WORKER_DTYPE"] == "bfloat16"
    assert env["VLQ_WORKER_MAX_MODEL_LEN"] == "32768"
    assert env["VLQ_WORKER_ENABLE_CHUNKED_PREFILL"] == "false"
    assert env["VLQ_WORKER_MAX_NUM_BATCHED_TOKENS"] == "4096"
    assert env["VLQ_WORKER_MAX_NUM_SEQS"] == "64"
    assert env["VLQ_WORKER_GPU_MEMORY_UTILIZATION"] == "0.75"
    assert env["VLQ_WORKER_MAX_INFLIGHT"] == "48"
    parsed = settings_from_env(WorkerSettings, {k: v for k, v in env.items() if k.startswith("VLQ_WORKER_")})
    assert parsed.max_model_len == 32768 and parsed.enable_chunked_prefill is False


def test_large_numbers_render_as_plain_integers(render: Render) -> None:
    config = {"maxImageBytes": 52428800, "l2MaxBytes": 4294967296, "maxBodyBytes": 268435456}
    env = configmap_env(render({"gateway": {"config": config}}), "-gateway")
    assert env["VLQ_GATEWAY_MAX_IMAGE_BYTES"] == "52428800"
    assert env["VLQ_GATEWAY_L2_MAX_BYTES"] == "4294967296"
    assert env["VLQ_GATEWAY_MAX_BODY_BYTES"] == "268435456"
    settings_from_env(GatewaySettings, env)


# ---- gateway ----------------------------------------------------------------------------------------------


def test_gateway_probes_readiness_and_liveness(render: Render) -> None:
    gateway = container(find(render({}), "Deployment", "-gateway"), "gateway")
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert gateway["resources"]["requests"] and gateway["resources"]["limits"]


def test_gateway_l2_cache_is_on_an_emptydir(render: Render) -> None:
    docs = render({})
    deployment = find(docs, "Deployment", "-gateway")
    l2_path = configmap_env(docs, "-gateway")["VLQ_GATEWAY_L2_PATH"]
    mounts = {m["mountPath"]: m["name"] for m in container(deployment, "gateway")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    (mount,) = [name for path, name in mounts.items() if l2_path.startswith(path + "/")]
    assert "emptyDir" in volumes[mount]
    # Read-only root: every path the gateway writes is a volume.
    assert container(deployment, "gateway")["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in mounts


def test_gateway_grace_outlasts_long_polls(render: Render) -> None:
    deployment = find(render({}), "Deployment", "-gateway")
    env = configmap_env(render({}), "-gateway")
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > float(env["VLQ_GATEWAY_MAX_WAIT_S"])


def test_gateway_pdb_selects_gateway_pods(render: Render) -> None:
    docs = render({})
    pdb = find(docs, "PodDisruptionBudget", "-gateway")
    labels = find(docs, "Deployment", "-gateway")["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "PodDisruptionBudget" not in {d["kind"] for d in render(SCENARIOS["ephemeral"])
                                         if d["metadata"]["name"].endswith("-gateway")}


def test_ingress_routes_to_the_gateway_with_tls_and_body_size(render: Render) -> None:
    docs = render(INGRESS)
    ingress = find(docs, "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "50m"
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["tls"] == [{"secretName": "vlq-tls", "hosts": ["vlq.example.org"]}]
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = find(docs, "Service", "-gateway")
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert "Ingress" not in kinds(render({}))


def test_every_service_selects_pods_of_a_workload(render: Render) -> None:
    docs = render({})
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in docs
                  if d["kind"] in {"Deployment", "StatefulSet"}]
    for service in find_all(docs, "Service"):
        assert any(matches(service["spec"]["selector"], labels) for labels in pod_labels), service["metadata"]
    for workload in docs:
        if workload["kind"] in {"Deployment", "StatefulSet"}:
            assert matches(workload["spec"]["selector"]["matchLabels"],
                           workload["spec"]["template"]["metadata"]["labels"])


# ---- worker -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [600, 1800])
def test_worker_scale_down_drains_instead_of_killing(render: Render, timeout: int) -> None:
    docs = render({"jobTimeoutSeconds": timeout})
    spec = pod_spec(find(docs, "Deployment", WORKER))
    assert spec["terminationGracePeriodSeconds"] >= timeout + 30
    assert configmap_env(docs, WORKER)["VLQ_WORKER_DRAIN_TIMEOUT_S"] == str(timeout)
    assert configmap_env(docs, "-gateway")["VLQ_GATEWAY_JOB_TIMEOUT_S"] == str(timeout)
    # No preStop hook or shell wrapper in the way of SIGTERM: the image's exec-form entrypoint runs as is.
    worker = container(find(docs, "Deployment", WORKER), "worker")
    assert "command" not in worker and "lifecycle" not in worker


def test_worker_startup_probe_allows_a_long_model_load(render: Render) -> None:
    worker = container(find(render({}), "Deployment", WORKER), "worker")
    startup = worker["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]


def test_worker_requests_gpus_and_lands_on_gpu_nodes(render: Render) -> None:
    values = SCENARIOS["everything"]
    deployment = find(render(values), "Deployment", WORKER)
    spec = pod_spec(deployment)
    assert container(deployment, "worker")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == values["worker"]["nodeSelector"]
    assert spec["affinity"] == values["worker"]["affinity"]
    assert spec["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    two = find(render({"worker": {"gpu": {"count": 2}}}), "Deployment", WORKER)
    assert container(two, "worker")["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_worker_shm_is_a_memory_emptydir(render: Render) -> None:
    deployment = find(render({"worker": {"shm": {"sizeLimit": "16Gi"}}}), "Deployment", WORKER)
    mounts = {m["mountPath"]: m["name"] for m in container(deployment, "worker")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}


@pytest.mark.parametrize(
    ("cache", "expect"),
    [
        ({}, {"persistentVolumeClaim": {"claimName": "vlq-worker-models"}}),
        ({"pvc": {"existingClaim": "models"}}, {"persistentVolumeClaim": {"claimName": "models"}}),
        ({"type": "hostPath"}, {"hostPath": {"path": "/var/lib/vlq/models", "type": "DirectoryOrCreate"}}),
        ({"type": "emptyDir"}, {"emptyDir": {"sizeLimit": "50Gi"}}),
    ],
)
def test_model_cache_volume_by_value(render: Render, cache: dict[str, Any], expect: dict[str, Any]) -> None:
    docs = render({"worker": {"modelCache": cache}})
    deployment = find(docs, "Deployment", WORKER)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert {k: v for k, v in volumes["model-cache"].items() if k != "name"} == expect
    created = [p["metadata"]["name"] for p in find_all(docs, "PersistentVolumeClaim")]
    assert created == (["vlq-worker-models"] if cache == {} else [])
    env = configmap_env(docs, WORKER)
    assert env["HF_HOME"].startswith("/models/") and env["VLLM_CACHE_ROOT"].startswith("/models/")


def test_worker_pvc_outlives_uninstall(render: Render) -> None:
    pvc = find(render({}), "PersistentVolumeClaim", "-models")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_hf_token_and_extra_env(render: Render) -> None:
    deployment = find(render(SCENARIOS["ephemeral"]), "Deployment", WORKER)
    env = {e["name"]: e for e in env_list(deployment, "worker")}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert "HF_TOKEN" not in {e["name"] for e in env_list(find(render({}), "Deployment", WORKER), "worker")}


def test_worker_name_is_the_pod_name(render: Render) -> None:
    env = {e["name"]: e for e in env_list(find(render({}), "Deployment", WORKER), "worker")}
    assert env["VLQ_WORKER_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize("workload", ["-gateway", WORKER, "-webhooks"])
def test_pods_run_non_root_without_a_service_account_token(render: Render, workload: str) -> None:
    deployment = find(render({}), "Deployment", workload)
    spec = pod_spec(deployment)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    ctx = container(deployment, component(workload))["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]


# ---- checksum annotations ---------------------------------------------------------------------------------


def checksums(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in docs if d["kind"] in {"Deployment", "StatefulSet"}}


def test_config_changes_roll_exactly_the_pods_that_read_it(render: Render) -> None:
    base = checksums(render({}))
    assert set(base) == {"vlq-gateway", "vlq-worker-default", "vlq-redis", "vlq-webhooks"}
    gateway_change = checksums(render({"gateway": {"config": {"maxPromptChars": 8000}}}))
    assert gateway_change["vlq-gateway"] != base["vlq-gateway"]
    # The webhook worker reads the gateway's settings too.
    assert gateway_change["vlq-webhooks"] != base["vlq-webhooks"]
    assert gateway_change["vlq-worker-default"] == base["vlq-worker-default"]
    worker_change = checksums(render({"worker": {"engine": {"maxModelLen": 4096}}}))
    assert worker_change["vlq-worker-default"] != base["vlq-worker-default"]
    assert worker_change["vlq-gateway"] == base["vlq-gateway"]
    both = checksums(render({"model": {"name": "Qwen/Qwen3-VL-4B-Instruct"}}))
    assert both["vlq-gateway"] != base["vlq-gateway"] and both["vlq-worker-default"] != base["vlq-worker-default"]
    redis_change = checksums(render({"redis": {"maxmemory": "2gb"}}))
    assert redis_change["vlq-redis"] != base["vlq-redis"]


# ---- Redis ------------------------------------------------------------------------------------------------


def redis_conf(docs: list[dict[str, Any]]) -> dict[str, str]:
    conf = find(docs, "ConfigMap", "-redis")["data"]["redis.conf"]
    pairs = [ln.split(None, 1) for ln in conf.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return {k: v for k, v in pairs}


def test_redis_is_durable_and_never_evicts(render: Render) -> None:
    docs = render({"redis": {"maxmemory": "3gb"}})
    conf = redis_conf(docs)
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["maxmemory"] == "3gb"
    statefulset = find(docs, "StatefulSet", "-redis")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container(statefulset, "redis")["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == conf["dir"]


def test_redis_password_comes_from_the_secret_never_argv_or_configmap(render: Render) -> None:
    docs = render({"redis": {"auth": {"password": "fixed-password"}}})
    statefulset = find(docs, "StatefulSet", "-redis")
    redis = container(statefulset, "redis")
    assert "fixed-password" not in yaml.safe_dump(statefulset)
    assert "fixed-password" not in yaml.safe_dump(find(docs, "ConfigMap", "-redis"))
    assert "requirepass" in redis["command"][-1] and "exec redis-server" in redis["command"][-1]
    assert redis_conf(docs)["include"] == "/run/redis/auth.conf"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
    assert env["REDIS_PASSWORD"] == {"name": "vlq-redis", "key": "redis-password"}
    secret = find(docs, "Secret", "-redis")
    assert secret["data"]["redis-password"] == "Zml4ZWQtcGFzc3dvcmQ="  # base64("fixed-password")


def test_generated_password_is_long_and_random(render: Render) -> None:
    import base64

    password = base64.b64decode(find(render({}), "Secret", "-redis")["data"]["redis-password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    # With an existing Secret the only one the chart makes is the gateway's API key file.
    secrets = find_all(render({"redis": {"auth": {"existingSecret": "mine"}}}), "Secret")
    assert [s["metadata"]["name"] for s in secrets] == ["vlq-gateway-api-keys"]


@pytest.mark.parametrize("workload", ["-gateway", WORKER])
def test_services_build_the_redis_url_from_the_secret(render: Render, workload: str) -> None:
    name = component(workload)
    url_var = f"VLQ_{name.upper()}_REDIS_URL"
    env = env_list(find(render({}), "Deployment", workload), name)
    names = [e["name"] for e in env]
    # $(REDIS_PASSWORD) is substituted only from variables defined earlier in the list.
    assert names.index("REDIS_PASSWORD") < names.index(url_var)
    assert env[names.index("REDIS_PASSWORD")]["valueFrom"]["secretKeyRef"] == {
        "name": "vlq-redis", "key": "redis-password"}
    assert env[names.index(url_var)]["value"] == "redis://:$(REDIS_PASSWORD)@vlq-redis.vlq.svc:6379/0"


def test_external_redis_replaces_the_statefulset(render: Render) -> None:
    docs = render(EXTERNAL_REDIS)
    assert not {"StatefulSet", "NetworkPolicy"} & kinds(docs)
    assert [s["metadata"]["name"] for s in find_all(docs, "Secret")] == ["vlq-gateway-api-keys"]
    assert not [s for s in find_all(docs, "Service") if "redis" in s["metadata"]["name"]]
    for workload in ("-gateway", WORKER):
        name = component(workload)
        deployment = find(docs, "Deployment", workload)
        assert env_values(deployment, name)[f"VLQ_{name.upper()}_REDIS_URL"] == (
            "rediss://:$(REDIS_PASSWORD)@redis.example.internal:6380/2")
        password = {e["name"]: e for e in env_list(deployment, name)}["REDIS_PASSWORD"]
        assert password["valueFrom"]["secretKeyRef"] == {"name": "shared-redis", "key": "password"}


def test_external_redis_without_auth_and_with_a_chart_kept_password(render: Render) -> None:
    no_auth = render(SCENARIOS["external-redis-no-auth"])
    env = env_list(find(no_auth, "Deployment", "-gateway"), "gateway")
    assert "REDIS_PASSWORD" not in {e["name"] for e in env}
    assert env_values(find(no_auth, "Deployment", "-gateway"), "gateway")["VLQ_GATEWAY_REDIS_URL"] == (
        "redis://10.0.0.5:6379/0")
    with_password = render(SCENARIOS["external-redis-password"])
    assert find(with_password, "Secret", "-redis")["data"]["redis-password"] == "czNjcmV0"  # "s3cret"


def test_only_gateway_and_workers_reach_redis(render: Render) -> None:
    docs = render({})
    policy = find(docs, "NetworkPolicy", "-redis")["spec"]
    redis_pods = find(docs, "StatefulSet", "-redis")["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["podSelector"]["matchLabels"], redis_pods)
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    allowed = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
    for workload in ("-gateway", WORKER, "-webhooks"):
        labels = find(docs, "Deployment", workload)["spec"]["template"]["metadata"]["labels"]
        assert sum(matches(sel, labels) for sel in allowed) == 1
    test_pod = find(docs, "Pod", "-test-gateway")
    assert not any(matches(sel, test_pod["metadata"]["labels"]) for sel in allowed)
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]


def test_keda_operator_may_read_the_queue_for_the_redis_trigger(render: Render) -> None:
    (rule,) = find(render(SCENARIOS["keda-redis"]), "NetworkPolicy", "-redis")["spec"]["ingress"]
    keda = [p for p in rule["from"] if "namespaceSelector" in p]
    assert keda == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/name": "keda-operator"}}}]
    (plain,) = find(render(SCENARIOS["keda-prometheus"]), "NetworkPolicy", "-redis")["spec"]["ingress"]
    assert not [p for p in plain["from"] if "namespaceSelector" in p]


# ---- helm test --------------------------------------------------------------------------------------------


def test_helm_test_pod_calls_healthz_through_the_service(render: Render) -> None:
    docs = render({"gateway": {"service": {"port": 8080}}})
    pod = find(docs, "Pod", "-test-gateway")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (test,) = pod["spec"]["containers"]
    assert "/healthz" in test["command"][2]
    assert test["command"][-1] == "http://vlq-gateway:8080"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_default_ingress_publishes_only_the_api(render: Render) -> None:
    # /metrics, /healthz, /readyz and /docs must not be reachable from outside the cluster by default.
    ingress = find(render({"gateway": {"ingress": {"enabled": True}}}), "Ingress")
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/api"]


# ---- webhooks ---------------------------------------------------------------------------------------------


def test_webhook_worker_runs_the_gateway_image_with_its_settings_and_secrets(render: Render) -> None:
    docs = render(SCENARIOS["everything"])
    deployment = find(docs, "Deployment", "-webhooks")
    worker = container(deployment, "webhooks")
    gateway = container(find(docs, "Deployment", "-gateway"), "gateway")
    assert worker["command"] == ["python", "-m", "gateway.webhook_worker"]
    assert worker["image"] == gateway["image"] and deployment["spec"]["replicas"] == 2
    config = find(docs, "ConfigMap", "-gateway")["data"]
    assert config["VLQ_GATEWAY_WEBHOOK_ALLOW_CIDRS"] == '["10.20.0.0/16"]'
    assert config["VLQ_GATEWAY_WEBHOOK_MAX_ATTEMPTS"] == "8"
    path = config["VLQ_GATEWAY_WEBHOOK_SECRETS_FILE"]
    secret = find(docs, "Secret", "-webhooks-secrets")
    assert json.loads(base64.b64decode(secret["data"]["secrets.json"])) == {"ci": "whsec-ci-0123456789"}
    for pod, name in ((deployment, "webhooks"), (find(docs, "Deployment", "-gateway"), "gateway")):
        mounts = {m["name"]: m for m in container(pod, name)["volumeMounts"]}
        assert mounts["webhook-secrets"]["readOnly"] is True
        assert path.startswith(mounts["webhook-secrets"]["mountPath"] + "/")
        assert "checksum/webhook-secrets" in pod["spec"]["template"]["metadata"]["annotations"]
    # Without secrets nothing is mounted, and the worker can be switched off.
    plain = render({})
    assert "VLQ_GATEWAY_WEBHOOK_SECRETS_FILE" not in find(plain, "ConfigMap", "-gateway")["data"]
    assert not [d for d in render({"webhooks": {"enabled": False}}) if d["metadata"]["name"].endswith("-webhooks")]
