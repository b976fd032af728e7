"""Shared fixtures: a real redis-server on a free loopback port, stopped by PID; image factories."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from redis import Redis

from gateway.local_stack import free_port, redis_binary

ROOT = Path(__file__).resolve().parent.parent


class RedisProcess:
    """A redis-server child process on a loopback port."""

    def __init__(self, workdir: Path, appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.workdir), "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> Iterator[str]:
    """A clean database on the session's redis-server."""
    client = Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


def make_image(color: tuple[int, int, int], size: tuple[int, int] = (64, 64), fmt: str = "PNG",
               text: str | None = None) -> bytes:
    """An encoded test image; ``text`` draws digits so near-identical screenshots can be made."""
    image = Image.new("RGB", size, color)
    if text is not None:
        from PIL import ImageDraw

        ImageDraw.Draw(image).text((4, 4), text, fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def image_factory() -> Callable[..., bytes]:
    return make_image


class ProcessGroup:
    """Child processes started by a test, killed at its end whatever happens.

    Each child leads its own process group: vLLM's AsyncLLM spawns an EngineCore (and a model worker) that
    outlive a SIGKILLed parent, so every kill here goes to the whole group, as a container's death would.
    """

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        with open(self.logdir / f"{name}-{len(self.procs)}.log", "wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        index = self.procs.index(proc)
        for path in self.logdir.glob(f"*-{index}.log"):
            return path.read_text(errors="replace")
        return ""

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the child and everything it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            self.kill(proc)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path)
    yield group
    group.stop_all()


def parse_sse(lines: Iterable[str]) -> list[tuple[int | None, str, Any]]:
    """Server-Sent Events as (id or None, type, JSON data); comment lines are skipped."""
    found: list[tuple[int | None, str, Any]] = []
    event: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in event:
                found.append((int(event["id"]) if "id" in event else None, event["event"], json.loads(event["data"])))
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            event[name] = value
    return found


def redis_shape(redis: Redis, names: dict[str, str], keys: Iterable[bytes] | None = None) -> dict[str, Any]:
    """Every key (of ``keys``, default all), with the ids named generically: its type, whether it expires, and its
    fields or members (values hold times and ids; which of them are written is what must match)."""
    def named(raw: bytes | str) -> str:
        text = raw.decode() if isinstance(raw, bytes) else raw
        for value, name in names.items():
            text = text.replace(value, name)
        return text

    shape: dict[str, Any] = {}
    for key in redis.keys("*") if keys is None else keys:
        kind = redis.type(key).decode()
        if kind == "hash":
            content: Any = sorted(named(field) for field in redis.hkeys(key))
        elif kind == "zset":
            content = sorted(named(member) for member in redis.zrange(key, 0, -1))
        elif kind == "set":
            content = sorted(named(member) for member in redis.smembers(key))
        elif kind == "list":
            content = [named(item) for item in redis.lrange(key, 0, -1)]
        elif kind == "stream":
            content = [sorted(named(field) for field in fields) for _, fields in redis.xrange(key)]
        else:
            content = named(redis.get(key) or b"") if len(redis.get(key) or b"") < 100 else "<bytes>"
        shape[named(key)] = (kind, redis.ttl(key) > 0, content)
    return shape


def redis_timings(redis: Redis, names: dict[str, str]) -> dict[str, tuple[int, list[float]]]:
    """Every key's TTL and, for a sorted set, its scores relative to now (RQ scores are expiry times),
    with the ids named generically as in ``redis_shape``."""
    timings: dict[str, tuple[int, list[float]]] = {}
    for key in redis.keys("*"):
        scores = [score - time.time() for _, score in redis.zrange(key, 0, -1, withscores=True)] \
            if redis.type(key) == b"zset" else []
        name = key.decode()
        for value, generic in names.items():
            name = name.replace(value, generic)
        timings[name] = (redis.ttl(key), scores)
    return timings


def assert_same_timings(got: dict[str, tuple[int, list[float]]], expected: dict[str, tuple[int, list[float]]],
                        slack_s: float = 1.5) -> None:
    """The same keys, with TTLs and scores equal to within the seconds two writes apart may differ by."""
    assert got.keys() == expected.keys()
    for key, (ttl, scores) in expected.items():
        got_ttl, got_scores = got[key]
        assert abs(got_ttl - ttl) <= slack_s, key
        assert len(got_scores) == len(scores), key
        assert all(abs(a - b) <= slack_s for a, b in zip(got_scores, scores, strict=True)), key
