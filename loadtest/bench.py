"""``make bench``: vlq's benchmarks, each a ratio or a number against its goal, measured in one run.

    python -m loadtest.bench all            # every benchmark, about 11 minutes on a 2-core machine
    python -m loadtest.bench keys upload    # some of them

keys      cache-key cost of a repeated 1080p upload, next to decode + pHash        (goal <= 1 ms)
upload    cache-hit POST of a 1080p JPEG ÷ a bare FastAPI upload endpoint          (goal >= 0.8)
overhead  submit -> done with the instant engine, gateway and queue-only; jobs/s   (goals p50 <= 3 ms, >= 1500/s)
curve     throughput and p99 at 1, 4, 16, 64 in flight, instant engine              (no goal: the curve)
engine    queue-fed ÷ direct vLLM throughput, tiny model, same engine; worker CPU/req (goals >= 0.95, <= +5 ms)
stream    vLLM engine throughput with streamed deltas ÷ final-only, and first delta vs done (goal >= 0.95)
coldstart a pool at zero: worker process start to its first job done, vLLM tiny model     (no goal)
priority  interactive p95 with 500 Batch API lines queued ÷ idle, instant engine           (goal <= 1.5)
video     video intake (decode + sample + JPEG) per video-second at 720p and 1080p        (goal 1080p <= 250 ms)
fanout    a 10-window video question on 4 one-job-at-a-time workers ÷ on 1, instant engine (goal >= 2.5)
validate  the capacity planner's predicted vs measured P50/P95 wait, same trace, 4 runs, ~6 min (goal MAPE <= 15%)

Output is Markdown; a copy goes to loadtest/reports/bench-<time>.md. Every process a benchmark starts
(redis-server, worker, gateway, engine) listens on loopback only and is stopped by PID when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from loadtest import (
    bench_coldstart,
    bench_curve,
    bench_engine,
    bench_fanout,
    bench_keys,
    bench_overhead,
    bench_priority,
    bench_stream,
    bench_upload,
    bench_video,
    validate,
)
from loadtest.measure import Check, checks_table
from loadtest.stack import ROOT

BENCHMARKS: dict[str, Callable[[], list[Check]]] = {
    "keys": bench_keys.run,
    "upload": bench_upload.run,
    "overhead": bench_overhead.run,
    "curve": bench_curve.run,
    "engine": bench_engine.run,
    "stream": bench_stream.run,
    "coldstart": bench_coldstart.run,
    "priority": bench_priority.run,
    "video": bench_video.run,
    "fanout": bench_fanout.run,
    "validate": validate.run,
}


class Tee(io.TextIOBase):
    """Writes to the terminal and to a report file at once."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)


def machine() -> str:
    """CPU model, cores, memory, Python and the git commit measured."""
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                     platform.processor())
    with open("/proc/meminfo") as meminfo:
        mem_gib = int(meminfo.readline().split()[1]) / 1024 / 1024
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown"
    return (f"{model}, {os.cpu_count()} cores, {mem_gib:.0f} GiB; Python {platform.python_version()}; "
            f"commit {commit}; load average {os.getloadavg()[0]:.1f} at start")


@contextlib.contextmanager
def report_file() -> Iterator[str]:
    reports = ROOT / "loadtest" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}.md"
    with open(path, "w") as copy, contextlib.redirect_stdout(Tee(sys.stdout, copy)):
        yield str(path)


def run(names: list[str]) -> bool:
    """Run the named benchmarks in order; print every goal at the end. True if all goals were met."""
    print(f"# vlq benchmarks, {datetime.datetime.now():%Y-%m-%d %H:%M}\n\n{machine()}")
    checks: list[Check] = []
    for name in names:
        started = time.monotonic()
        try:
            checks += BENCHMARKS[name]()
        except Exception as exc:  # one broken benchmark must not hide the others' results
            print(f"\n**{name} failed**: {type(exc).__name__}: {exc}")
            checks.append(Check(f"{name}: did not run", float("nan"), 0.0, True))
        print(f"\n({name}: {time.monotonic() - started:.0f} s)", flush=True)
    print("\n## Goals\n\n" + checks_table(checks))
    return all(check.met for check in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=["all", *BENCHMARKS])
    opts = parser.parse_args()
    names = list(BENCHMARKS) if "all" in opts.names else opts.names
    with report_file() as path:
        run(names)
        print(f"\nreport: {path}")


if __name__ == "__main__":
    main()
