# pokediff: the two set-up commands (see README.md) and a few conveniences.
#   make pipeline   install, fetch the sprites, run the whole pipeline on a small CPU configuration
#   make test       install, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1

# The small configuration of the main job (an overlay on params.yaml): a tiny U-Net and a few hundred
# steps/samples, so a 2-core CPU finishes the whole pipeline in about 15 minutes. On a GPU, `dvc repro`
# runs params.yaml as is.
SMALL_CONFIG := configs/cpu-small.yaml

.PHONY: install test pipeline lint clean-outputs

$(BIN)/pokediff: pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e ".[dev,bench]"
	touch $(BIN)/pokediff

install: $(BIN)/pokediff

test: install
	$(BIN)/python -m pytest -q --timeout=1200

pipeline: install
	small="$$($(BIN)/python -m pokediff.config --flags $(SMALL_CONFIG))" && \
	eval "$(BIN)/python -m pipelines.flows $$small"

lint: install
	$(BIN)/ruff check src tests benchmarks pipelines

clean-outputs:
	rm -rf outputs
