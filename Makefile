# Two entry points, each doing all set-up on a fresh machine:
#   make demo   -- create .venv, install the runtime, caption a generated camera clip with the bundled model
#   make test   -- create .venv, install runtime + export + web + mqtt + dev extras (CPU torch), run the whole test suite (as CI)
#   make test-fast -- the same set-up, the tests not marked slow (the inner loop, a few minutes)
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch: on the project's machines `pip install torch==2.13.0` takes a local CPU wheel.
# Elsewhere pass e.g. TORCH_PIP="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_PIP ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-fast demo-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH_PIP)
	$(BIN)/python -m pip install -q -e '.[export,web,mqtt,dev]'
	touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/edgecap demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "not slow"

# Retrain the bundled demo model from scratch and re-quantize it (training took 34 min when timed on a 2-core CPU,
# see docs/DEMO_MODEL.md; CI does not run this).
DEMO_RUN ?= runs/demo
DEMO_RECIPE ?= --data synth:48000 --base demo --epochs 4 --batch-size 64 --lr 1e-3 --seed 0
demo-model: $(VENV)/.dev
	$(BIN)/edgecap finetune $(DEMO_RECIPE) --out $(DEMO_RUN)
	mkdir -p src/edgecap/models/demo
	rm -f src/edgecap/models/demo/*.int8.onnx
	cp $(DEMO_RUN)/manifest.json $(DEMO_RUN)/encoder.onnx $(DEMO_RUN)/decoder.onnx $(DEMO_RUN)/tokenizer.json src/edgecap/models/demo/
	$(BIN)/edgecap quantize src/edgecap/models/demo
	$(BIN)/edgecap evaluate demo --scenes 500

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info export/*.egg-info
