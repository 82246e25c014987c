# Every target sets up .venv first (idempotent), so `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup run data test test-fast lint format bench push pull clean

setup: $(VENV)/.installed

# torch first, from the local CPU wheel: an unpinned torch pulls a multi-GB CUDA build (STACK.md).
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e ".[dev]"
	touch $@

# The main job on the embedded default (synthetic feed): the `ember-pipeline` Prefect flow (DVC stages data ->
# features -> Feast registry -> retrieval -> index -> ranker, then the online store loaded incrementally), one read
# through the feature hot path, then `ember serve` started, one POST /recommend over HTTP, and the server stopped.
run: setup
	ember run
	ember features show --user 1
	python -m serving.smoke --user 1 --k 10
	ember lineage

# Every DVC stage, the real-data imports included (they read ../shared/data).
data: setup
	dvc repro

test: setup
	pytest -q

test-fast: setup
	pytest -q -m "not slow"

lint: setup
	ruff check .
	ruff format --check .
	mypy

format: setup
	ruff format .
	ruff check --fix .

bench: setup
	python -m bench.run

# The default remote is a directory beside the checkout; EMBER_DVC_REMOTE (e.g. s3://bucket/ember) overrides it.
push: setup
	@if [ -n "$$EMBER_DVC_REMOTE" ]; then dvc remote add -f --local env "$$EMBER_DVC_REMOTE" && dvc push -r env; \
	else dvc push; fi

pull: setup
	@if [ -n "$$EMBER_DVC_REMOTE" ]; then dvc remote add -f --local env "$$EMBER_DVC_REMOTE" && dvc pull -r env; \
	else dvc pull; fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
