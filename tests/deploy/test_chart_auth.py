"""API keys: a `helm install` gives a gateway that asks for them, loads them from a mounted Secret of hashes, and
starts. Without keys the chart refuses to render, as the gateway would refuse to start; running open takes an
explicit auth.enabled=false, and NOTES.txt then says so loudly."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.auth import hash_key
from gateway.deps import get_tenant
from tests.deploy import helmtool
from tests.deploy.conftest import Notes, Render
from tests.deploy.gatewaypod import gateway_settings
from tests.deploy.objects import WORKER, Obj, container, find, find_all, pod_spec
from tests.deploy.scenarios import SCENARIOS

KEYS = {"acme": ["vlq_acme-one", "vlq_acme-two"], "beta": ["vlq_beta-only"]}
TENANTS = {tenant: [hash_key(key) for key in keys] for tenant, keys in KEYS.items()}
VALUES: dict[str, Any] = {"auth": {"tenants": TENANTS}}


def keys_secrets(docs: list[Obj]) -> list[Obj]:
    return [d for d in find_all(docs, "Secret") if d["metadata"]["name"].endswith("-api-keys")]


def gateway_config(docs: list[Obj]) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", "-gateway")["data"])


def key_volume(docs: list[Obj]) -> tuple[Obj, Obj]:
    """The gateway's api-keys volume and its mount."""
    deployment = find(docs, "Deployment", "-gateway")
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == "api-keys"]
    (mount,) = [m for m in container(deployment, "gateway")["volumeMounts"] if m["name"] == "api-keys"]
    return volume, mount


def build_app(docs: list[Obj], tmp_path: Path) -> FastAPI:
    """The gateway app as the pod would build it (create_app refuses auth on without a readable key file)."""
    return create_app(gateway_settings(docs, tmp_path))


# ---- tenants in values: a chart-made Secret of hashes -----------------------------------------------------


def test_tenants_become_a_secret_of_hashes_only(render: Render) -> None:
    docs = render(VALUES)
    (secret,) = keys_secrets(docs)
    assert secret["type"] == "Opaque" and set(secret["data"]) == {"keys.json"}
    assert json.loads(base64.b64decode(secret["data"]["keys.json"])) == TENANTS
    rendered = yaml.safe_dump_all(docs)
    for key in (k for keys in KEYS.values() for k in keys):
        assert key not in rendered


def test_gateway_mounts_the_key_file_read_only_and_is_told_where(render: Render) -> None:
    docs = render(VALUES)
    volume, mount = key_volume(docs)
    (secret,) = keys_secrets(docs)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert mount["readOnly"] is True
    (item,) = volume["secret"]["items"]
    assert item["key"] == "keys.json"
    env = gateway_config(docs)
    assert env["VLQ_GATEWAY_AUTH_ENABLED"] == "true"
    assert env["VLQ_GATEWAY_API_KEYS_FILE"] == f"{mount['mountPath']}/{item['path']}"


def test_the_gateway_starts_on_the_rendered_keys_and_knows_every_tenant(render: Render, tmp_path: Path) -> None:
    keyring = build_app(render(VALUES), tmp_path).state.keyring
    assert not keyring.open
    for tenant, keys in KEYS.items():
        for key in keys:
            assert keyring.tenant_for(key) == tenant
    assert keyring.tenant_for("vlq_not-a-key") is None


def test_an_existing_secret_is_mounted_under_the_same_file_name(render: Render) -> None:
    docs = render(SCENARIOS["auth-existing-secret"])
    assert not keys_secrets(docs)
    volume, mount = key_volume(docs)
    assert volume["secret"]["secretName"] == "vlq-api-keys"
    assert volume["secret"]["items"] == [{"key": "tenants.json", "path": "keys.json"}]
    assert gateway_config(docs)["VLQ_GATEWAY_API_KEYS_FILE"] == f"{mount['mountPath']}/keys.json"


# ---- no keys: refuse to render; open only on request -------------------------------------------------------


@pytest.mark.parametrize("command", ["template", "lint"])
def test_auth_without_keys_fails_and_says_how_to_make_one(helm: Path, tmp_path: Path, command: str) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"gateway": {"replicaCount": 3}}))
    args = [command, *(["vlq"] if command == "template" else ["--strict"]), str(helmtool.CHART), "--values",
            str(values)]
    with pytest.raises(helmtool.HelmToolError) as caught:
        helmtool.run_helm(helm, args)
    message = str(caught.value)
    assert "auth.enabled is true but no API keys are given" in message
    for hint in ("python -m gateway.auth new", "auth.tenants", "auth.existingSecret", "auth.enabled=false"):
        assert hint in message


def test_auth_is_on_unless_switched_off() -> None:
    defaults = yaml.safe_load((helmtool.CHART / "values.yaml").read_text())
    assert defaults["auth"] == {"enabled": True, "tenants": {}, "existingSecret": "", "existingSecretKey": "keys.json"}


def test_auth_off_renders_no_keys_and_tells_the_gateway(render: Render, tmp_path: Path) -> None:
    docs = render(SCENARIOS["auth-off"])
    assert not keys_secrets(docs)
    env = gateway_config(docs)
    assert env["VLQ_GATEWAY_AUTH_ENABLED"] == "false"
    assert "VLQ_GATEWAY_API_KEYS_FILE" not in env
    deployment = find(docs, "Deployment", "-gateway")
    assert "api-keys" not in {v["name"] for v in pod_spec(deployment)["volumes"]}
    assert "checksum/api-keys" not in deployment["spec"]["template"]["metadata"]["annotations"]
    assert build_app(docs, tmp_path).state.keyring.open


def test_notes_shout_when_auth_is_off(notes: Notes) -> None:
    off = notes(SCENARIOS["auth-off"])
    assert "WARNING: AUTH IS OFF" in off and "python -m gateway.auth new" in off
    on = notes(SCENARIOS["everything"])
    assert "AUTH IS OFF" not in on
    assert "Secret vlq-prod-gateway-api-keys" in on and "tenants: ci, team-b" in on


# ---- rotation -----------------------------------------------------------------------------------------------


def pod_annotations(docs: list[Obj], suffix: str) -> dict[str, str]:
    return dict(find(docs, "Deployment", suffix)["spec"]["template"]["metadata"]["annotations"])


def test_a_new_key_rolls_the_gateway_pods_only(render: Render) -> None:
    before = render(VALUES)
    rotated = render({"auth": {"tenants": {**TENANTS, "beta": [*TENANTS["beta"], hash_key("vlq_beta-next")]}}})
    old, new = pod_annotations(before, "-gateway"), pod_annotations(rotated, "-gateway")
    assert new["checksum/api-keys"] != old["checksum/api-keys"]
    assert new["checksum/config"] == old["checksum/config"]
    assert pod_annotations(rotated, WORKER) == pod_annotations(before, WORKER)
    # An existing Secret is checksummed by name and key (and by content where helm can read it, on install).
    existing = pod_annotations(render(SCENARIOS["auth-existing-secret"]), "-gateway")["checksum/api-keys"]
    other = pod_annotations(render({"auth": {"existingSecret": "other"}}), "-gateway")["checksum/api-keys"]
    assert re.fullmatch(r"[0-9a-f]{64}", existing) and existing != other


# ---- what needs no key --------------------------------------------------------------------------------------


def _calls(dependant: Dependant) -> set[Any]:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def test_probes_and_the_helm_test_pod_need_no_key(render: Render, tmp_path: Path) -> None:
    docs = render(VALUES)
    gateway = container(find(docs, "Deployment", "-gateway"), "gateway")
    probed = {gateway[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")}
    (test,) = pod_spec(find(docs, "Pod", "-test-gateway"))["containers"]
    tested = set(re.findall(r'"(/[a-z]+)"', test["command"][2]))
    assert probed == tested == {"/healthz", "/readyz"}
    assert not [arg for arg in test["command"] if "Authorization" in arg or "X-API-Key" in arg]
    app = build_app(docs, tmp_path)
    routes = {route.path: route for route in app.routes if isinstance(route, APIRoute)}
    for path in tested:
        assert get_tenant not in _calls(routes[path].dependant), f"{path} would ask for an API key"
    assert get_tenant in _calls(routes["/api/infer"].dependant)  # the check can fail
    # Liveness answers without a key, with auth on (no lifespan: it needs no Redis).
    assert TestClient(app).get("/healthz").status_code == 200


def test_every_scenario_mounts_keys_unless_it_turns_auth_off(render: Render) -> None:
    for name, values in SCENARIOS.items():
        docs = render(values)
        enabled = values["auth"].get("enabled", True)
        assert gateway_config(docs)["VLQ_GATEWAY_AUTH_ENABLED"] == str(enabled).lower(), name
        volumes = {v["name"] for v in pod_spec(find(docs, "Deployment", "-gateway"))["volumes"]}
        assert ("api-keys" in volumes) == enabled, name
