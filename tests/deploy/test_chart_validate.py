"""The chart lints strictly and every object it renders is valid Kubernetes, in every scenario.

Built-in kinds are checked by kubernetes-validate in strict mode (unknown fields fail) against the oldest
Kubernetes the chart supports and the newest the installed kubernetes-validate knows. CRD kinds (KEDA,
Prometheus Operator) are checked against closed schemas of the fields vlq uses, in crd_schemas/.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy import helmtool
from tests.deploy.conftest import Render
from tests.deploy.objects import WORKER, find
from tests.deploy.scenarios import SCENARIOS

CRD_SCHEMA_DIR = Path(__file__).parent / "crd_schemas"
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}


def _min_kube_version() -> str:
    chart = yaml.safe_load((helmtool.CHART / "Chart.yaml").read_text())
    match = re.match(r">=\s*(\d+\.\d+)", chart["kubeVersion"])
    assert match, chart["kubeVersion"]
    return match.group(1)


KUBE_VERSIONS = sorted({_min_kube_version(), kubernetes_validate.latest_version()})


@cache
def _crd_validator(filename: str) -> jsonschema.protocols.Validator:
    schema = json.loads((CRD_SCHEMA_DIR / filename).read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    return validator_cls(schema)


def validate_object(obj: dict[str, Any], kube_version: str) -> None:
    """Raise when ``obj`` is not a valid object of its kind (strict: unknown fields are errors)."""
    crd = CRD_KINDS.get((obj["apiVersion"], obj["kind"]))
    if crd is not None:
        _crd_validator(crd).validate(obj)
    else:
        kubernetes_validate.validate(obj, kube_version, strict=True)


def _describe(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint_strict(helm: Path, scenario: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(SCENARIOS[scenario]))
    out = helmtool.run_helm(helm, ["lint", "--strict", str(helmtool.CHART), "--values", str(values)])
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_rendered_object_validates(render: Render, scenario: str, kube_version: str) -> None:
    docs = render(SCENARIOS[scenario])
    assert len(docs) >= 10
    errors = []
    for obj in docs:
        try:
            validate_object(obj, kube_version)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{_describe(obj)}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_object_names_are_unique_and_dns_safe(render: Render, scenario: str) -> None:
    docs = render(SCENARIOS[scenario])
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys))
    for _, name in keys:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name


def test_long_release_names_still_give_valid_object_names(render: Render) -> None:
    docs = render({}, release="a-release-name-of-fifty-three-characters-that-is-long")
    for obj in docs:
        assert len(obj["metadata"]["name"]) <= 63, _describe(obj)
        validate_object(obj, KUBE_VERSIONS[-1])


def test_the_validators_reject_a_misspelt_field(render: Render) -> None:
    """The checks above can fail: a typo'd field is caught both for built-in kinds and for CRDs."""
    docs = render({"autoscaling": {"mode": "keda"}})
    deployment = copy.deepcopy(find(docs, "Deployment", WORKER))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 600
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriod"):
        validate_object(deployment, KUBE_VERSIONS[-1])
    scaled = copy.deepcopy(find(docs, "ScaledObject"))
    scaled["spec"]["maxReplicas"] = 4
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        validate_object(scaled, KUBE_VERSIONS[-1])
    del scaled["spec"]["maxReplicas"]
    del scaled["spec"]["triggers"]
    with pytest.raises(jsonschema.ValidationError, match="triggers"):
        validate_object(scaled, KUBE_VERSIONS[-1])


@pytest.mark.parametrize("filename", sorted(set(CRD_KINDS.values())))
def test_crd_schemas_are_valid_and_closed(filename: str) -> None:
    schema = json.loads((CRD_SCHEMA_DIR / filename).read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["spec"]["additionalProperties"] is False
