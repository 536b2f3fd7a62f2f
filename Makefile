# Two commands on a fresh machine: `make demo` and `make test`. Both build the virtualenv first.
# PYTHON picks the interpreter (3.11 to 3.13), VENV where it goes: .ci/run builds a second one with
# `make test PYTHON=python3.13 VENV=.venv313 TESTS="tests/e2e tests/verifier"`.
PYTHON ?= python3
VENV   ?= .venv
TESTS  ?=
BIN    := $(VENV)/bin
# Seconds since this make started, to one decimal (a shell expression for recipes).
STARTED := $(shell date +%s%N)
ELAPSED = t=$$(( ($$(date +%s%N) - $(STARTED)) / 100000000 )); echo $$((t / 10)).$$((t % 10))
STAMP  := $(VENV)/.installed-stamp
PKGS   := -e shared -e services/gateway -e services/verifier -e services/builder \
          -e services/credentials -e services/executor -e services/publisher \
          -e services/checkpointer -e services/airlock -e '.[server,dev]'

.PHONY: install demo test lint format bench clean

# uv installs (about 8 s here against pip's 45 s, and silent unless something fails); pip only
# fetches uv itself, with -qq because this machine's pip config names a local index folder that
# lacks most projects and pip warns about each one (errors still show).
$(STAMP): pyproject.toml shared/pyproject.toml $(wildcard services/*/pyproject.toml)
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(not (3, 11) <= v <= (3, 13) and \
		f"secd runs on Python 3.11, 3.12 and 3.13, not {v[0]}.{v[1]}: make ... PYTHON=python3.13")'
	@echo "set-up: $(VENV) with $$($(PYTHON) --version)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -qq uv
	@echo "set-up: installing secd's packages and their dependencies (uv)"
	@$(BIN)/uv pip install --quiet --python $(BIN)/python $(PKGS)
	@touch $(STAMP)
	@echo "set-up: done in $$($(ELAPSED)) s"

install: $(STAMP)

# The last line is the time of the whole command: the set-up (when $(VENV) is new) and the demo.
demo: $(STAMP)
	@$(BIN)/secd demo; status=$$?; \
	echo "make demo took $$($(ELAPSED)) s in all"; exit $$status

test: $(STAMP)
	@$(BIN)/ruff check --quiet .
	@$(BIN)/ruff format --check --quiet .
	@$(BIN)/mypy --no-error-summary
	$(BIN)/pytest $(TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/credentials.py
	$(BIN)/python bench/cache.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/limits.py
	$(BIN)/python bench/runs_api.py
	$(BIN)/python bench/airlock.py
	$(BIN)/python bench/disclosure.py

clean:
	rm -rf $(VENV) .secd-demo
