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
	$(PY) -m services.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check ingest sharder trainer services tests bench
	$(VENV)/bin/mypy ingest sharder trainer services

# Debian packages the metrics and dashboard tests use for real: Prometheus (promtool, a scraping
# server) and headless Chromium. Installed when missing (CI runs as root on a fresh machine).
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v chromium >/dev/null; then \
		echo "installing Debian packages: prometheus chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus chromium; \
	fi

test: $(STAMP) system-deps lint
	$(VENV)/bin/pytest -q tests

clean:
	rm -rf $(VENV) .demo
