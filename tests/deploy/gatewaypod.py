"""The gateway as a rendered pod would start it: its settings read from the pod's environment, with the files
of its Secret volumes written to a local directory in place of their mount paths."""

from __future__ import annotations

import base64
from pathlib import Path, PurePosixPath

from gateway.config import GatewaySettings
from tests.deploy.objects import Obj, container, container_env, find, pod_spec, settings_from_env

PREFIX = "VLQ_GATEWAY_"


def secret_files(docs: list[Obj], workload: Obj, name: str, root: Path) -> dict[str, Path]:
    """Write the files of the container's Secret volumes (from Secrets in ``docs``) under ``root``; the local
    path of each file, keyed by the path the container would see. Secrets not in ``docs`` are skipped."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    files: dict[str, Path] = {}
    for mount in container(workload, name).get("volumeMounts", []):
        source = volumes[mount["name"]].get("secret")
        if source is None or source["secretName"] not in secrets:
            continue
        data = secrets[source["secretName"]]["data"]
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            local = root / mount["name"] / item["path"]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(base64.b64decode(data[item["key"]]))
            files[str(PurePosixPath(mount["mountPath"]) / item["path"])] = local
    return files


def gateway_settings(docs: list[Obj], root: Path) -> GatewaySettings:
    """GatewaySettings from the gateway pod's environment; the API key file, when the chart mounts one from a
    Secret it renders, is read from its local copy under ``root``."""
    workload = find(docs, "Deployment", "-gateway")
    env = container_env(docs, workload, "gateway")
    files = secret_files(docs, workload, "gateway", root)
    keys_file = env.get(PREFIX + "API_KEYS_FILE")
    if keys_file in files:
        env[PREFIX + "API_KEYS_FILE"] = str(files[keys_file])
    return settings_from_env(GatewaySettings, {k: v for k, v in env.items() if k.startswith(PREFIX)})
