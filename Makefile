# The two commands a newcomer needs: `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
# uv from PATH if present, else a private copy under .bootstrap/ (installed with pip).
UV := $(shell command -v uv 2>/dev/null || echo .bootstrap/bin/uv)
PYTHON := .venv/bin/python
export UV_LINK_MODE ?= copy

.PHONY: help install run infra test test-fast lint format migrate pin clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.bootstrap/bin/uv:
	python3 -m venv .bootstrap
	.bootstrap/bin/pip install --quiet "uv==$(UV_VERSION)"

install: $(UV) ## install every package and tool into .venv
	$(UV) sync --quiet

run: install ## the whole platform on http://127.0.0.1:8000 (Ctrl-C stops everything)
	$(PYTHON) -m common.devstack run

test: install ## every test: unit, API, contract and end-to-end
	$(PYTHON) -m pytest

test-fast: install ## everything but the end-to-end suite
	$(PYTHON) -m pytest -m "not e2e"

lint: install ## ruff and mypy
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	$(UV) run --no-sync mypy libs/common/src services/*/src gateway/src

format: install ## apply ruff's fixes and formatting
	$(UV) run --no-sync ruff check --fix .
	$(UV) run --no-sync ruff format .

migrate: install ## create roles and schemas, run every service's migrations
	$(PYTHON) -m common.devstack migrate

clean: ## remove the virtualenv and local data (the embedded database included)
	rm -rf .venv .bootstrap .data

pin: install ## record the exact resolved versions in pyproject.toml
	PATH="$(dir $(abspath $(UV))):$$PATH" .ci/pin-versions

infra: install ## only Postgres and Redis, migrated, to run one service by hand
	$(PYTHON) -m common.devstack infra
