"""``make loadtest``: start a throwaway local stack, run the locust load test against it headless, stop it.

The stack (redis-server, one worker, the gateway) listens on free loopback ports, never the ``make run``
defaults, so it can run next to a development stack. The worker runs the real vLLM engine with the tiny
model of ``make model`` by default, or the instant test engine with ``LOADTEST_ENGINE=instant``. Locust
reads ``loadtest/locust.conf`` (headless, time-bounded) and writes its HTML report and CSV stats to
``loadtest/reports/``; the services' logs go to ``loadtest/reports/logs/``. Extra arguments go to locust::

    python -m loadtest.run_local --engine instant -- --run-time 30s --stages 10:4:2,28:16:4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from loadtest.stack import ROOT, LocalStack, StackError
from worker.config import DEFAULT_MODEL

REPORTS = ROOT / "loadtest" / "reports"
CONF = ROOT / "loadtest" / "locust.conf"


def _locust_command(base_url: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "locust", "--config", str(CONF), "--host", base_url, *extra]


def _check_model(engine: str, model: str) -> None:
    if engine == "vllm" and not (Path(model) / "config.json").exists() and model == DEFAULT_MODEL:
        sys.exit(f"no model at {model}: run `make model` (or LOADTEST_ENGINE=instant for the instant engine)")


def run(engine: str, extra: list[str], budget_s: float) -> int:
    """Start the stack, run locust to its end (or kill it past ``budget_s``), stop the stack."""
    model = os.environ.get("VLQ_WORKER_MODEL", DEFAULT_MODEL)
    _check_model(engine, model)
    REPORTS.mkdir(parents=True, exist_ok=True)
    with LocalStack(engine=engine, model=model, logdir=REPORTS / "logs") as stack:
        print(f"starting redis, worker ({engine}) and gateway on loopback ...", flush=True)
        started = time.monotonic()
        stack.start()
        print(f"stack up in {time.monotonic() - started:.0f} s at {stack.base_url}; running locust", flush=True)
        try:
            code = subprocess.run(_locust_command(stack.base_url, extra), cwd=ROOT, timeout=budget_s,
                                  check=False).returncode
        except subprocess.TimeoutExpired:
            print(f"locust still running after {budget_s:.0f} s; stopped", file=sys.stderr)
            code = 124
    print(f"reports: {REPORTS}/vlq.html, {REPORTS}/vlq_stats.csv (logs in {REPORTS}/logs/)", flush=True)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["vllm", "instant"], default=os.environ.get("LOADTEST_ENGINE", "vllm"))
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds after which locust is killed whatever its own run time says")
    parser.add_argument("locust_args", nargs="*", help="passed to locust after `--`")
    opts = parser.parse_args()
    try:
        sys.exit(run(opts.engine, opts.locust_args, opts.budget))
    except StackError as exc:
        sys.exit(f"the local stack did not start: {exc}")


if __name__ == "__main__":
    main()
