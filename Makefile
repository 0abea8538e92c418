# triggerd: the two entry points are `make run` and `make test` (see README.md).
# Both install what they need on a fresh Debian machine: system packages via apt
# (scripts/install-system-deps.sh) and Python packages into .venv.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test deps system-deps lint typecheck unit bench clean

run: deps
	scripts/demo-env.sh start
	$(BIN)/triggerd serve --config config/triggerd.yaml

test: deps lint typecheck
	$(BIN)/pytest

deps: system-deps $(STAMP)

system-deps:
	scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check triggerd tests bench
	$(BIN)/ruff format --check triggerd tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

bench: deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
