# The two set-up commands of the README. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test lint clean test-min

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

# huge pages for XLA's buffers (hrf_jax/hugepages.py): about 10 % off the suite here; a glibc
# without the tunable ignores it
test: lint
	GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $(BIN)/python -m pytest -n 2 --dist loadfile -q --durations=10

clean:
	rm -rf $(VENV) $(VENV_MIN) .pytest_cache .ruff_cache .hypothesis

# test-min: the lowest declared versions (constraints-min.txt, equal to the floors of setup.cfg
# and runtime/pyproject.toml) in a venv of their own, running a subset of the tests: model
# building and merging, training steps, TFDS preparation and grain loading, the CLI (train,
# merge, eval with plots, predict), SIGKILL + resume (orbax), TensorBoard logging. Not part of
# `make test`. promise (a TFDS dependency) ships only a source archive.
VENV_MIN := .venv-min
STAMP_MIN := $(VENV_MIN)/.installed-min
MIN_TESTS := tests/test_reparam_properties.py tests/test_models_reparam.py \
	tests/test_train_steps.py tests/test_config.py tests/test_data_synthetic.py \
	tests/test_data_pipeline.py tests/test_resume.py tests/test_population.py \
	tests/test_convert_espnet.py tests/test_logging.py \
	tests/test_cli.py::test_train_writes_run_files_and_merge_the_deploy_folder \
	tests/test_cli.py::test_merge_prints_the_equivalence_report \
	tests/test_cli.py::test_eval_prints_metrics_and_writes_plots \
	tests/test_cli.py::test_predict_with_the_deploy_folder

$(STAMP_MIN): constraints-min.txt setup.cfg pyproject.toml runtime/pyproject.toml
	rm -rf $(VENV_MIN)
	$(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_MIN)/bin/pip install --quiet --only-binary=:all: --no-binary=promise \
		-c constraints-min.txt -e ./runtime -e '.[dev]'
	touch $@

# a compilation cache of its own, not shared with the newer jax of `make test`
test-min: $(STAMP_MIN)
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/$(VENV_MIN)/xla_cache $(VENV_MIN)/bin/python -m pytest \
		-p no:cacheprovider -n 2 --dist loadfile -q --durations=5 $(MIN_TESTS)
