"""Small readers over rendered Kubernetes objects, shared by the deploy tests."""

from __future__ import annotations

import os
import re
from typing import Any, TypeVar
from unittest import mock

from pydantic_settings import BaseSettings

Obj = dict[str, Any]
S = TypeVar("S", bound=BaseSettings)

# The objects of the one worker pool a release has while workerPools is empty: <fullname>-worker-default.
WORKER = "-worker-default"


def component(name_suffix: str) -> str:
    """The container of a workload found by ``name_suffix``: "-worker-default" -> "worker"."""
    return name_suffix.strip("-").split("-")[0]


def find(docs: list[Obj], kind: str, name_suffix: str = "") -> Obj:
    """The one object of ``kind`` whose name ends with ``name_suffix``."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def find_all(docs: list[Obj], kind: str) -> list[Obj]:
    """Every object of ``kind``."""
    return [d for d in docs if d["kind"] == kind]


def kinds(docs: list[Obj]) -> set[str]:
    """The kinds present in a render."""
    return {d["kind"] for d in docs}


def pod_spec(workload: Obj) -> Obj:
    """The pod spec of a Deployment/StatefulSet, or the spec of a Pod."""
    spec: Obj = workload["spec"]["template"]["spec"] if workload["kind"] != "Pod" else workload["spec"]
    return spec


def container(workload: Obj, name: str) -> Obj:
    """The container called ``name``."""
    found: list[Obj] = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def env_list(workload: Obj, name: str) -> list[Obj]:
    """The env entries of a container, in order."""
    return list(container(workload, name).get("env", []))


def env_values(workload: Obj, name: str) -> dict[str, str]:
    """Literal env values of a container (entries with valueFrom are left out)."""
    return {e["name"]: e["value"] for e in env_list(workload, name) if "value" in e}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether matchLabels ``selector`` selects ``labels``."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_env(docs: list[Obj], workload: Obj, name: str) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom ConfigMaps, then literal env entries with
    $(VAR) references to earlier entries expanded (entries with valueFrom are left out)."""
    env: dict[str, str] = {}
    for source in container(workload, name).get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in env_list(workload, name):
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                        lambda m: env.get(m.group(1), m.group(0)), entry["value"])
    return env


def settings_from_env(settings: type[S], env: dict[str, str]) -> S:
    """``settings`` read from exactly ``env`` as the service reads its process environment (JSON lists and
    objects such as VLQ_GATEWAY_MODELS decoded the same way), nothing else of this process's leaking in."""
    with mock.patch.dict(os.environ, env, clear=True):
        return settings()
