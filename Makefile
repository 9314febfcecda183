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
# Debian's docker-compose (v1, Python): tests/node/test_deploy_compose.py validates docker/compose.yaml
# with `docker-compose config` and the Compose specification schema it ships - no engine needed.
COMPOSE_STAMP := $(VENV)/.docker-compose
# Headless Chromium and its WebDriver for the bridge explorer's browser test
# (tests/bridge/test_explorer_browser.py, selenium); Debian's packages when either is missing.
CHROMIUM_STAMP := $(VENV)/.chromium
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

$(CHROMIUM_STAMP):
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "Chromium and chromedriver: /usr/bin"; \
	else \
		echo "chromium or chromedriver missing from /usr/bin: installing Debian's chromium and chromium-driver"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver && \
		[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; \
	fi
	@mkdir -p $(@D) && touch $@

$(COMPOSE_STAMP):
	@if command -v docker-compose >/dev/null; then \
		echo "docker-compose: $$(command -v docker-compose)"; \
	else \
		echo "docker-compose missing: installing Debian's docker-compose package"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose && \
		command -v docker-compose >/dev/null; \
	fi
	@mkdir -p $(@D) && touch $@

setup: $(PY_STAMP) $(NPM_STAMP) $(PG_STAMP) $(CHROMIUM_STAMP) $(COMPOSE_STAMP)

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest -n 2 --dist loadgroup -q --durations=25 $(TEST_ARGS)

bench: setup
	@$(PY) tests/benchmarks/run.py $(BENCH_ARGS)

demo: setup
	$(PY) -m fusion_prime.bridge.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .bitcoinlib
