# edgeai — `make run` serves on 127.0.0.1:5000; `make test` lints and runs every test but
# the slow ones (under 15 min on 2 cores); `make test-slow` runs those (CI runs both).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
WORKERS ?= 2
STAMP := $(VENV)/.installed

.PHONY: install run worker test test-slow test-fast lint bench bench-scaleout clean

install: $(STAMP)

# Re-installs when requirements.txt or setup.cfg change.
$(STAMP): requirements.txt setup.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: install
	$(BIN)/edgeai db upgrade
	$(BIN)/gunicorn -c python:edgeai.gunicorn_config \
		--bind $(HOST):$(PORT) --workers $(WORKERS) --worker-class gthread \
		--threads 4 --timeout 300 --graceful-timeout 30 --no-control-socket wsgi:app

# A worker for a split deployment: set EDGEAI_DATABASE_URL (PostgreSQL) and
# EDGEAI_STORAGE_URL (s3://...) as for the API; see the README's Scale-out section.
CONCURRENCY ?= 1
worker: install
	$(BIN)/edgeai worker --concurrency $(CONCURRENCY)

lint: install
	$(BIN)/ruff check edgeai tests wsgi.py migrations bench
	$(BIN)/python -m mypy
	$(BIN)/python -m tests.check_torch_load edgeai

test: lint
	$(BIN)/python -m pytest -q --durations=15 -m "not slow"

# Model families, 25 concurrent clients, crash/restart, the multi-host cluster, Keras 2
# files, the wheel: minutes each; CI runs them after `make test`.
test-slow: install
	$(BIN)/python -m pytest -q --durations=15 -m slow

# The inner loop: no gunicorn, no slow cases.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not e2e"

bench: install
	$(BIN)/python -m bench

bench-scaleout: install
	$(BIN)/python -m bench.scaleout

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
