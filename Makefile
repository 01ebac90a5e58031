# Two entry points, each doing all set-up on a fresh machine:
#   make demo   -- create .venv, install the runtime, caption a generated camera clip with the bundled model
#   make test   -- create .venv, install runtime + export + dev extras (CPU torch), run the test suite
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch: on the project's machines `pip install torch==2.13.0` takes a local CPU wheel.
# Elsewhere pass e.g. TORCH_PIP="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_PIP ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH_PIP)
	$(BIN)/python -m pip install -q -e '.[export,dev]'
	touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/edgecap demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info export/*.egg-info
