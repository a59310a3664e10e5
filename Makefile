# The README's commands. `make run` and `make test` install what they need on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
# The exact versions the suite runs with (pip-compile from pyproject.toml; `make lock`).
LOCK := requirements.lock
LOCK_FLAGS ?=
# Offline and quiet: the tools' telemetry has nowhere to go.
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1

.DEFAULT_GOAL := help
.PHONY: help setup lock run test lint format bench clean

help: ## Show the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

# Reinstall when pyproject.toml or the lock changes (stale) or the venv is missing. Every
# package comes at the version in $(LOCK): a user gets what CI tested, and a new upstream
# release cannot change a fresh install.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from the pinned build: a range in pyproject would otherwise pull a CUDA wheel.
	$(BIN)/pip install -q -c $(LOCK) $(TORCH)
	$(BIN)/pip install -q -c $(LOCK) -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the project from requirements.lock (torch first)

# pip-compile keeps the pins that still satisfy pyproject.toml; LOCK_FLAGS=--upgrade moves every
# package to the newest release pyproject.toml allows. torch is locked without its local build
# label (+cpu here), so the same lock installs the CPU or the CUDA build.
lock: ## Refresh requirements.lock from pyproject.toml (LOCK_FLAGS=--upgrade for newest releases)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile --quiet $(LOCK_FLAGS) --extra dev --strip-extras --no-emit-index-url \
	  --no-emit-find-links --output-file $(LOCK) pyproject.toml
	sed -i -E 's/^(torch==[^+ ]+)\+[A-Za-z0-9.]+/\1/' $(LOCK)

run: setup ## Run the whole lifecycle on the built-in ai4i data in this repo's workspace
	$(BIN)/mlops init .
	$(BIN)/mlops run

lint: setup ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup lint ## Lint, then every test (PostgreSQL at MLOPS_TEST_POSTGRES_URL)
	$(BIN)/pytest

bench: setup ## Benchmarks; results land in benchmarks/results/ and BENCHMARKS.md
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
	$(BIN)/python benchmarks/collect.py

clean: ## Remove the venv and this workspace's machine state (.mlops)
	rm -rf $(VENV) .mlops
