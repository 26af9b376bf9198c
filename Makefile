# tristage: `make demo` builds the environment and runs the whole DAG; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline/quiet environment defaults live in one place, src/tristage/environment.py (QUIET_ENV): every
# stage, the flows and the tests apply them; DVC's own analytics are off in .dvc/config.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install demo summary test test-all lint test-fast bench serve dag clean-outputs app exp-show mlflow

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first, so nothing below pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m tristage.envcheck --fix
	touch $(STAMP)

demo: install
	$(VENV)/bin/dvc repro
	$(PY) -m tristage.cli results --write  # the README's and docs/results.md's tables, from metrics/
	$(PY) -m tristage.cli summary  # one table; every metric: dvc metrics show --md

summary: install
	$(PY) -m tristage.cli summary

# Test files run in TEST_WORKERS processes (pytest-xdist; a file's tests stay in one process, so its
# module fixtures are built once), in the order tests/conftest.py gives them (longest first): xdist's
# default reorders files by their number of tests. The stages the slow tests start use one thread each.
# `make test` (what CI runs) leaves out the tests marked `long` (whole-DAG runs of minutes that other tests
# cover in part) to stay under 20 min on 2 cores; `make test-all` runs every test.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -m "not long" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-all: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: install
	$(VENV)/bin/ruff check src steps flows tests benchmarks

test-fast: install
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: install
	$(PY) -m benchmarks.run_all

serve: install
	$(PY) -m flows.serve

# The MLflow UI on http://127.0.0.1:$(MLFLOW_PORT), sized for a laptop (one worker, no GenAI job runner: 2
# processes, ~0.5 GiB instead of 15 and ~2.7 GiB); prints the link to the runs with their key figures.
MLFLOW_PORT ?= 5000
mlflow: install
	$(PY) -m flows.mlflow_ui --port $(MLFLOW_PORT)

# The local web demo on http://127.0.0.1:7860 (MODEL=models/stage2 for another folder).
MODEL ?= models/stage3
app: install
	$(PY) -m tristage.synthesis.app --model $(MODEL)

# Your own voice (docs/finetune.md): make finetune DATA=my_voice SPEAKER=me [MODEL=models/stage3] [STEPS=150],
# then make app MODEL=models/me.
.PHONY: finetune
finetune: install
	$(PY) -m tristage.cli finetune --model $(MODEL) --data $(DATA) --speaker $(SPEAKER) --out models/$(SPEAKER) \
		$(if $(STEPS),--steps $(STEPS))

dag: install
	$(VENV)/bin/dvc dag

# `dvc exp show` in 120 columns: the workspace, HEAD and its experiments, a row each, with the columns of
# `tristage compare` and the params each changed (tristage.runs.compare.exp_show). ARGS: --columns NAME,...,
# --all, --format csv|json, and any `dvc exp show` option (-A, -n 3, --rev REV), e.g. ARGS="-n 3".
ARGS ?=
exp-show: install
	$(PY) -c 'import sys; from tristage.runs.compare import exp_show_main; sys.exit(exp_show_main(sys.argv[1:]))' $(ARGS)
