# The two commands: `make up` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch is pinned to the CPU wheel first: an unpinned torch would pull GBs of CUDA.
TORCH  := torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

# Debian's prometheus package: promtool for the rule tests, prometheus for the
# real-Prometheus query test and `llmops up --with-prometheus`; prometheus-pushgateway
# for the continuous-eval metrics (the same test and `llmops up --with-prometheus`).
APT_GET := $(if $(filter 0,$(shell id -u)),apt-get,sudo apt-get)

.PHONY: install prometheus up test test-unit test-integration test-gpu lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

prometheus:
	command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null || \
	  ($(APT_GET) update -q && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -q --no-install-recommends prometheus prometheus-pushgateway)

## start the platform on its embedded defaults (configs/local.yaml); ARGS="--port 9000" etc.
up: $(STAMP)
	$(VENV)/bin/llmops up --config $(or $(CONFIG),configs/local.yaml) --sample-corpus $(ARGS)

## the whole test suite (GPU tests skip without a GPU)
test: $(STAMP) prometheus
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: $(STAMP) prometheus
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP) prometheus
	$(PY) -m pytest -q tests/integration

test-gpu: $(STAMP)
	$(PY) -m pytest -q tests/gpu

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy llmops services pipelines evals monitoring

## benchmarks (not tests): ratios measured side by side; wrk is the load generator
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/retrieval.py
	$(PY) benchmarks/filtered_search.py
	$(PY) benchmarks/embeddings.py
	$(PY) benchmarks/observability.py
	$(PY) benchmarks/evals.py

clean:
	rm -rf $(VENV) .llmops .pytest_cache .mypy_cache .ruff_cache
