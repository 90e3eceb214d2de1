# labctl — the two commands at the top of the README are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LABCTL := $(BIN)/labctl
PYTEST_ARGS ?=
# Components the test suite needs: the sim control plane always; the real node where the local provider can run.
TOOLBOX_GROUPS ?= $(shell if [ "$$(uname -s)" = Linux ] && [ "$$(id -u)" = 0 ]; then echo local; else echo sim; fi)
# The tests run every lab on the real node too: Traefik (API gateway lab) and Jaeger (observability lab) with it.
TEST_TOOLBOX_GROUPS ?= $(if $(filter local,$(TOOLBOX_GROUPS)),$(TOOLBOX_GROUPS) traefik jaeger,$(TOOLBOX_GROUPS))

.PHONY: run test unit bench venv toolbox system-deps lint clean help

help:  ## this list
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

run: venv system-deps  ## install, bring up a cluster on the best provider, start the next lab
	$(LABCTL) toolbox install $(TOOLBOX_GROUPS)
	$(LABCTL) up
	$(LABCTL) start

test: venv system-deps  ## unit tests and cluster tests against a real API server
	$(LABCTL) toolbox install $(TEST_TOOLBOX_GROUPS)
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv  ## unit tests only (no cluster)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

bench: venv  ## benchmarks against baselines measured in the same run
	$(LABCTL) toolbox install $(TOOLBOX_GROUPS)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/operator_bench.py
	$(BIN)/python bench/local_bench.py

venv: $(BIN)/labctl

$(BIN)/labctl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

system-deps:  ## Debian packages: the local provider (runc, CNI plugins, iptables, ipset, conntrack, debootstrap); the labs' servers the tests start (Redis, PostgreSQL 15)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in runc containernetworking-plugins iptables conntrack ipset debootstrap redis-server postgresql-15; do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; fi; \
	else echo "skipping Debian packages (needs root and apt); \`labctl doctor\` says what the local provider lacks"; fi

toolbox: venv  ## build or download the pinned binaries
	$(LABCTL) toolbox install $(TOOLBOX_GROUPS)

clean:  ## remove the virtual environment (the toolbox cache stays: `labctl toolbox prune`)
	rm -rf $(VENV) .pytest_cache
