# edgerun developer tasks. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8787
# Parallel test workers: one per core by default.
XDIST  ?= auto

.PHONY: run test bench lint fmt install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Serve the demo project on the embedded defaults at http://$(HOST):$(PORT)
run: install
	$(BIN)/edgerun dev examples/demo --host $(HOST) --port $(PORT)

## Install the test extras and run the whole suite
test: install-dev
	$(BIN)/python -m pytest -n $(XDIST) -q

## Benchmarks (not part of `make test`); needs wrk (apt-get install wrk)
bench: install-dev
	$(BIN)/python bench/run.py

lint: install-dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

fmt: install-dev
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
