# The two set-up commands of the README. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): $(BIN)/python setup.cfg pyproject.toml runtime/pyproject.toml
	$(BIN)/pip install --quiet -e ./runtime -e .
	touch $@

# the test suite checks export parity too, so it installs the export extra
$(STAMP_DEV): $(BIN)/python setup.cfg pyproject.toml runtime/pyproject.toml
	$(BIN)/pip install --quiet -e ./runtime -e '.[dev,export]'
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(BIN)/hrf-jax demo

lint: $(STAMP_DEV)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -q --durations=10

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
