# The README's commands. `make run` and `make test` install what they need on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
# Offline and quiet: the tools' telemetry has nowhere to go.
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1

.DEFAULT_GOAL := help
.PHONY: help setup run test lint format bench clean

help: ## Show the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

# Reinstall when pyproject.toml changes (stale) or the venv is missing.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from the pinned build: a range in pyproject would otherwise pull a CUDA wheel.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the project (torch==2.13.0 first)

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
