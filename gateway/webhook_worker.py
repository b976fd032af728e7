"""``python -m gateway.webhook_worker``: delivers webhooks from ``WEBHOOK_QUEUE_NAME`` (settings: ``VLQ_GATEWAY_*``).

An RQ ``SimpleWorker``: a delivery is a short network call, so a fork per job would cost more than the job.
RQ's scheduler runs beside it for the backed-off retries (``Retry`` intervals). Jobs are JSON (never
pickle) and the only function it runs is ``WEBHOOK_FUNC``: a job planted in Redis cannot name another.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from gateway import webhooks
from gateway.config import GatewaySettings
from worker.constants import WEBHOOK_FUNC, WEBHOOK_QUEUE_NAME


class WebhookJob(Job):
    """A job that can only ever call ``gateway.webhooks.deliver``."""

    @property
    def func(self) -> Callable[..., Any]:
        if self.func_name != WEBHOOK_FUNC:
            raise ValueError(f"refusing job function {self.func_name!r} on the webhook queue")
        return webhooks.deliver


def build_worker(settings: GatewaySettings, redis: Redis) -> SimpleWorker:
    """The worker (and the process's delivery context) for ``settings``."""
    webhooks.load_secrets(settings)
    webhooks.Delivery(settings=settings, redis=redis).install()
    queue = Queue(WEBHOOK_QUEUE_NAME, connection=redis, serializer=JSONSerializer, job_class=WebhookJob)
    return SimpleWorker([queue], connection=redis, serializer=JSONSerializer, job_class=WebhookJob,
                        name=f"vlq-webhooks-{socket.gethostname()}-{os.getpid()}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = GatewaySettings()
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout_s)
    build_worker(settings, redis).work(with_scheduler=True)


if __name__ == "__main__":
    main()
