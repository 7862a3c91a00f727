# Two set-up commands (see README): `make serve` and `make test`.
# Each creates .venv with Python 3.11, installs the project into it and runs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test test-slow lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes.
$(STAMP)-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP)-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)-base

serve: $(STAMP)-base
	$(BIN)/fengchao serve

lint: $(STAMP)-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)-dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

test-slow: $(STAMP)-dev
	$(BIN)/pytest -m slow

bench: $(STAMP)-dev
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/vendor_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
