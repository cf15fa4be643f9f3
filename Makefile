# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest bench worker flower up down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo runs on a fresh copy, so the committed example stays pending.
run: install
	rm -rf .tmp/demo && mkdir -p .tmp && cp -R examples/demo .tmp/demo
	$(BIN)/batchq run demo --root .tmp/demo

lint: install
	$(BIN)/ruff check batchq tests bench workers
	$(BIN)/ruff format --check batchq tests bench workers

typecheck: install
	$(BIN)/mypy batchq

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python -m bench

worker: install
	$(BIN)/batchq worker

flower: install
	$(BIN)/batchq flower

up:
	docker compose up -d --build

down:
	docker compose down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
