"""k8s/ holds plain manifests rendered from the chart (the chart stays the one source of truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.deploy import helmtool
from tests.deploy.objects import WORKER, find, kinds, pod_spec
from tests.deploy.test_chart_validate import KUBE_VERSIONS, validate_object


def test_k8s_manifests_are_current(helm: Path) -> None:
    stale = helmtool.stale_plain(helm)
    assert not stale, f"k8s/ is out of date with helm/vlq ({', '.join(stale)}): run `make k8s-manifests`"


def test_k8s_holds_only_generated_files_and_its_readme() -> None:
    generated = {m.filename for m in helmtool.PLAIN_MANIFESTS}
    present = {p.name for p in helmtool.K8S_DIR.iterdir()}
    assert present == generated | {"README.md"}


def test_the_staleness_check_can_fail(helm: Path, tmp_path: Path) -> None:
    helmtool.write_plain(helm, tmp_path)
    assert helmtool.stale_plain(helm, tmp_path) == []
    edited = tmp_path / "vlq.yaml"
    edited.write_text(edited.read_text().replace("maxmemory-policy noeviction", "maxmemory-policy allkeys-lru"))
    (tmp_path / "monitoring.yaml").unlink()
    assert helmtool.stale_plain(helm, tmp_path) == ["vlq.yaml", "monitoring.yaml"]


def _load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((helmtool.K8S_DIR / name).read_text()) if d]


def test_plain_manifests_are_valid() -> None:
    for manifest in helmtool.PLAIN_MANIFESTS:
        docs = _load(manifest.filename)
        assert docs, manifest.filename
        for obj in docs:
            validate_object(obj, KUBE_VERSIONS[-1])


def test_core_manifest_needs_no_crd_and_carries_no_password() -> None:
    docs = _load("vlq.yaml")
    assert kinds(docs) <= {"Deployment", "StatefulSet", "Service", "ConfigMap", "PersistentVolumeClaim",
                           "PodDisruptionBudget", "NetworkPolicy"}
    assert "Secret" not in kinds(docs) and "Pod" not in kinds(docs)
    env = pod_spec(find(docs, "StatefulSet", "-redis"))["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"]["name"] == "vlq-redis"
    # Left to the autoscaler in autoscaling-*.yaml; 1 by default without one.
    assert "replicas" not in find(docs, "Deployment", WORKER)["spec"]


def test_core_manifest_reads_api_keys_from_an_existing_secret() -> None:
    docs = _load("vlq.yaml")
    gateway = find(docs, "Deployment", "-gateway")
    volumes = {v["name"]: v for v in pod_spec(gateway)["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "vlq-api-keys"
    assert volumes["api-keys"]["secret"]["items"] == [{"key": "keys.json", "path": "keys.json"}]
    env = find(docs, "ConfigMap", "-gateway")["data"]
    assert env["VLQ_GATEWAY_AUTH_ENABLED"] == "true"
    assert env["VLQ_GATEWAY_API_KEYS_FILE"] == "/etc/vlq/api-keys/keys.json"
    assert env["VLQ_GATEWAY_HOST"] == "0.0.0.0"


def test_readme_tells_how_to_create_the_secrets() -> None:
    readme = (helmtool.K8S_DIR / "README.md").read_text()
    assert "kubectl -n vlq create secret generic vlq-redis --from-literal=redis-password=" in readme
    assert "kubectl -n vlq create secret generic vlq-api-keys --from-file=keys.json" in readme
    assert "python -m gateway.auth new" in readme
    assert "make k8s-manifests" in readme
