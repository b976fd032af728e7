"""The served models: which pool a request goes to, and what ``GET /v1/models`` lists.

Each served model (``VLQ_GATEWAY_MODELS``, or just ``VLQ_GATEWAY_MODEL``) has its own queues and worker
pool (``worker.rqjobs.queue_names``). A request names one (``model``; none means ``VLQ_GATEWAY_MODEL``),
or a LoRA adapter of one as ``<model>:<adapter>`` (``VLQ_GATEWAY_ADAPTERS``), which goes to that model's
pool with the adapter in the job. The name as asked is what the cache key holds, so a base model and each
of its adapters never share an answer. Anything else is a 404 ``model_not_found`` naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewaySettings
from gateway.errors import NotFoundError


@dataclass(frozen=True)
class Target:
    """Where a request goes: the pool's model, the adapter (if any), and the name it asked for."""

    model: str
    adapter: str | None = None

    @property
    def name(self) -> str:
        return f"{self.model}:{self.adapter}" if self.adapter else self.model


def resolve(settings: GatewaySettings, asked: str | None, param: str = "model") -> Target:
    """The target of a model name; 404 ``model_not_found`` for one no pool serves."""
    if asked is None:
        return Target(settings.model)
    served = settings.served_models
    if asked in served:
        return Target(asked)
    base, _, adapter = asked.rpartition(":")
    if base in served and adapter in settings.adapters.get(base, ()):
        return Target(base, adapter)
    raise NotFoundError("model_not_found", f"the model {asked!r} does not exist; this server serves "
                        f"{', '.join(repr(name) for name in names(settings))}", param)


def names(settings: GatewaySettings) -> list[str]:
    """Every name a request may use: the served models, then each one's adapters."""
    served = settings.served_models
    return [*served, *(f"{base}:{adapter}" for base in served for adapter in settings.adapters.get(base, ()))]
