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
