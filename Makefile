# Set-up and checks. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install -p $(BIN)/python -q -e '.[test]'
	$(BIN)/openmwaa install
	touch $@

demo: install
	$(BIN)/openmwaa demo

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -p no:cacheprovider

# Minutes, not the whole suite: no real Airflow, no PostgreSQL/Redis/RabbitMQ (markers set
# by tests/conftest.py).
test-fast: install
	$(BIN)/python -m pytest -p no:cacheprovider -m "not airflow and not services"

bench: install
	$(BIN)/uv pip install -p $(BIN)/python -q -e '.[test,bench]'
	$(BIN)/python bench/api.py
	$(BIN)/python bench/lifecycle.py
	$(BIN)/python bench/endpoint.py
	$(BIN)/python bench/autoscale.py
	$(BIN)/python bench/isolation.py
