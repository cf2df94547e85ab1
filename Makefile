# flowbus: every target a developer or CI needs. `make help` lists them.
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
PYTEST_FLAGS ?=
# The compatibility tier's own environment: the real prefect 1.4.1 (Python 3.11), pinned.
PREFECT1 := $(TOOLS)/prefect1
PREFECT1_REQUIREMENTS := tests/compat/prefect1-requirements.txt

.DEFAULT_GOAL := help
.PHONY: help install up test lint fmt typecheck unit integration e2e chaos compat compat-env browser browser-env screenshots contracts bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	@touch $@

# The project's own modules are compiled too (only what changed): where the environment sets
# PYTHONDONTWRITEBYTECODE, as these machines do, every process would otherwise compile all
# its imports from source at each start (about 4 s).
install: $(VENV)/.synced ## Create .venv from uv.lock (the only lockfile)
	@$(BIN)/python -m compileall -q libs flowbus_services tests

# Rebuilt from scratch only when the pins change (compile them from the .in file next to them).
$(PREFECT1)/.synced: $(UV) $(PREFECT1_REQUIREMENTS)
	$(UV) venv --clear --python 3.11 $(PREFECT1)
	$(UV) pip install --compile-bytecode --python $(PREFECT1)/bin/python -r $(PREFECT1_REQUIREMENTS)
	@touch $@

compat-env: $(PREFECT1)/.synced ## Create .tools/prefect1 (prefect 1.4.1) from its pinned requirements

# The browser tier drives Debian's Chromium (Playwright's own download does not
# work on these machines). Installed when missing and apt-get can; otherwise the
# tier's tests are skipped with one line that says how to get it.
CHROMIUM ?= /usr/bin/chromium
browser-env: ## Install Chromium for the browser tier (Debian: apt-get install -y chromium)
	@test -x $(CHROMIUM) || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } || \
		echo "make: no Chromium at $(CHROMIUM) and it could not be installed: the browser tier will be skipped"

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

# The chaos tier's own output goes to stderr; stdout is its combined JSON summary
# (tests/helpers/chaos.py), printed whether or not a probe failed.
# CHAOS_SCALE=10 make chaos runs it longer; CHAOS_TOPOLOGY=cluster adds the cluster topology at scale 1.
chaos: install ## Faults against real processes (kill -9, outages, skew, fuzz); prints a JSON summary
	@report=$$(mktemp); \
	CHAOS_REPORT=$$report $(BIN)/pytest tests/chaos $(PYTEST_FLAGS) >&2; code=$$?; \
	if [ -s $$report ]; then cat $$report; fi; rm -f $$report; exit $$code

compat: install $(PREFECT1)/.synced ## Prefect 1.4.1 compatibility tier
	$(BIN)/pytest tests/compat $(PYTEST_FLAGS)

browser: install browser-env ## The web UI in headless Chromium (Playwright)
	$(BIN)/pytest tests/browser $(PYTEST_FLAGS)

screenshots: install browser-env ## Retake docs/images/*.png (the README's screenshots) from the browser tests
	FLOWBUS_UI_SCREENSHOTS=docs/images $(BIN)/pytest tests/browser -k "tutorial_flow_runs" $(PYTEST_FLAGS)

# Most tests wait on processes, the bus and the databases more than they compute, so two
# workers (pytest-xdist, one test module each at a time) nearly halve the wall time on two
# cores. The chaos tier kills processes and measures recovery: it runs alone, after.
TEST_WORKERS ?= 2
test: install lint typecheck $(PREFECT1)/.synced browser-env ## Lint, type-check and run every test tier (compat and browser included)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --ignore tests/chaos $(PYTEST_FLAGS)
	$(BIN)/pytest tests/chaos $(PYTEST_FLAGS)

contracts: install ## Regenerate contracts/ (AsyncAPI and JSON Schemas)
	$(BIN)/python -m flowbus_services.contracts

bench: install ## Benchmarks (JSON on stdout)
	$(BIN)/python -m tests.bench.run

clean: ## Remove the environment and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
