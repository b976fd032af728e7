"""The HPA's formula, tolerance, stabilisation window and policies, and KEDA's activation and cooldown."""

from __future__ import annotations

import pytest

from loadtest.arrivals import Times
from loadtest.autoscale import K8S_SCALE_UP, Hpa, Keda, Policy, Rules, ScalerSpec, hpa_desired
from loadtest.sim import PoolSpec, Scenario, ServiceCurve, WorkSize, simulate

# The chart's behavior (helm/vlq/values.yaml): up 2 pods per 60 s, no window; down 1 pod per 120 s, 300 s window.
CHART_UP = Rules(0.0, "Max", (Policy("Pods", 2, 60.0),))
CHART_DOWN = Rules(300.0, "Max", (Policy("Pods", 1, 120.0),))


def chart_hpa(**changes: object) -> Hpa:
    spec = ScalerSpec(mode="hpa", min_replicas=1, max_replicas=10, target=10, up=CHART_UP, down=CHART_DOWN)
    return Hpa(ScalerSpec(**{**spec.__dict__, **changes}))


def test_hpa_formula_and_tolerance() -> None:
    assert hpa_desired(3, 31, 10, 0.1) == 3  # ratio 1.03: inside the tolerance
    assert hpa_desired(3, 32, 10, 0.1) == 3  # ratio 1.07
    # Ratio 1.1 exactly is 1.1000000000000001 in floating point, outside the band, as in the controller's Go.
    assert hpa_desired(3, 33, 10, 0.1) == 4
    assert hpa_desired(3, 34, 10, 0.1) == 4  # ratio 1.13: ceil(34 / 10)
    assert hpa_desired(4, 36, 10, 0.1) == 4  # ratio 0.90: inside
    assert hpa_desired(4, 35, 10, 0.1) == 4  # ratio 0.875: ceil(3.5) = 4 all the same
    assert hpa_desired(4, 25, 10, 0.1) == 3
    assert hpa_desired(2, 0, 16, 0.1) == 0


def test_scale_up_follows_the_pods_policy_per_period() -> None:
    hpa = chart_hpa()
    assert hpa.reconcile(0.0, 1, 80) == 3  # wants 8; 2 pods per 60 s from 1
    assert hpa.reconcile(15.0, 3, 80) == 3  # +2 already in this period
    assert hpa.reconcile(45.0, 3, 80) == 3
    assert hpa.reconcile(60.0, 3, 80) == 5  # the event at 0 is no longer inside (60 - 60, 60]
    assert hpa.reconcile(120.0, 5, 80) == 7
    assert hpa.reconcile(180.0, 7, 200) == 9
    assert hpa.reconcile(240.0, 9, 200) == 10  # maxReplicas


def test_kubernetes_default_scale_up_allows_double_or_four_pods() -> None:
    hpa = chart_hpa(up=K8S_SCALE_UP)
    assert hpa.reconcile(0.0, 1, 100) == 5  # max(100% of 1 -> 2, 1 + 4 pods) = 5
    assert hpa.reconcile(15.0, 5, 100) == 10  # next period: max(10, 9)


def test_scale_down_waits_out_the_stabilisation_window_then_one_pod_per_period() -> None:
    hpa = chart_hpa()
    assert hpa.reconcile(0.0, 4, 40) == 4
    for t in range(15, 300, 15):  # load gone at 15 s: recommendation 1, but 4 was recommended at 0
        assert hpa.reconcile(float(t), 4, 5) == 4, t
    assert hpa.reconcile(300.0, 4, 5) == 3  # the 4 of t=0 is not inside (300 - 300, 300]: one pod per 120 s
    assert hpa.reconcile(315.0, 3, 5) == 3
    assert hpa.reconcile(405.0, 3, 5) == 3
    assert hpa.reconcile(420.0, 3, 5) == 2  # 120 s after the last removal
    assert hpa.reconcile(540.0, 2, 0) == 1
    assert hpa.reconcile(660.0, 1, 0) == 1  # minReplicas


def test_a_spike_inside_the_window_holds_the_replicas() -> None:
    hpa = chart_hpa()
    assert hpa.reconcile(0.0, 3, 30) == 3
    assert hpa.reconcile(200.0, 3, 10) == 3  # window max is 3
    assert hpa.reconcile(290.0, 3, 28) == 3  # a short spike refreshes the window
    assert hpa.reconcile(400.0, 3, 10) == 3  # 290 is still inside (100, 400]
    assert hpa.reconcile(591.0, 3, 10) == 2


def test_hpa_does_nothing_at_zero_and_clamps_to_min_and_max() -> None:
    hpa = chart_hpa()
    assert hpa.reconcile(0.0, 0, 500) == 0  # KEDA's business
    assert hpa.reconcile(15.0, 12, 500) == 10
    assert chart_hpa(min_replicas=2).reconcile(30.0, 1, 0) == 2


def test_keda_activation_and_cooldown_rules() -> None:
    keda = Keda(ScalerSpec(mode="keda", scale_to_zero=True, cooldown_s=300.0))
    assert keda.poll(0.0, 0, 0) is None  # nothing queued: stays at zero
    assert keda.poll(15.0, 0, 1) == 1  # activation: any job (> activationThreshold 0)
    assert keda.poll(30.0, 1, 3) is None  # active with replicas: the HPA's turn
    assert keda.poll(45.0, 1, 0) is None  # cooling down since 30
    assert keda.poll(330.0, 1, 0) is None  # 30 + 300 is not yet before 330
    assert keda.poll(345.0, 1, 0) == 0
    assert Keda(ScalerSpec(mode="keda", min_replicas=2)).poll(0.0, 0, 1) == 2  # wakes to minReplicaCount


def test_keda_wakes_a_pool_from_zero_and_returns_it_to_zero() -> None:
    scaler = ScalerSpec(mode="keda", scale_to_zero=True, max_replicas=2, target=16, polling_interval_s=15.0,
                        cooldown_s=300.0, scrape_interval_s=30.0)
    pool = PoolSpec("p", 16, ServiceCurve(((1.0, 2.0),)), scaler, WorkSize("const"), cold_start_s=55.0)
    stats = simulate(Scenario((pool,), (Times((100.0,)),), 1200.0, sample_s=15.0))["p"]
    (job,) = stats.jobs
    # Scraped at 120, seen by KEDA's poll at 120, cold start to 175, 2 s of work.
    assert (job.start, job.end) == pytest.approx((175.0, 177.0))
    up = [t for t, replicas, *_ in stats.samples if replicas == 1]
    # Last active at the poll of 165 (the scrape of 150 still held the job); 165 + 300 < 480.
    assert (up[0], up[-1]) == (120.0, 465.0)
    assert stats.gpu_seconds == pytest.approx(480.0 - 120.0)
