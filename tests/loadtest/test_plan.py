"""Scenario files, recorded traces, the summary and the cheapest-settings search."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loadtest import plan as planner
from loadtest import traces
from loadtest.arrivals import Stages, Times
from loadtest.scenario import chart_values, curve_from_tokens, load

# M/M/c on 1-slot workers with 1 s exponential jobs at 2.5 jobs/s. A target of 100 jobs per replica keeps the HPA
# at minReplicas, so the replicas are the minimum. P95 wait = ln(C / 0.05) / (c - 2.5) by Erlang C: c=4 1.24 s,
# c=5 0.38 s. With a 1.0 s target the cheapest answer is 5 workers.
SEARCH_SCENARIO = """
name: mmc-search
duration_s: 4000
warmup_s: 200
price_per_gpu_hour: 1.0
target: {metric: wait, percentile: 95, seconds: 1.0}
pools:
  - name: p
    work: {dist: exp}
    service: {curve: [[1, 1.0]]}
    values:
      worker: {maxInflight: 1}
      autoscaling: {mode: hpa, minReplicas: 1, maxReplicas: 8, targetUtilization: 100}
    cluster: {scrapeIntervalSeconds: 0}
arrivals:
  - {kind: poisson, rate: 2.5}
search:
  minReplicas: [3, 4, 5, 6]
  maxReplicas: [6, 8]
  seeds: [1, 2]
"""


def test_chart_defaults_reach_the_scaler(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SEARCH_SCENARIO)
    spec = load(path).scenario.pools[0]
    chart = chart_values()
    assert spec.scaler.target == 100  # ceil(maxInflight 1 x targetUtilization 100)
    assert spec.scaler.down.window_s == chart["autoscaling"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    assert spec.scaler.up.policies[0].value == chart["autoscaling"]["behavior"]["scaleUp"]["policies"][0]["value"]
    assert spec.scaler.polling_interval_s == chart["autoscaling"]["keda"]["pollingInterval"]
    assert spec.scaler.scrape_interval_s == 0.0


def test_token_curve_from_its_inputs() -> None:
    tokens = {"prompt_tokens": 256, "template_tokens": 20, "visual_tokens_per_image": 2040, "output_tokens": 16,
              "prefill_tokens_per_s": 15000, "vision_s_per_image": 0.2, "decode_step_s": 0.006,
              "decode_step_per_seq_s": 0.0003}
    curve = curve_from_tokens(tokens, max_num_seqs=16)
    fixed = (256 + 20 + 2040) / 15000 + 0.2
    assert curve.seconds(1) == pytest.approx(fixed + 16 * 0.0063)
    assert curve.seconds(8) == pytest.approx(8 * (fixed + 16 * (0.006 + 0.0024) / 8))
    # Past max_num_seqs jobs wait inside vLLM: latency grows, throughput does not.
    assert curve.throughput(32) == pytest.approx(curve.throughput(16))


def test_trace_formats(tmp_path: Path) -> None:
    csv_file = tmp_path / "arrivals.csv"
    csv_file.write_text("timestamp,class\n100.5,interactive\n100.0,batch\n")
    assert traces.read_csv_times(csv_file) == {"batch": [0.0], "interactive": [0.5]}
    iso = tmp_path / "iso.csv"
    iso.write_text('2026-11-21T07:00:00\n"2026-11-21 07:00:02,500"\n')
    assert traces.read_csv_times(iso) == {"interactive": [0.0, 2.5]}
    history = tmp_path / "vlq_stats_history.csv"
    history.write_text(
        "Timestamp,User Count,Type,Name,Requests/s,Total Request Count\n"
        "1000,2,POST,/api/infer,0,0\n1000,2,,Aggregated,0,0\n"
        "1010,2,POST,/api/infer,1,20\n1010,2,,Aggregated,5,90\n"
        "1030,4,POST,/api/infer,1,80\n")
    assert traces.read_locust_history(history) == ((10.0, 2.0), (20.0, 3.0))
    log = tmp_path / "gateway.log"
    access = '{} INFO vlq.access {{"event":"request","method":"{}","route":"{}","status":{}}}\n'
    log.write_text(access.format("2026-11-21 07:25:01,000", "POST", "/api/infer", 202)
                   + access.format("2026-11-21 07:25:02,000", "POST", "/api/infer", 200)  # a cache hit: no job
                   + access.format("2026-11-21 07:25:03,250", "GET", "/api/result", 202)
                   + access.format("2026-11-21 07:25:04,500", "POST", "/api/infer", 202)
                   + "2026-11-21 07:25:05,000 INFO uvicorn something else\n")
    assert traces.read_gateway_log(log) == [0.0, 3.5]


def test_scenario_arrival_kinds(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("t\n0\n1\n")
    path = tmp_path / "s.yaml"
    path.write_text(SEARCH_SCENARIO.replace("  - {kind: poisson, rate: 2.5}", """  - {kind: poisson, rate: 2.5}
  - {kind: stages, stages: [[10, 1], [5, 2]], repeat: 2, start: 50}
  - {kind: batch, at: 30, count: 3, class: batch}
  - {kind: trace, file: t.csv, start: 7, class: batch}"""))
    arrivals = load(path).scenario.arrivals
    assert arrivals[1] == Stages(((10.0, 1.0), (5.0, 2.0)) * 2, 50.0)
    assert arrivals[2] == Times((30.0, 30.0, 30.0), "batch")
    assert arrivals[3] == Times((7.0, 8.0), "batch")  # a trace without a class column takes the stream's


def test_search_returns_the_cheapest_settings_that_meet_the_target(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SEARCH_SCENARIO)
    plan = load(path)
    found = planner.search(plan)
    best = found["best"]
    assert best is not None and best["meets"]
    assert best["settings"]["minReplicas"] == 5
    assert best["value_s"] <= 1.0
    # Every cheaper candidate that ran missed; the rest were skipped because their floor cost is higher.
    assert all(not t["meets"] for t in found["tried"] if t["cost"] < best["cost"])
    assert any(t["settings"]["minReplicas"] == 4 and t["value_s"] > 1.0 for t in found["tried"])
    assert found["skipped"] > 0
    # The answer holds when simulated again on its own.
    scenario = plan.with_settings("p", best["settings"], 1)
    summary = planner.summarize(planner.simulate(scenario), scenario, plan.price_per_gpu_hour)
    assert summary["pools"]["p"]["latency"]["all"]["wait_s"]["p95"] <= 1.0
    assert summary["gpu_hours"] == pytest.approx(5 * 4000 / 3600, abs=1e-3)


def test_cli_writes_json_and_a_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SEARCH_SCENARIO.replace("duration_s: 4000", "duration_s: 600"))
    out = tmp_path / "out"
    assert planner.main([str(path), "--no-search", "--out", str(out), "--json", str(out / "plan.json"),
                         "--set", "minReplicas=4"]) == 0
    (result,) = json.loads((out / "plan.json").read_text())
    pool = result["summary"]["pools"]["p"]
    assert pool["replicas"]["min"] == 4
    assert math.isclose(pool["little"]["L"], pool["little"]["lambda_W"], rel_tol=0.05)
    assert (out / "mmc-search.png").read_bytes()[:4] == b"\x89PNG"
    assert "mmc-search" in capsys.readouterr().out


def test_percentile_is_linear_between_ranks() -> None:
    assert planner.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert planner.percentile([5.0], 99) == 5.0
    assert math.isnan(planner.percentile([], 95))
