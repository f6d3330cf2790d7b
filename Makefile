# The two commands the README gives, as targets: `make run` and `make test`.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv

# Same meaning as ${STRONGROOM_HOME:-./strongroom-home}: unset or empty
# falls back to the default.
STRONGROOM_HOME := $(or $(STRONGROOM_HOME),./strongroom-home)
STRONGROOM_DOMAIN := $(or $(STRONGROOM_DOMAIN),example.com)
PYTEST_ARGS ?=

.PHONY: run test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Install once per change of pyproject.toml, so a second `make run` starts
# at once and needs no package index.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	if [ ! -e '$(STRONGROOM_HOME)' ]; then \
	    $(VENV)/bin/strongroom init --home '$(STRONGROOM_HOME)' \
	        --domain '$(STRONGROOM_DOMAIN)'; \
	fi
	$(VENV)/bin/strongroom serve --home '$(STRONGROOM_HOME)'

# pytest's own status fails the target, so "no tests ran" (5) is a failure
# too; make reports it as "Error 5" and exits 2.
test: $(VENV)/.installed
	scripts/install-peers
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Issue #3's sealing, store and memory figures: BENCH_ARGS=--quick for a
# smoke run, BENCH_ARGS="--json PATH" to keep every figure.
.PHONY: bench-vault
bench-vault: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks.vault_bench $(BENCH_ARGS)

# Issue #4's receiver figures (smtp-source into smtp-sink, bare aiosmtpd and
# strongroom serve): BENCH_ARGS=--quick for a smoke run, BENCH_ARGS="--json
# PATH" to keep every figure.
.PHONY: bench-receiver
bench-receiver: $(VENV)/.installed
	scripts/install-peers
	$(VENV)/bin/python -m benchmarks.receiver_bench $(BENCH_ARGS)
# Issue #6's export figures: BENCH_ARGS=--quick for a smoke run,
# BENCH_ARGS="--json PATH" to keep every figure.
.PHONY: bench-export
bench-export: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks.export_bench $(BENCH_ARGS)
# Issue #5's catalogue figures for both engines: BENCH_ARGS=--quick for a
# smoke run, BENCH_ARGS="--json PATH" to keep every figure; the curve with
# Whoosh held at 10k: BENCH_ARGS="--sizes 10000,30000,100000 --limit
# whoosh=10000 --json PATH" (35-50 min here, half of it sealing the corpus).
.PHONY: bench-catalogue
bench-catalogue: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks.catalogue_bench $(BENCH_ARGS)
# Issue #5's new-mail-to-searchable figures while smtp-source loads serve:
# BENCH_ARGS=--quick for a smoke run, BENCH_ARGS="--json PATH" to keep them.
.PHONY: bench-freshness
bench-freshness: $(VENV)/.installed
	scripts/install-peers
	$(VENV)/bin/python -m benchmarks.freshness_bench $(BENCH_ARGS)
# Issue #6's portal load figures (wrk, 20 signed-in users, against the bare
# catalogue): BENCH_ARGS=--quick for a smoke run, BENCH_ARGS="--messages
# 100000 --sealed 2000 --json PATH" for the issue's size (about 30 min here).
.PHONY: bench-portal
bench-portal: $(VENV)/.installed
	scripts/install-peers
	$(VENV)/bin/python -m benchmarks.portal_bench $(BENCH_ARGS)
