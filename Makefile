# make demo  — install, then train the embedded default (`dck fit`)
# make test  — install, then run the test suite
# Both create .venv on first use; later runs reuse what is installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pair installed before the package (a pair that imports together).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline

.PHONY: install demo test test-fast lint benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.torch-installed: | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	touch $@

$(VENV)/.installed: setup.cfg pyproject.toml $(VENV)/.torch-installed
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/dck fit

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check dck_lightning tests scripts
	$(BIN)/ruff format --check dck_lightning tests scripts

benchmark: install
	$(BIN)/python scripts/benchmark_layers.py

clean:
	rm -rf $(VENV) build *.egg-info
