# kiln: `make demo` runs the pipeline on the embedded stack; `make test` runs every test.
# Both create .venv on first use, installing exactly requirements.lock, and refresh it when the lock (or
# pyproject.toml) changes. `make lock` remakes the lock from pyproject.toml (README: Dependencies).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
# uv runs from its own venv (`make lock`, and installing the lock), so .venv holds only what the lock pins.
UV_VERSION := 0.13.8
LOCK_TOOLS := .lock-tools
UV := $(LOCK_TOOLS)/bin/uv
UV_STAMP := $(LOCK_TOOLS)/.uv-$(UV_VERSION)
BIN := $(CURDIR)/$(VENV)/bin
# tfmot and multi-worker training need Keras 2 (tf_keras) in every process. kiln's own processes get it from
# common/__init__.py; this is for the shell tools run from here (mlflow, python -c) that do not import kiln first.
export TF_USE_LEGACY_KERAS := 1
export PATH := $(BIN):$(PATH)
# This machine's pip config lists local mirror folders that may not exist; drop those warnings.
QUIET_PIP := grep -v "^WARNING: Location '" || true

.PHONY: demo test lint lock bench bench-serving bench-compression bench-shipped bench-data bench-cache bench-tune bench-batch bench-train up down status clean

# pyproject.toml too: kiln's own metadata (entry points, scripts) is installed from it.
# uv installs the lock (its own venv, .lock-tools): it fetches, unpacks and compiles in parallel, under half of pip's time for
# this stack, and `uv pip sync` also removes what an earlier lock pinned and this one does not. --compile-bytecode, as
# pip does by default: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile TensorFlow anew.
$(STAMP): $(LOCK) pyproject.toml | $(UV_STAMP)
	@$(PYTHON) tools/lockfile.py check
	@echo "==> installing kiln and its locked stack into $(VENV) (first time: a minute or two)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(UV) pip sync -q --python $(BIN)/python --require-hashes --compile-bytecode $(LOCK)
# setuptools is locked too; with build isolation uv would fetch whatever release is newest.
	@$(UV) pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	@touch $@

$(UV_STAMP):
	@rm -rf $(LOCK_TOOLS)
	@$(PYTHON) -m venv $(LOCK_TOOLS)
	@$(LOCK_TOOLS)/bin/pip --disable-pip-version-check -q install uv==$(UV_VERSION) 2>&1 | { $(QUIET_PIP); }
	@touch $@

# Keeps every pin pyproject.toml still allows; `make lock UPGRADE=1` moves each to its newest allowed release.
lock: $(UV_STAMP)
	$(PYTHON) tools/lockfile.py compile --uv $(UV) $(if $(UPGRADE),--upgrade)

demo: $(STAMP)
	$(BIN)/kiln demo

# Test files run on TEST_WORKERS processes (pytest-xdist), each file whole on one of them, and the files that share
# the embedded stack or the trained models as one group (tests/xdist_groups.py), so each is built once; groups start
# in the order tests/conftest.py sorts them (longest first), not xdist's (most tests first).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/demo_phases.py

bench-serving: $(STAMP)
	$(BIN)/python bench/serving_bench.py

bench-shipped: $(STAMP)
	$(BIN)/python bench/shipped.py

bench-data: $(STAMP)
	$(BIN)/python bench/data_bench.py --engine

bench-cache: $(STAMP)
	$(BIN)/python bench/cache_bench.py

bench-tune: $(STAMP)
	$(BIN)/python bench/tune_bench.py

bench-batch: $(STAMP)
	$(BIN)/python bench/batch_bench.py

bench-train: $(STAMP)
	$(BIN)/python bench/train_scaling.py

bench-compression: $(STAMP)
	$(BIN)/python bench/compression.py

up: $(STAMP)
	$(BIN)/kiln up

down: $(STAMP)
	$(BIN)/kiln down

status: $(STAMP)
	$(BIN)/kiln status

clean:
	rm -rf $(VENV) $(LOCK_TOOLS) .kiln
