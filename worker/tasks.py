"""The job function named in every RQ job (``worker.tasks.infer``).

vlq's worker (``python -m worker``) never calls it: it reads the JSON payload and hands it to its engine,
many jobs at once. It exists so the name resolves, and to refuse loudly if a plain ``rq worker`` — which
would run one job at a time, each loading no model — is pointed at the queue by mistake.
"""

from __future__ import annotations

from typing import Any


def infer(job: dict[str, Any]) -> None:
    """Refuse: inference jobs are run by ``python -m worker``, not by a generic RQ worker."""
    raise RuntimeError("vlq inference jobs must be run by `python -m worker`, not by `rq worker`")
