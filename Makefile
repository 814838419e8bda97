# Herald developer entry points. Everything runs from the project's own .venv.
#   make run    Temporal dev server + worker + API in the foreground (Ctrl-C stops all),
#               plus the broker consumer (python -m ingest) when HERALD_BROKER_URL is set
#   make test   lint, then the suite on SQLite and on PostgreSQL, side by side
#   make lint   ruff + mypy
#   make bench  load benchmark (bench/)
#   make clean  remove local state (.herald/)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# PostgreSQL run of the suite; trust auth on 127.0.0.1 (the `test` database must exist).
PG_TEST_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.DEFAULT_GOAL := help
.PHONY: help install run test test-sqlite test-postgres lint bench clean

help:
	@sed -n 's/^#   //p' Makefile

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/run.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .

# pytest exits 5 when it collects no tests; that is not a failure here.
test-sqlite: $(STAMP)
	@echo "== tests on SQLite =="
	$(BIN)/pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-postgres: $(STAMP)
	@echo "== tests on PostgreSQL ($(PG_TEST_URL)) =="
	HERALD_TEST_DATABASE_URL='$(PG_TEST_URL)' $(BIN)/pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The two passes run side by side (each has its own Temporal dev server, database and
# fake providers); -Otarget prints each pass's output whole when it ends.
test: $(STAMP)
	$(MAKE) lint
	$(MAKE) -j2 -Otarget test-sqlite test-postgres

bench: $(STAMP)
	@if [ -d bench ]; then $(BIN)/python -m bench; else echo "make bench: bench/ does not exist yet"; fi

clean:
	rm -rf .herald
