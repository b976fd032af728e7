"""A throwaway local vlq stack for load tests and benchmarks: redis-server, worker and gateway as processes.

Everything listens on free loopback ports (never the defaults of ``make run``), keeps its state in a
temporary folder, and is stopped by PID on exit, whatever happened. Any ``VLQ_WORKER_*``/``VLQ_GATEWAY_*``
variable in the environment still applies, except those that decide where things listen.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from gateway.local_stack import free_port, redis_binary, stop_processes

__all__ = ["LOOPBACK", "LocalStack", "StackError", "free_port", "wait_http"]
from worker.config import DEFAULT_MODEL

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


class StackError(RuntimeError):
    """A process of the stack did not come up."""


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # our own loopback URL
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise StackError(f"{what} not ready after {timeout_s:.0f} s")


def wait_redis(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Wait until redis-server on ``port`` answers PING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"redis-server exited with code {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise StackError("redis-server not ready")


class LocalStack:
    """Redis, optionally one worker (``engine`` "vllm" or "instant") and the gateway, on free ports.

    Use as a context manager; ``stop()`` ends every child by PID, the gateway first and Redis last.
    """

    def __init__(self, engine: str = "instant", model: str = DEFAULT_MODEL, logdir: Path | None = None,
                 worker_env: dict[str, str] | None = None, gateway_env: dict[str, str] | None = None) -> None:
        self.engine = engine
        self.model = model
        self.state = Path(tempfile.mkdtemp(prefix="vlq-loadtest-"))
        self.logdir = logdir or self.state / "logs"
        self.worker_env = worker_env or {}
        self.gateway_env = gateway_env or {}
        self.redis_port = free_port()
        self.gateway_port = free_port()
        self.metrics_port = free_port()
        self._procs: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, int] = {}

    @property
    def redis_url(self) -> str:
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.gateway_port}"

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a child process logging to ``logdir/name.log``; it is stopped with the stack."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps writing to it
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._procs.append(proc)
        self.pids[name] = proc.pid
        return proc

    def start_redis(self) -> None:
        """redis-server without persistence (benchmarks measure the queue, not the disk)."""
        proc = self.spawn("redis", [redis_binary(), "--port", str(self.redis_port), "--bind", LOOPBACK,
                                    "--dir", str(self.state), "--save", "", "--appendonly", "no",
                                    "--maxmemory-policy", "noeviction"])
        self._checked("redis", lambda: wait_redis(self.redis_port, proc))

    def spawn_worker(self, name: str = "worker",
                     metrics_port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
        """``python -m worker`` without waiting for it (a scaler starts several); returns it and its /healthz URL."""
        port = metrics_port or free_port()
        env = {**self.worker_env, "VLQ_WORKER_REDIS_URL": self.redis_url, "VLQ_WORKER_ENGINE": self.engine,
               "VLQ_WORKER_MODEL": self.model, "VLQ_WORKER_METRICS_PORT": str(port)}
        return self.spawn(name, [sys.executable, "-m", "worker"], env), f"http://{LOOPBACK}:{port}/healthz"

    def start_worker(self, timeout_s: float = 900.0) -> None:
        """``python -m worker``; waits until its engine is loaded (a minute or more for vLLM on CPU)."""
        proc, healthz = self.spawn_worker("worker", self.metrics_port)
        self._checked("worker", lambda: wait_http(healthz, proc, "worker", timeout_s))

    def start_gateway(self, timeout_s: float = 60.0) -> None:
        """``python -m gateway`` with auth off and its L2 cache in the stack's temporary folder."""
        env = {"VLQ_GATEWAY_AUTH_ENABLED": "false", "VLQ_GATEWAY_MODEL": self.model, **self.gateway_env,
               "VLQ_GATEWAY_REDIS_URL": self.redis_url, "VLQ_GATEWAY_HOST": LOOPBACK,
               "VLQ_GATEWAY_PORT": str(self.gateway_port), "VLQ_GATEWAY_WORKERS": "1",
               "VLQ_GATEWAY_L2_PATH": str(self.state / "l2.sqlite3")}
        proc = self.spawn("gateway", [sys.executable, "-m", "gateway"], env)
        self._checked("gateway", lambda: wait_http(f"{self.base_url}/readyz", proc, "gateway", timeout_s))

    def log_tail(self, name: str, lines: int = 25) -> str:
        """The last lines a child wrote, for error messages."""
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _checked(self, name: str, wait: Callable[[], None]) -> None:
        try:
            wait()
        except StackError as exc:
            raise StackError(f"{exc}; the end of its log:\n{self.log_tail(name)}") from exc

    def start(self, worker: bool = True) -> LocalStack:
        """Redis, then the worker (if asked), then the gateway."""
        self.start_redis()
        if worker:
            self.start_worker()
        self.start_gateway()
        return self

    def stop(self) -> None:
        """Stop every child by PID in reverse start order (the worker drains on SIGTERM); remove the state."""
        stop_processes(self._procs)
        self._procs.clear()
        shutil.rmtree(self.state, ignore_errors=True)
