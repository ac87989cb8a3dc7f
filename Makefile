# The one entry point for people and CI. `make test` is what .ci/run runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv run test lint typecheck bench clean

$(BIN)/evbridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/evbridge

## Run the bridge on its embedded default config (no broker needed).
run: venv
	$(BIN)/evbridge serve

## Lint, type-check and run the whole test suite against real brokers.
test: venv lint typecheck
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check bridge

typecheck: venv
	$(BIN)/mypy

bench: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/bench_bus.py

clean:
	rm -rf $(VENV) build dist *.egg-info
