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

# llama-cpp-python (the embedded model) is source-only on PyPI, takes about 5 minutes to
# compile, and its default -march=native build crashes on some CPUs.  It is built once per
# machine with portable flags into a wheel cache outside the work tree, keyed by version and
# flags, and installed from there (docs/local-models.md).
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS  := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
WHEEL_CACHE       ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/fengchao-chains/wheels
LLAMA_WHEEL_DIR   := $(WHEEL_CACHE)/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(shell printf '%s' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)

$(LLAMA_WHEEL_DIR)/.built: | $(BIN)/python
	@echo "building llama-cpp-python $(LLAMA_CPP_VERSION) (about 5 minutes, once per machine)" >&2
	rm -rf $(LLAMA_WHEEL_DIR).partial
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir \
		-w $(LLAMA_WHEEL_DIR).partial llama-cpp-python==$(LLAMA_CPP_VERSION)
	rm -rf $(LLAMA_WHEEL_DIR) && mv $(LLAMA_WHEEL_DIR).partial $(LLAMA_WHEEL_DIR)
	touch $@

# Re-install whenever pyproject.toml changes.  The cached llama.cpp wheel goes in first, so
# the `local` extra finds it installed and pip never compiles it with default flags.
$(STAMP)-base: pyproject.toml $(LLAMA_WHEEL_DIR)/.built | $(BIN)/python
	$(BIN)/pip install --quiet $(LLAMA_WHEEL_DIR)/*.whl
	$(BIN)/pip install --quiet -e '.[local]'
	touch $@

$(STAMP)-dev: pyproject.toml $(LLAMA_WHEEL_DIR)/.built | $(BIN)/python
	$(BIN)/pip install --quiet $(LLAMA_WHEEL_DIR)/*.whl
	$(BIN)/pip install --quiet -e '.[dev,local]'
	touch $@ $(STAMP)-base

serve: $(STAMP)-base
	$(BIN)/fengchao serve

lint: $(STAMP)-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)-dev
	$(BIN)/mypy

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file per worker at a time:
# each worker has its own embedded PostgreSQL.  `make test TEST_WORKERS=0` runs it in one.
TEST_WORKERS ?= 2

test: lint typecheck
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)-dev
	$(BIN)/pytest -m slow

# The ingestion benchmark compares against LlamaIndex and langchain-postgres: the `bench` extra.
$(STAMP)-bench: pyproject.toml $(STAMP)-dev
	$(BIN)/pip install --quiet -e '.[dev,local,bench]'
	touch $@

bench: $(STAMP)-bench
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/vendor_overhead.py
	$(BIN)/python bench/local_model.py
	$(BIN)/python bench/kb_query.py
	$(BIN)/python bench/kb_quality.py
	$(BIN)/python bench/kb_ingest.py --docs 500
	$(BIN)/python bench/kb_ingest.py --docs 2000 --model hash
	$(BIN)/python bench/kb_ingest_memory.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
