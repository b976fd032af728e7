"""vlq's Lua scripts, loaded once from ``worker/lua/*.lua``; each file names its KEYS and ARGV at the top.

Scripts that write a job's event stream get ``_events.lua`` (the stream-id and terminal-event rules)
prepended, so those rules are written once. Both services use these: import-light (redis only).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.commands.core import AsyncScript, Script

_WITH_EVENTS = frozenset({"append", "finish", "window_done"})


@cache
def source(name: str) -> str:
    """The text of script ``name`` as Redis runs it."""
    text = (files("worker") / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    if name in _WITH_EVENTS:
        text = (files("worker") / "lua" / "_events.lua").read_text(encoding="utf-8") + "\n" + text
    return text


class Scripts:
    """The scripts registered on one blocking client (usable in its pipelines too)."""

    def __init__(self, redis: Redis) -> None:
        self.append: Script = redis.register_script(source("append"))
        self.finish: Script = redis.register_script(source("finish"))
        self.high_water: Script = redis.register_script(source("high_water"))
        self.requeue_popped: Script = redis.register_script(source("requeue_popped"))
        self.keep_bytes: Script = redis.register_script(source("keep_bytes"))
        self.claim: Script = redis.register_script(source("claim"))
        self.window_done: Script = redis.register_script(source("window_done"))


class AsyncScripts:
    """The scripts the gateway runs on its asyncio client."""

    def __init__(self, redis: AsyncRedis) -> None:
        self.delete_media: AsyncScript = redis.register_script(source("delete_media"))
        self.keep_bytes: AsyncScript = redis.register_script(source("keep_bytes"))
        self.release_lock: AsyncScript = redis.register_script(source("release_lock"))
