# The one entry point for people and CI. `make test` is what .ci/run runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv run test test-fast lint typecheck bench bench-quick fuzz pictures clean

# Stamps record what was installed, so a changed pyproject.toml reinstalls.
$(VENV)/.installed-run: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.installed-test: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

venv: $(VENV)/.installed-test

## Run the bridge on its embedded default config (no broker needed).
run: $(VENV)/.installed-run
	$(BIN)/evbridge serve

## Lint, type-check and run the whole test suite against real brokers.
test: venv lint typecheck
	$(BIN)/pytest

## Unit and contract tests, under a minute (~45 s on 2 busy CPUs): the machine's RabbitMQ and
## NATS, Kafka brokers started by the tests. Leaves out the RabbitMQ failure-contract cases, which
## boot a private RabbitMQ node (~20 s more; `make test` runs them).
test-fast: venv
	$(BIN)/pytest -q tests/unit tests/contract -k "not (test_failure_contract and rabbitmq)"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check bridge

typecheck: venv
	$(BIN)/mypy

bench: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/bench_bus.py

## The performance table's ratios from short runs (about two minutes; asserts nothing).
bench-quick: venv
	$(BIN)/python bench/bench_quick.py

## Fuzz the API (schemathesis on the served OpenAPI document, thousands of cases) and the decoders.
fuzz: venv
	EVBRIDGE_FUZZ_EXAMPLES=1000 $(BIN)/pytest -q -s tests/fuzz

## Redraw the committed pictures: docs/architecture.dot and .svg (needs Graphviz's `dot`) from
## the imports, and docs/dashboard.png from a one-minute run of the bridge (matplotlib).
pictures: venv
	$(BIN)/pip install --quiet -e '.[docs]'
	$(BIN)/python -m tests.docs.architecture
	$(BIN)/python -m tests.docs.dashboard

clean:
	rm -rf $(VENV) build dist *.egg-info
