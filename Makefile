# driftloop: every action is one command; README, CI and people run the same ones.
# `make help` lists them.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DL := $(VENV)/bin/driftloop
export GX_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.DEFAULT_GOAL := help
.PHONY: help install browser demo test lint format up down status bench soak clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv and install driftloop with the pins of constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: install ## Run the main job on embedded defaults: synthetic data, local Ray, local Prefect
	$(DL) demo

# The Prefect UI test drives Debian's Chromium (Playwright's own browser download needs the internet)
browser: ## Install Debian's chromium for the browser test, unless one is on PATH (apt-get)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

test: install browser lint ## Run lint, types and the whole test suite (real Ray, Prefect server, HTTP, a browser)
	$(PY) -m pytest --durations=15

lint: install ## ruff lint and format check, mypy (strict), the import layers (lint-imports)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

up: install ## Start the local stack: Prefect server + UI on :4200, Ray head on 127.0.0.1
	$(DL) up

down: install ## Stop what `make up` started, and only that
	$(DL) down

status: install ## Show what runs and where
	$(DL) status

# A failed benchmark does not stop the others; the table says "not run" or shows its last results.
bench: install ## Run every benchmark under bench/, then write their table to bench/RESULTS.md
	@failed=; for script in bench/bench_*.py; do echo "== $$script"; \
		$(PY) $$script || failed="$$failed $$script"; done; \
	$(PY) bench/report.py; \
	if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

soak: install ## A 10-minute chaos soak: kills while traffic flows; every answer and label kept
	$(PY) bench/soak.py --minutes 10

# `down` first: .driftloop/run/stack.json is how it finds what `up` started, and the venv runs it.
clean: ## Stop the local stack, then remove the venv, caches and local state (.driftloop)
	-@if [ -x $(DL) ]; then $(DL) down; fi
	rm -rf $(VENV) .driftloop .pytest_cache .mypy_cache .ruff_cache
