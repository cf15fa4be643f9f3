# Two commands on a fresh machine: `make run` and `make test`.
# Needs only Python 3.11+, make and a C compiler (see README: Requirements).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make up`: the project the compose services mount at /workspace.
WORKSPACE_DIR ?= .tmp/workspace
export WORKSPACE_DIR

.PHONY: install run run-broken run-auth test test-fast lint typecheck pytest bench worker flower up down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Examples run on a fresh copy under .tmp/, so the committed files stay pending.
run: install
	rm -rf .tmp/demo && mkdir -p .tmp && cp -R examples/demo .tmp/demo
	$(BIN)/batchq run demo --root .tmp/demo

# Fails on purpose (exit 1) to show the PARTIAL FAILURE report; any other exit is an error.
run-broken: install
	rm -rf .tmp/broken && mkdir -p .tmp && cp -R examples/broken .tmp/broken
	$(BIN)/batchq run broken --root .tmp/broken; status=$$?; \
	  if [ $$status -eq 1 ]; then echo "(exit 1: the broken example failed, as intended)"; \
	  else exit $$status; fi

run-auth: install
	rm -rf .tmp/auth-system && mkdir -p .tmp && cp -R examples/auth-system .tmp/auth-system
	$(BIN)/batchq run auth-system --root .tmp/auth-system

lint: install
	$(BIN)/ruff check batchq tests bench workers
	$(BIN)/ruff format --check batchq tests bench workers
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy batchq

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

# The quick loop while editing (README: Testing): unit tests, the store contract (both
# stores), and the in-process lane (a Celery worker in threads of the test
# process, on the same real redis-server). Worker subprocesses, faults, the browser and
# the slow-marked tests are left to `make test`.
test-fast: install
	$(BIN)/pytest tests/unit tests/contract tests/inprocess -q -m "not slow"

bench: install
	$(BIN)/python -m bench

# A worker and Flower for a Redis you run yourself: set BATCHQ_REDIS_URL first.
worker: install
	$(BIN)/batchq worker

flower: install
	$(BIN)/batchq flower

# docker compose (needs Docker): .env from workers/.env.example with a random Flower
# password, and a copy of examples/auth-system as the default workspace.
.env:
	sed "s/^BATCHQ_FLOWER_PASSWORD=.*/BATCHQ_FLOWER_PASSWORD=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(18))')/" \
	  workers/.env.example > .env
	@echo "wrote .env (Flower user/password inside)"

up: .env
	@if [ "$(WORKSPACE_DIR)" = ".tmp/workspace" ] && [ ! -d .tmp/workspace ]; then \
	  mkdir -p .tmp && cp -R examples/auth-system .tmp/workspace; fi
	docker compose up -d --build

down:
	docker compose down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
	rm -rf .tmp/demo .tmp/broken .tmp/auth-system

# Debian's bubblewrap: agents run in its sandbox (BATCHQ_SANDBOX=auto uses it where it
# works). Needs root and apt; a no-op once bwrap is installed.
.PHONY: sandbox-deps
sandbox-deps:
	@if command -v bwrap >/dev/null 2>&1; then \
		echo "sandbox-deps: $$(command -v bwrap) is installed"; \
	else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y bubblewrap; \
	fi

# Debian's Chromium for tests/integration/test_browser.py (Playwright drives it and never
# downloads a browser of its own). Needs root and apt; a no-op once chromium is installed.
.PHONY: browser-deps
browser-deps:
	@if [ -x /usr/bin/chromium ]; then \
		echo "browser-deps: /usr/bin/chromium is installed"; \
	else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi
