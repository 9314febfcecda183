# Fusion Prime — every command sets up what it needs, from pinned files only.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
# PostgreSQL 15 server binaries for the bridge's database tests (tests/helpers/fp_postgres.py
# starts a throwaway cluster from them); Debian's `postgresql` package when they are missing.
PG_BINDIR ?= /usr/lib/postgresql/15/bin
PG_STAMP := $(VENV)/.postgresql
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
export BCL_DATA_DIR := $(CURDIR)/.bitcoinlib
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: setup test lint bench demo clean

$(PY_STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.lock
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(PG_STAMP):
	@if [ -x $(PG_BINDIR)/initdb ] && [ -x $(PG_BINDIR)/pg_ctl ] && [ -x $(PG_BINDIR)/postgres ]; then \
		echo "PostgreSQL server binaries: $(PG_BINDIR)"; \
	else \
		echo "PostgreSQL server binaries missing from $(PG_BINDIR): installing Debian's postgresql package"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql && \
		[ -x $(PG_BINDIR)/initdb ] && [ -x $(PG_BINDIR)/pg_ctl ] && [ -x $(PG_BINDIR)/postgres ]; \
	fi
	@mkdir -p $(@D) && touch $@

setup: $(PY_STAMP) $(NPM_STAMP) $(PG_STAMP)

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest -n 2 --dist loadgroup -q

bench: setup
	@$(PY) tests/benchmarks/run.py

demo: setup
	$(PY) -m fusion_prime.bridge.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .bitcoinlib
