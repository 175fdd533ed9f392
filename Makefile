# Quick start: `make run` (HER2ST-6 benchmark) and `make test` (whole test suite).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# torch==2.13.0 (CPU) for development and CI only; the package asks for torch>=2.4,<3.
CONSTRAINTS := constraints/dev.txt
DATA ?= $(GR2ST_DATA)
# Sections of `make run`: empty = the six imaged ones (B4, C2-C6); `all` = all 36.
SECTIONS ?=
OUT ?= results/her2st6

.PHONY: run test test-fast lint docs install clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Without DATA: ../shared/data/her2st or data/her2st when they hold the sections, else
# the sections are downloaded into data/her2st (checked, resumable) first.
# Features: EfficientNet-Lite0 averaged over the 8 flips/rotations of each patch. Every
# method may be fitted on training expression aligned per section (each gene moved to the
# pooled level and spread) and its predictions smoothed over each spot's 6 nearest spots;
# these, GR2ST's retrieval bank and its number of models are chosen per method and fold
# by leave-one-section-out on the fold's training sections (two inner folds), never on
# the held-out section, and recorded in results.json.
RUN_OPTIONS := --tta 8 --grid smooth.weight=0,0.25,0.5,0.75 --grid expression.align=none,standardize --grid gr2st:predict.bank=both,images,spots --grid gr2st:train.ensemble=1,3 --select inner --inner-folds 2
run: $(STAMP)
	$(VENV)/bin/gr2st benchmark --data $(or $(DATA),auto) $(if $(SECTIONS),--sections $(SECTIONS)) --methods gr2st,ridge,knn,mean,oracle --profile default $(RUN_OPTIONS) --out $(OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 -q

# Everything but the tests marked slow (full trainings, real data, CLI end to end).
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts docs
	$(VENV)/bin/ruff format --check src tests benchmarks scripts docs
	$(VENV)/bin/mypy

# The documentation site (docs/_build/html); warnings are errors.
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache docs/_build docs/api/generated build dist
