"""Gateway entry point: ``python -m gateway`` serves the API with uvicorn."""

from __future__ import annotations

import logging
import os
import tempfile

import uvicorn

from gateway.config import GatewaySettings


def main() -> None:
    """Run uvicorn on the configured host and port, with several processes if asked."""
    settings = GatewaySettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each process keeps its own counters; the directory lets /metrics merge them.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vlq-metrics-")
    uvicorn.run("gateway.app:create_app_from_env", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, proxy_headers=True, access_log=False,
                timeout_graceful_shutdown=int(settings.max_wait_s) + 5)


if __name__ == "__main__":
    main()
