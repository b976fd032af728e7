"""The workers' autoscalers as Kubernetes and KEDA run them, for the capacity planner (``loadtest.plan``).

Both chart modes end in an HPA on one number per pool, jobs held = queued + running (``autoscaling.keda.trigger:
redis`` sees queued only). What is modelled, and where the behaviour comes from (copied as behaviour, not code):

- HPA (kube-controller-manager, ``pkg/controller/podautoscaler``): every sync period (15 s,
  ``--horizontal-pod-autoscaler-sync-period``) ``GetExternalPerPodMetricReplicas``: usage ratio
  = metric / (target x current); inside the tolerance (0.1) nothing changes, else desired = ceil(metric / target).
  Then ``stabilizeRecommendationWithBehaviors``: the lowest recommendation of the scale-up window and the highest
  of the scale-down window bound the current count. Then ``convertDesiredReplicasWithBehaviorRate``: each policy
  allows ``value`` pods (or percent) per ``periodSeconds`` counted from the scale events of that period, chosen by
  ``selectPolicy``, and min/max replicas. An HPA does nothing while its target has 0 replicas.
- KEDA (``pkg/scaling/executor/scale_scaledobjects.go``, ``RequestScale``): every ``pollingInterval`` the trigger
  is active when its value > ``activationThreshold``. Active at 0 replicas: scale to max(1, minReplicaCount).
  Inactive with minReplicaCount 0: scale to 0 once ``lastActiveTime + cooldownPeriod`` has passed. Active at
  > 0 replicas: only ``lastActiveTime`` moves. Between 1 and N the HPA that KEDA creates does the work, with
  minReplicas max(1, minReplicaCount).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol

import simpy


@dataclass(frozen=True)
class Policy:
    """One HPA scaling policy: at most ``value`` pods (``Pods``) or percent (``Percent``) per ``period_s``."""

    kind: str
    value: int
    period_s: float


@dataclass(frozen=True)
class Rules:
    """HPA scaling rules for one direction (``behavior.scaleUp`` or ``behavior.scaleDown``)."""

    window_s: float
    select: str = "Max"
    policies: tuple[Policy, ...] = ()


# Kubernetes' defaults for a behavior field left out (autoscaling/v2 SetDefaults_HorizontalPodAutoscalerBehavior).
K8S_SCALE_UP = Rules(0.0, "Max", (Policy("Percent", 100, 15.0), Policy("Pods", 4, 15.0)))
K8S_SCALE_DOWN = Rules(300.0, "Max", (Policy("Percent", 100, 15.0),))


def rules_from(raw: dict[str, Any] | None, default: Rules) -> Rules:
    """Rules from a chart ``behavior.scaleUp``/``scaleDown`` mapping; each missing field takes Kubernetes' default."""
    raw = raw or {}
    policies = tuple(Policy(str(p["type"]), int(p["value"]), float(p["periodSeconds"]))
                     for p in raw.get("policies") or ())
    return Rules(float(raw.get("stabilizationWindowSeconds", default.window_s)),
                 str(raw.get("selectPolicy", default.select)), policies or default.policies)


@dataclass(frozen=True)
class ScalerSpec:
    """One pool's autoscaler: the chart's ``autoscaling`` values plus the cluster's controller settings."""

    mode: str = "none"
    min_replicas: int = 1
    max_replicas: int = 4
    scale_to_zero: bool = False
    target: int = 16
    fixed_replicas: int = 1
    up: Rules = K8S_SCALE_UP
    down: Rules = K8S_SCALE_DOWN
    sync_period_s: float = 15.0
    tolerance: float = 0.1
    polling_interval_s: float = 15.0
    cooldown_s: float = 300.0
    activation_threshold: float = 0.0
    trigger: str = "prometheus"
    scrape_interval_s: float = 30.0

    @property
    def keda_min(self) -> int:
        """minReplicaCount of the ScaledObject (0 with scaleToZero, as the chart renders it)."""
        return 0 if self.scale_to_zero else self.min_replicas

    @property
    def hpa_min(self) -> int:
        """minReplicas of the HPA: KEDA never lets its HPA go below 1."""
        return max(1, self.keda_min) if self.mode == "keda" else self.min_replicas

    @property
    def initial_replicas(self) -> int:
        """Replicas at the start of a simulation."""
        return self.fixed_replicas if self.mode == "none" else self.keda_min if self.mode == "keda" else self.hpa_min


def hpa_desired(current: int, metric: float, target: float, tolerance: float) -> int:
    """Replicas an External AverageValue metric asks for (replica_calculator.GetExternalPerPodMetricReplicas)."""
    ratio = metric / (target * current)
    if abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(metric / target)


def _changes_since(events: list[tuple[float, int]], cutoff: float) -> int:
    return sum(change for when, change in events if when > cutoff)


class Hpa:
    """The HPA controller's state for one target: recent recommendations and scale events."""

    def __init__(self, spec: ScalerSpec) -> None:
        self.spec = spec
        self.min_replicas = spec.hpa_min
        self.max_replicas = spec.max_replicas
        self.recommendations: list[tuple[float, int]] = []
        self.ups: list[tuple[float, int]] = []
        self.downs: list[tuple[float, int]] = []

    def reconcile(self, now: float, current: int, metric: float) -> int:
        """The replica count one sync sets, given the current count and the metric it reads."""
        if current == 0:
            return 0  # scaling is disabled at zero replicas; KEDA owns 0 <-> 1
        if current > self.max_replicas:
            desired = self.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        else:
            raw = hpa_desired(current, metric, self.spec.target, self.spec.tolerance)
            desired = self._rate_limited(now, current, self._stabilized(now, current, raw))
        self._record_scale(now, current, desired)
        return desired

    def _stabilized(self, now: float, current: int, raw: int) -> int:
        up_cutoff, down_cutoff = now - self.spec.up.window_s, now - self.spec.down.window_s
        up, down = raw, raw
        for when, value in self.recommendations:
            if when > up_cutoff:
                up = min(up, value)
            if when > down_cutoff:
                down = max(down, value)
        # A sample older than both windows never counts again (the controller reuses its slot).
        oldest = min(up_cutoff, down_cutoff)
        self.recommendations = [(when, value) for when, value in self.recommendations if when >= oldest]
        self.recommendations.append((now, raw))
        return min(max(current, up), down)

    def _rate_limited(self, now: float, current: int, desired: int) -> int:
        if desired > current:
            limit = max(self._limit(now, current, self.spec.up, up=True), current)
            return min(desired, self.max_replicas, limit)
        if desired < current:
            limit = min(self._limit(now, current, self.spec.down, up=False), current)
            return max(desired, self.min_replicas, limit)
        return desired

    def _limit(self, now: float, current: int, rules: Rules, up: bool) -> int:
        """calculateScaleUpLimitWithScalingRules / calculateScaleDownLimitWithBehaviors."""
        if rules.select == "Disabled":
            return current
        proposals = []
        for policy in rules.policies:
            cutoff = now - policy.period_s
            start = current - _changes_since(self.ups, cutoff) + _changes_since(self.downs, cutoff)
            proposals.append(_proposal(start, policy, up))
        # For scale-up Max picks the largest count; for scale-down Max picks the largest change (smallest count).
        largest = (rules.select == "Max") == up
        return max(proposals) if largest else min(proposals)

    def _record_scale(self, now: float, current: int, desired: int) -> None:
        if desired == current:
            return
        longest = max((p.period_s for p in (*self.spec.up.policies, *self.spec.down.policies)), default=0.0)
        events = self.ups if desired > current else self.downs
        events.append((now, abs(desired - current)))
        self.ups = [e for e in self.ups if e[0] >= now - longest]
        self.downs = [e for e in self.downs if e[0] >= now - longest]


def _proposal(start: int, policy: Policy, up: bool) -> int:
    if policy.kind == "Pods":
        return start + policy.value if up else start - policy.value
    factor = policy.value / 100
    # Rounded up when growing, or a small deployment could never grow; truncated when shrinking.
    return math.ceil(start * (1 + factor)) if up else int(start * (1 - factor))


class Keda:
    """KEDA's own loop for one ScaledObject: activation 0 -> N and cooldown N -> 0."""

    def __init__(self, spec: ScalerSpec) -> None:
        self.spec = spec
        self.last_active: float | None = None

    def poll(self, now: float, current: int, metric: float) -> int | None:
        """The replica count KEDA sets at this poll, or None when it leaves the target to the HPA."""
        active = metric > self.spec.activation_threshold
        floor = self.spec.keda_min
        if current == 0 and active:
            self.last_active = now
            return max(floor, 1)
        if not active and current > 0 and floor == 0:
            # No recorded activity (scaled outside KEDA) means no cooldown to wait for.
            if self.last_active is None or self.last_active + self.spec.cooldown_s < now:
                return 0
            return None
        if not active and current < floor:
            return floor
        if active:
            self.last_active = now
        return None


class Scalable(Protocol):
    """What the control loops need of a pool (``loadtest.sim.Pool``)."""

    @property
    def replicas(self) -> int:
        """The Deployment's replicas (pods starting or ready; not those terminating)."""
        ...

    def observed_metric(self, trigger: str) -> float:
        """The metric as the autoscaler reads it (through Prometheus, or from Redis for KEDA's redis trigger)."""
        ...

    def scale_to(self, replicas: int) -> None:
        """Set the Deployment's replicas."""
        ...


def _hpa_loop(env: simpy.Environment, pool: Scalable, hpa: Hpa) -> Generator[simpy.Event, Any, None]:
    # The HPA reads KEDA's metrics server (or prometheus-adapter), which asks Prometheus: same metric.
    while True:
        current = pool.replicas
        desired = hpa.reconcile(env.now, current, pool.observed_metric("prometheus"))
        if desired != current:
            pool.scale_to(desired)
        yield env.timeout(hpa.spec.sync_period_s)


def _keda_loop(env: simpy.Environment, pool: Scalable, keda: Keda) -> Generator[simpy.Event, Any, None]:
    while True:
        replicas = keda.poll(env.now, pool.replicas, pool.observed_metric(keda.spec.trigger))
        if replicas is not None and replicas != pool.replicas:
            pool.scale_to(replicas)
        yield env.timeout(keda.spec.polling_interval_s)


def start(env: simpy.Environment, pool: Scalable, spec: ScalerSpec) -> None:
    """Start the control loops of ``spec.mode`` on ``pool`` (none: a fixed count, nothing runs)."""
    if spec.mode == "keda":
        env.process(_keda_loop(env, pool, Keda(spec)))
    if spec.mode in ("keda", "hpa"):
        env.process(_hpa_loop(env, pool, Hpa(spec)))
