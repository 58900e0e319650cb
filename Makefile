# radforge: `make demo` (end-to-end on embedded defaults) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint clean system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m radforge.demo

# ruff, mypy, import-linter and bandit
lint: $(STAMP)
	$(VENV)/bin/ruff check radforge ingest sharder trainer services tests bench
	@# mypy does not follow setuptools' package-dir mapping: type-check a tree of links laid out as
	@# the installed namespace (radforge/ with each stage folder linked in as its subpackage)
	rm -rf build/typecheck && mkdir -p build/typecheck/radforge
	for p in radforge/*; do ln -s ../../../$$p build/typecheck/radforge/; done
	for s in ingest sharder trainer services; do ln -s ../../../$$s build/typecheck/radforge/$$s; done
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p radforge
	@# the import layers (pyproject's [tool.importlinter]) over the same tree; private names across
	@# stages are checked by tests/test_layers.py
	cd build/typecheck && PYTHONPATH=. ../../$(VENV)/bin/lint-imports --config ../../pyproject.toml --no-logo
	@# bandit with pyproject's [tool.bandit] skip list (each skip justified there)
	$(VENV)/bin/bandit -q -c pyproject.toml -r radforge ingest sharder trainer services

# Debian packages the metrics and dashboard tests use for real: Prometheus (promtool, a scraping
# server) and headless Chromium; shellcheck for the deploy scripts. Installed when missing (CI runs
# as root on a fresh machine). tests/deploy renders Kustomize with `kubectl kustomize` (kustomize
# v5, shipped with the machine image's kubectl; Debian's kubectl is too old): checked here.
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v chromium >/dev/null \
		|| ! command -v shellcheck >/dev/null; then \
		echo "installing Debian packages: prometheus chromium shellcheck"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus chromium shellcheck; \
	fi
	@# PostgreSQL server binaries for tests/services (initdb + postgres on 127.0.0.1; Debian puts them in
	@# /usr/lib/postgresql/<version>/bin, where the fixture looks too)
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing Debian package: postgresql"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	fi
	@kubectl kustomize --help >/dev/null 2>&1 || { echo "installing kubectl (apt)"; apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubectl; } || true
	@kubectl kustomize --help >/dev/null 2>&1 || { echo "tests/deploy needs kubectl with kustomize v5 (kubectl >= 1.27) on PATH" >&2; exit 1; }

test: $(STAMP) system-deps lint
	$(VENV)/bin/pytest -q tests

clean:
	rm -rf $(VENV) .demo
