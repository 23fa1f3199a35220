# Every target installs what it needs first; `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SAMPLE := data/sample
DATA ?=
# Training's OpenMP threads (HistGradientBoosting) sleep rather than spin while they wait:
# on a machine whose cores are busy, spinning made fitting 5x slower than one thread.
TRAIN_ENV := OMP_WAIT_POLICY=$(or $(OMP_WAIT_POLICY),passive)
LINT_PATHS := predictor tests notebooks $(wildcard benchmarks)

.PHONY: install run serve train retrain simulate evaluate bench lint format test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

models/current: | $(STAMP)
	$(BIN)/predictor train --data $(SAMPLE)

run: $(STAMP) models/current  ## the service on a simulated fleet, live
	$(BIN)/predictor demo

serve: $(STAMP)  ## the API only
	$(BIN)/predictor serve

train: $(STAMP)  ## train from the store, or from DATA=path
	$(TRAIN_ENV) $(BIN)/predictor train $(if $(DATA),--data $(DATA))

retrain: $(STAMP)  ## train on the latest window; promote only if no worse
	$(TRAIN_ENV) $(BIN)/predictor retrain $(if $(DATA),--data $(DATA))

simulate: $(STAMP)  ## write a labelled simulated fleet to data/sim
	$(BIN)/predictor simulate --out data/sim

evaluate: $(STAMP)  ## NAB and fleet evaluation -> reports/evaluation.md
	$(BIN)/predictor evaluate

bench: $(STAMP)  ## benchmarks -> reports/bench.json
	$(BIN)/python -m benchmarks.run

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy predictor

format: $(STAMP)
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

test: $(STAMP)  ## the whole suite (what CI runs)
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis reports results data/sim
	rm -f data/*.db data/*.db-wal data/*.db-shm data/*.joblib
	find models -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
