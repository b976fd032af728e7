"""Scenario files of the capacity planner (``loadtest/scenarios/*.yaml``) read into ``loadtest.sim`` objects.

Every pool starts from the chart's own ``helm/vlq/values.yaml`` (``worker.maxInflight``, ``worker.gpu.count``,
``worker.replicaCount``, ``worker.engine.maxNumSeqs``, ``autoscaling.*``, ``monitoring.serviceMonitor.interval``),
deep-merged with the pool's ``values:`` (same keys as the chart), so a file can paste a release's values.
What the chart does not set is the cluster's (``cluster:``): ``hpaSyncPeriodSeconds`` (15),
``hpaTolerance`` (0.1), ``scrapeIntervalSeconds`` (the ServiceMonitor's interval; 0 reads the queue live).
The service curve is a table (``service.curve``: [[in_flight, seconds_per_job], ...]) or derived from
tokens and an assumed GPU (``service.tokens``, see ``curve_from_tokens``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from loadtest import traces
from loadtest.arrivals import Arrival, Poisson, Stages, Times, Users
from loadtest.autoscale import K8S_SCALE_DOWN, K8S_SCALE_UP, ScalerSpec, rules_from
from loadtest.sim import CLASSES, PoolSpec, Scenario, ServiceCurve, WorkSize

CHART_VALUES = Path(__file__).resolve().parents[1] / "helm" / "vlq" / "values.yaml"
CURVE_POINTS = 64  # in-flight levels a derived curve covers, so a search may raise maxInflight


class ScenarioError(ValueError):
    """A scenario file that cannot be simulated."""


@dataclass(frozen=True)
class Target:
    """The latency to meet: ``percentile`` of ``metric`` (e2e or wait) for one class (None: all) of one pool."""

    seconds: float
    percentile: float = 95.0
    metric: str = "e2e"
    cls: str | None = None
    pool: str | None = None


@dataclass(frozen=True)
class Plan:
    """A scenario file: what to simulate, the price, the latency target and the settings to search."""

    name: str
    description: str
    scenario: Scenario
    price_per_gpu_hour: float
    target: Target | None
    search: Mapping[str, Any]
    pools_raw: tuple[Mapping[str, Any], ...] = field(repr=False)
    chart: Mapping[str, Any] = field(repr=False)

    def with_settings(self, pool: str, settings: Mapping[str, Any], seed: int) -> Scenario:
        """The scenario with one pool's chart values changed (a search candidate) and another seed."""
        pools = tuple(build_pool(raw, self.chart, settings if raw["name"] == pool else None)
                      for raw in self.pools_raw)
        return replace(self.scenario, pools=pools, seed=seed)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, mapping by mapping."""
    merged = copy.deepcopy(dict(base))
    for key, value in (over or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def chart_values(path: Path = CHART_VALUES) -> dict[str, Any]:
    """The chart's default values."""
    values: dict[str, Any] = yaml.safe_load(path.read_text())
    return values


def seconds(text: Any) -> float:
    """Seconds from a number or a Prometheus duration such as ``30s``, ``1m``."""
    raw = str(text).strip()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if raw.endswith(unit):
            return float(raw[: -len(unit)]) * units[unit]
    return float(raw)


def search_values(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Chart values for a search candidate: minReplicas 0 means KEDA's scale to zero (the chart keeps min 1)."""
    if not settings:
        return {}
    auto: dict[str, Any] = {k: settings[k] for k in ("maxReplicas", "targetUtilization", "mode") if k in settings}
    if "minReplicas" in settings:
        low = int(settings["minReplicas"])
        auto.update(minReplicas=max(low, 1), scaleToZero=low == 0)
    worker = {"maxInflight": int(settings["maxInflight"])} if "maxInflight" in settings else {}
    return {"autoscaling": auto, "worker": worker}


def scaler_from(values: Mapping[str, Any], cluster: Mapping[str, Any]) -> ScalerSpec:
    """The autoscaler the chart renders for these values, on a cluster with these controller settings."""
    auto, worker = values["autoscaling"], values["worker"]
    behavior = auto.get("behavior") or {}
    scrape = cluster.get("scrapeIntervalSeconds", values["monitoring"]["serviceMonitor"]["interval"])
    keda = auto.get("keda") or {}
    return ScalerSpec(
        mode=str(auto["mode"]), min_replicas=int(auto["minReplicas"]), max_replicas=int(auto["maxReplicas"]),
        scale_to_zero=bool(auto.get("scaleToZero", False)),
        # The chart's vlq.autoscaling.targetJobsPerWorker: ceil(maxInflight x targetUtilization), at least 1.
        target=max(1, math.ceil(float(worker["maxInflight"]) * float(auto["targetUtilization"]))),
        fixed_replicas=int(worker.get("replicaCount", 1)),
        up=rules_from(behavior.get("scaleUp"), K8S_SCALE_UP),
        down=rules_from(behavior.get("scaleDown"), K8S_SCALE_DOWN),
        sync_period_s=float(cluster.get("hpaSyncPeriodSeconds", 15)), tolerance=float(cluster.get("hpaTolerance", 0.1)),
        polling_interval_s=float(keda.get("pollingInterval", 30)), cooldown_s=float(keda.get("cooldownPeriod", 300)),
        trigger=str(keda.get("trigger", "prometheus")), scrape_interval_s=seconds(scrape))


def curve_from_tokens(tokens: Mapping[str, Any], max_num_seqs: int) -> ServiceCurve:
    """S(n) of a GPU from token counts and assumed rates; vLLM runs at most ``max_num_seqs`` at once.

    With n sequences on the engine, every job costs the GPU its prefill (text and visual tokens at
    ``prefill_tokens_per_s``) and its image encoding, plus its share of the decode steps: each step of
    ``decode_step_s + decode_step_per_seq_s x n`` advances all n by one token. The GPU is never idle while n > 0,
    so one job finishes every per_job(n) seconds and each job takes S(n) = n x per_job(n). The host's CPU work
    per job (image decode, vLLM's processor, the Runner) bounds per_job from below if it cannot overlap.
    """
    prefill = (float(tokens["prompt_tokens"]) + float(tokens.get("template_tokens", 0))
               + float(tokens.get("images", 1)) * float(tokens["visual_tokens_per_image"]))
    fixed = prefill / float(tokens["prefill_tokens_per_s"]) + float(tokens.get("images", 1)) * float(
        tokens.get("vision_s_per_image", 0.0))
    points = []
    for n in range(1, CURVE_POINTS + 1):
        batch = min(n, max_num_seqs)  # beyond max_num_seqs jobs wait inside vLLM: no more throughput
        step = float(tokens["decode_step_s"]) + float(tokens.get("decode_step_per_seq_s", 0.0)) * batch
        per_job = max(fixed + float(tokens["output_tokens"]) * step / batch, float(tokens.get("host_s_per_job", 0.0)))
        points.append((float(n), n * per_job))
    return ServiceCurve(tuple(points))


def _curve(service: Mapping[str, Any], values: Mapping[str, Any]) -> ServiceCurve:
    if "curve" in service:
        return ServiceCurve(tuple((float(n), float(s)) for n, s in service["curve"]))
    if "tokens" in service:
        return curve_from_tokens(service["tokens"], int(values["worker"]["engine"]["maxNumSeqs"]))
    raise ScenarioError("a pool's service needs 'curve' or 'tokens'")


def build_pool(raw: Mapping[str, Any], chart: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> PoolSpec:
    """One pool from its scenario entry, the chart's values and a search candidate's changes."""
    values = deep_merge(deep_merge(chart, raw.get("values")), search_values(settings))
    work = raw.get("work") or {}
    return PoolSpec(
        name=str(raw["name"]), max_inflight=int(values["worker"]["maxInflight"]),
        curve=_curve(raw.get("service") or {}, values), scaler=scaler_from(values, raw.get("cluster") or {}),
        work=WorkSize(str(work.get("dist", "const")), float(work.get("cv", 0.0))),
        cold_start_s=float(raw.get("cold_start_s", 0.0)), gpus_per_worker=int(values["worker"]["gpu"]["count"]))


def _trace(raw: Mapping[str, Any], base: Path, cls: str, pool: str) -> list[Arrival]:
    path = base / str(raw["file"])
    fmt, offset = str(raw.get("format", "csv")), float(raw.get("start", 0.0))
    if fmt == "locust":
        stages = traces.read_locust_history(path, str(raw.get("method", "POST")), str(raw.get("name", "/api/infer")),
                                            float(raw.get("scale", 1.0)))
        return [Stages(stages, offset, cls, pool)]
    by_class = {cls: traces.read_gateway_log(path)} if fmt == "gateway-log" else traces.read_csv_times(path, cls)
    unknown = set(by_class) - set(CLASSES)
    if unknown:
        raise ScenarioError(f"{path}: unknown classes {sorted(unknown)}; known: {', '.join(CLASSES)}")
    return [Times(tuple(offset + t for t in times), name, pool) for name, times in by_class.items()]


def arrivals_from(raws: list[Mapping[str, Any]], base: Path) -> tuple[Arrival, ...]:
    """Arrival streams from a scenario's ``arrivals:`` list (relative trace paths from the file's folder)."""
    arrivals: list[Arrival] = []
    for raw in raws:
        kind, cls, pool = str(raw["kind"]), str(raw.get("class", "interactive")), str(raw.get("pool", ""))
        start, end = float(raw.get("start", 0.0)), raw.get("end")
        if kind == "poisson":
            arrivals.append(Poisson(float(raw["rate"]), start, None if end is None else float(end), cls, pool))
        elif kind == "stages":
            stages = tuple((float(d), float(r)) for d, r in raw["stages"]) * int(raw.get("repeat", 1))
            arrivals.append(Stages(stages, start, cls, pool))
        elif kind == "users":
            think = raw.get("think_s", [0.5, 2.0])
            arrivals.append(Users(int(raw["users"]), (float(think[0]), float(think[1])), float(raw.get("ramp_s", 0.0)),
                                  start, None if end is None else float(end), cls, pool))
        elif kind == "batch":
            arrivals.append(Times((float(raw["at"]),) * int(raw["count"]), cls, pool))
        elif kind == "trace":
            arrivals += _trace(raw, base, cls, pool)
        else:
            raise ScenarioError(f"unknown arrival kind {kind!r}")
    return tuple(arrivals)


def _target(raw: Mapping[str, Any] | None) -> Target | None:
    if not raw:
        return None
    return Target(float(raw["seconds"]), float(raw.get("percentile", 95)), str(raw.get("metric", "e2e")),
                  raw.get("class"), raw.get("pool"))


def load(path: Path, chart: Mapping[str, Any] | None = None) -> Plan:
    """Read a scenario file."""
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    chart = chart if chart is not None else chart_values()
    pools_raw = tuple(raw["pools"])
    scenario = Scenario(
        pools=tuple(build_pool(pool, chart) for pool in pools_raw),
        arrivals=arrivals_from(raw["arrivals"], path.parent), duration_s=float(raw["duration_s"]),
        warmup_s=float(raw.get("warmup_s", 0.0)), drain_s=float(raw.get("drain_s", 3600.0)),
        seed=int(raw.get("seed", 1)), sample_s=float(raw.get("sample_s", 15.0)))
    return Plan(str(raw.get("name", path.stem)), str(raw.get("description", "")).strip(), scenario,
                float(raw.get("price_per_gpu_hour", 0.0)), _target(raw.get("target")), raw.get("search") or {},
                pools_raw, chart)
