# kiln: `make demo` runs the pipeline on the embedded stack; `make test` runs every test.
# Both create .venv on first use and refresh it whenever pyproject.toml changes.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-stamp
BIN := $(CURDIR)/$(VENV)/bin
# tfmot and multi-worker training need Keras 2 (tf_keras) in every process.
export TF_USE_LEGACY_KERAS := 1
export PATH := $(BIN):$(PATH)
PIP := $(BIN)/pip --disable-pip-version-check -q
# This machine's pip config lists local mirror folders that may not exist; drop those warnings.
QUIET_PIP := grep -v "^WARNING: Location '" || true

.PHONY: demo test lint bench bench-serving bench-compression bench-shipped up down status clean

$(STAMP): pyproject.toml
	@echo "==> installing kiln and its pinned stack into $(VENV) (first time: a few minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -U pip 2>&1 | { $(QUIET_PIP); }
	@$(PIP) install -e '.[dev]' 2>&1 | { $(QUIET_PIP); }
	@touch $@

demo: $(STAMP)
	$(BIN)/kiln demo

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/demo_phases.py

bench-serving: $(STAMP)
	$(BIN)/python bench/serving_bench.py

bench-shipped: $(STAMP)
	$(BIN)/python bench/shipped.py

bench-compression: $(STAMP)
	$(BIN)/python bench/compression.py

up: $(STAMP)
	$(BIN)/kiln up

down: $(STAMP)
	$(BIN)/kiln down

status: $(STAMP)
	$(BIN)/kiln status

clean:
	rm -rf $(VENV) .kiln
