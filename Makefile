# flowbus: every target a developer or CI needs. `make help` lists them.
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
PYTEST_FLAGS ?=

.DEFAULT_GOAL := help
.PHONY: help install up test lint fmt typecheck unit integration e2e contracts bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

install: $(VENV)/.synced ## Create .venv from uv.lock (the only lockfile)

up: install ## Start NATS, SQLite and all five services in the foreground (Ctrl-C stops)
	$(BIN)/flowbus up

lint: install ## ruff lint and format check, codespell
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/codespell

fmt: install ## Format the code and apply ruff's safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install ## mypy (strict), over the code and the tests
	$(BIN)/mypy libs flowbus_services tests

unit: install ## Unit tests only (fast, in memory)
	$(BIN)/pytest tests/unit $(PYTEST_FLAGS)

integration: install ## Integration tests (real nats-server, SQLite and PostgreSQL)
	$(BIN)/pytest tests/integration $(PYTEST_FLAGS)

e2e: install ## End-to-end tests (the real processes, driven through the CLI)
	$(BIN)/pytest tests/e2e $(PYTEST_FLAGS)

test: install lint typecheck ## Lint, type-check and run every test tier
	$(BIN)/pytest $(PYTEST_FLAGS)

contracts: install ## Regenerate contracts/ (AsyncAPI and JSON Schemas)
	$(BIN)/python -m flowbus_services.contracts

bench: install ## Benchmarks (JSON on stdout)
	$(BIN)/python -m tests.bench.run

clean: ## Remove the environment and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
