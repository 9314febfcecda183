# Fusion Prime — every command sets up what it needs, from pinned files only.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
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

setup: $(PY_STAMP) $(NPM_STAMP)

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest -n 2 --dist loadgroup -q

bench: setup
	@$(PY) tests/benchmarks/run.py

demo: setup
	$(PY) -m fusion_prime.node.demo

clean:
	rm -rf $(VENV) node_modules .pytest_cache .bitcoinlib
