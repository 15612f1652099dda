# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing,
# installs torch==2.13.0 first (a bare `torch` requirement can pull a multi-GB CUDA build), then
# the package with the extras it needs. A re-run on a ready machine skips the installs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo demo-agents demo-lm test lint bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	touch $@

$(VENV)/.core: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.envs: pyproject.toml $(VENV)/.core
	$(BIN)/pip install --quiet -e ".[envs]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.core
	$(BIN)/pip install --quiet -e ".[dev,envs]"
	touch $@

demo: $(VENV)/.envs
	bash scripts/demo.sh

demo-agents: $(VENV)/.envs
	bash scripts/demo-agents.sh

demo-lm: $(VENV)/.core
	bash scripts/demo-lm.sh

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check .

bench: $(VENV)/.dev
	$(BIN)/python bench/model_speed.py

clean-venv:
	rm -rf $(VENV)
