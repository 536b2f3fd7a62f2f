# Two commands on a fresh machine: `make demo` and `make test`. Both build the virtualenv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PKGS   := -e shared -e services/gateway -e services/verifier -e services/builder \
          -e services/credentials -e services/executor -e services/publisher \
          -e services/checkpointer -e '.[server,dev]'

.PHONY: install demo test lint format bench clean

$(STAMP): pyproject.toml shared/pyproject.toml $(wildcard services/*/pyproject.toml)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "secd needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PKGS)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/secd demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/credentials.py
	$(BIN)/python bench/cache.py
	$(BIN)/python bench/audit.py

clean:
	rm -rf $(VENV) .secd-demo
