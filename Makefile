# radforge: `make demo` (end-to-end on embedded defaults) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck clean bench

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

test: $(STAMP) lint
	$(VENV)/bin/pytest -q tests

clean:
	rm -rf $(VENV) .demo
