# Quick start: `make run` (HER2ST-6 benchmark) and `make test` (whole test suite).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
DATA ?= $(GR2ST_DATA)
OUT ?= results/her2st6

.PHONY: run test lint install clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/gr2st benchmark $(if $(DATA),--data $(DATA)) --methods gr2st,ridge,knn,mean,oracle --profile default --out $(OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
