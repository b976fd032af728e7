"""The gateway must stay slim: importing it loads neither vllm nor torch."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_gateway_import_graph_has_no_vllm_or_torch() -> None:
    code = ("import sys, gateway.app, gateway.__main__, gateway.local_stack; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'torch', 'transformers')); "
            "print(heavy); assert not heavy, heavy; assert 'gateway.app' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"


def test_dependency_direction_cache_imports_nothing_of_vlq_and_worker_not_the_gateway() -> None:
    # cache/ depends on nothing in the project; worker/ uses cache/'s public face; gateway/ uses both.
    code = ("import sys, pkgutil, importlib, cache, worker; "
            "[importlib.import_module('cache.' + m.name) for m in pkgutil.iter_modules(cache.__path__)]; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'gateway', 'loadtest') "
            "and m != 'worker'); print(bad); assert not bad, bad; "
            "skip = {'vllm_engine', 'tiny_model', 'cpu_setup', '__main__'}; "
            "[importlib.import_module('worker.' + m.name) for m in pkgutil.iter_modules(worker.__path__) "
            "if m.name not in skip]; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'gateway'); print(bad); assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["[]", "[]"]
