"""A request's plan: its exact cache key (everything the model sees) and what its job carries.

Built by ``gateway.submit`` for every request and by ``gateway.windows`` for each window and the merge job of a
long video; ``gateway.enqueue`` puts a plan on the queue.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass, field
from typing import Any

from cache.keys import cache_key, near_bucket
from gateway import models
from gateway.backend import Backend
from gateway.intake import Submission
from gateway.messages import ImageInput
from worker.contract import (
    ImagePart,
    ImageRef,
    Priority,
    Span,
    TextPart,
    VideoClip,
    VideoPart,
    WindowRef,
)


@dataclass
class PlanImage:
    """One image of the request once its digest is known; ``ref`` once its metadata is."""

    source: ImageInput
    digest: str
    data: bytes | None = None
    ref: ImageRef | None = None


@dataclass(frozen=True)
class Plan:
    request_id: str
    tenant: str
    key: str
    # What the key is taken of (``cache.keys``): the near bucket is worked out from it when a miss needs it.
    key_doc: dict[str, Any]
    images: list[PlanImage]
    submission: Submission
    idem_key: str | None
    target: models.Target
    videos: list[VideoClip]
    # False for Batch API lines: the batch driver meters them (batch_max_open_lines) instead of the
    # tenant's interactive in-flight quota, which a batch of thousands would otherwise fill.
    in_quota: bool = True
    # A window job of a long video: the stretch it answers about (``gateway.windows``).
    span: Span | None = None
    # A merge job of a long video: its windows (``gateway.windows``).
    windows: list[WindowRef] = field(default_factory=list)

    @functools.cached_property
    def bucket(self) -> str:
        """The near-duplicate bucket: everything of the key but the images' content."""
        return near_bucket(**self.key_doc)

    @property
    def webhook_url(self) -> str | None:
        """A window job is internal: the request's webhook fires on its merge job."""
        return None if self.span is not None else self.submission.params.webhook_url

    @property
    def priority(self) -> Priority:
        return self.submission.params.priority

    @property
    def digests(self) -> list[str]:
        return [image.digest for image in self.images]


def new_request_id() -> str:
    """Random and unguessable (128 bits): knowing one request id tells nothing about another."""
    return secrets.token_urlsafe(16)


def _key_part(part: TextPart | ImagePart | VideoPart, images: list[PlanImage], videos: list[VideoClip],
              windowed: tuple[int, float] | None) -> dict[str, Any]:
    """A part as the cache key sees it: images by digest, videos by their frames' digests and times (and the
    window length of one answered as windows: the windows decide the answer)."""
    if isinstance(part, ImagePart):
        return {"type": "image", "digest": images[part.image].digest}
    if isinstance(part, VideoPart):
        chosen = videos[part.video]
        key: dict[str, Any] = {"type": "video", "frames": chosen.frames, "times": chosen.times}
        if windowed is not None and windowed[0] == part.video:
            key["window_s"] = windowed[1]
        return key
    return {"type": "text", "text": part.text}


def build(backend: Backend, submission: Submission, tenant: str, images: list[PlanImage],
          idem_key: str | None, target: models.Target | None = None, in_quota: bool = True,
          videos: list[VideoClip] | None = None, windowed: tuple[int, float] | None = None,
          span: Span | None = None) -> Plan:
    """The plan of a request (or of one window of it: ``span``); ``windowed`` (video index, window length)
    for a request answered as windows."""
    settings = backend.settings
    target = target or models.resolve(settings, submission.params.model)
    videos = videos or []
    conversation = [{"role": message.role.value,
                     "content": [_key_part(part, images, videos, windowed) for part in message.content]}
                    for message in submission.messages]
    common: dict[str, Any] = {
        "scope": "shared" if settings.shared_cache else f"tenant:{tenant}", "model": target.name,
        "conversation": conversation, "task": submission.task.value,
        "response_format": submission.response_format.model_dump(mode="json"),
        "sampling": submission.sampling.model_dump(mode="json")}
    return Plan(request_id=new_request_id(), tenant=tenant, key=cache_key(**common), key_doc=common,
                images=images, submission=submission, idem_key=idem_key, target=target, in_quota=in_quota,
                videos=videos, span=span)
