# The two commands of the README: `make demo` (main job) and `make test` (the tests).
# Both create .venv on first use and install everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stml-installed
# torch first, pinned: these releases lie on the development machines' local index, and an
# unpinned torch would pull a newer multi-GB CUDA build from PyPI.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
EXTRAS := train,export,cpu,index,dev

.PHONY: demo test lint format bench bench-accuracy bench-perf setup data clean gpu-check

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

# Fashion-MNIST from Debian (the demo's default data); without it the demo uses digits.
data:
	@sh .ci/fashion_mnist.sh

demo: setup
	$(BIN)/stml demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# needs runs/demo from `make demo` for the exported-variants benchmark
bench: setup
	$(BIN)/python benchmarks/pseudo_labels.py
	$(BIN)/python benchmarks/exported_variants.py --package runs/demo/model --resnet18
	$(BIN)/python benchmarks/search.py

# STML against the start model, SimCLR and the supervised bound on three Fashion-MNIST
# protocols, 2 seeds (93 min measured on one loaded core; QUICK=1: the 10-minute subset).
# Writes docs/accuracy.json and docs/accuracy.png; the table goes in docs/benchmarks.md.
ACCURACY_ARGS := $(if $(QUICK),--quick --json runs/accuracy-quick.json --plot runs/accuracy-quick.png,--json docs/accuracy.json --plot docs/accuracy.png)
bench-accuracy: setup
	mkdir -p runs
	PYTHONPATH=. $(BIN)/python benchmarks/accuracy.py $(ACCURACY_ARGS)

# Where training time goes, how cost grows, inference per backend (the last needs `make demo`).
bench-perf: setup
	PYTHONPATH=. $(BIN)/python benchmarks/perf.py --json docs/perf.json --plots docs \
		$(if $(wildcard runs/demo/model/config.json),--package runs/demo/model)

# On a machine with an NVIDIA GPU, offline: no `setup` (it would reach for the registries); it
# runs with .venv's Python when there is one, else $(PYTHON). One JSON summary on stdout;
# exit 2 with one line where there is no GPU. See docs/gpu.md for the wheels to carry.
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
