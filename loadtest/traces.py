"""Recorded arrivals for the capacity planner, read into arrival times (seconds after the first arrival).

Formats (a scenario's ``kind: trace`` names one with ``format:``):

- ``csv``: one arrival per row. A header names the time column (``timestamp``, ``time``, ``t`` or
  ``arrival``; without a header the first column is the time) and optionally a ``class`` column
  (``interactive`` or ``batch``; default interactive). A time is seconds (epoch or relative, any float) or an
  ISO 8601 date-time (``2026-11-21T07:25:01.5``, or logging's ``2026-11-21 07:25:01,500``).
- ``locust``: Locust's ``<prefix>_stats_history.csv`` (written by ``--csv <prefix>``). Each row holds cumulative
  counts per second; the increase of ``Total Request Count`` between two rows of the chosen ``Type``/``Name``
  becomes a stage of Poisson arrivals at that rate. Per-request rows need ``--csv-full-history``; without it
  only ``Aggregated`` rows exist, which also count vlq's result polls (choose ``name: Aggregated`` and a
  ``scale``, e.g. the share of requests that are submits that miss the cache).
- ``gateway-log``: the gateway's access log (``logging``'s ``asctime`` then the ``vlq.access`` JSON line): each
  ``POST /api/infer`` answered ``202`` queued one job (a ``200`` was a cache hit and never reached a worker).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from datetime import UTC, datetime
from pathlib import Path

TIME_COLUMNS = ("timestamp", "time", "t", "arrival")


def parse_time(text: str) -> float:
    """Seconds from a float or an ISO 8601 date-time (naive ones are taken as UTC)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.replace(",", "."))
    # Only differences matter, so any fixed zone does for naive times.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _relative(rows: list[tuple[float, str]]) -> dict[str, list[float]]:
    if not rows:
        return {}
    first = min(at for at, _ in rows)
    by_class: dict[str, list[float]] = {}
    for at, cls in sorted(rows):
        by_class.setdefault(cls, []).append(at - first)
    return by_class


def read_csv_times(path: Path, default_cls: str = "interactive") -> dict[str, list[float]]:
    """Arrival times by class from a CSV of timestamps (``default_cls`` where it has no class column)."""
    with path.open(newline="") as handle:
        lines = [row for row in csv.reader(handle) if row and row[0].strip()]
    if not lines:
        return {}
    header = [cell.strip().lower() for cell in lines[0]]
    column = next((header.index(name) for name in TIME_COLUMNS if name in header), None)
    cls_column = header.index("class") if "class" in header else None
    body = lines[1:] if column is not None else lines
    column = column or 0
    rows = [(parse_time(row[column]), row[cls_column].strip() if cls_column is not None else default_cls)
            for row in body]
    return _relative(rows)


def read_locust_history(path: Path, method: str = "POST", name: str = "/api/infer",
                        scale: float = 1.0) -> tuple[tuple[float, float], ...]:
    """(duration_s, rate) stages from Locust's stats history: the request count's growth per interval."""
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle)
                if row.get("Name") == name and (name == "Aggregated" or row.get("Type") == method)]
    points = sorted((float(row["Timestamp"]), float(row["Total Request Count"])) for row in rows)
    stages = []
    for (t0, n0), (t1, n1) in itertools.pairwise(points):
        if t1 > t0:
            stages.append((t1 - t0, max(n1 - n0, 0.0) * scale / (t1 - t0)))
    return tuple(stages)


def _log_time(line: str) -> float | None:
    # logging's default asctime is the first two words: "2026-11-21 07:25:01,123".
    words = line.split(" ", 2)
    if len(words) < 3:
        return None
    try:
        return parse_time(f"{words[0]} {words[1]}")
    except ValueError:
        return None


def read_gateway_log(path: Path) -> list[float]:
    """Times at which the gateway queued a job (POST /api/infer answered 202), from its access log."""
    times = []
    for line in path.read_text(errors="replace").splitlines():
        start = line.find("{")
        if "vlq.access" not in line or start < 0:
            continue
        try:
            entry = json.loads(line[start:])
        except ValueError:
            continue
        if entry.get("route") == "/api/infer" and entry.get("method") == "POST" and entry.get("status") == 202:
            at = _log_time(line)
            if at is not None and math.isfinite(at):
                times.append(at)
    return _relative([(at, "interactive") for at in times]).get("interactive", [])
