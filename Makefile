# tdann_fast: the two entry points are `make demo` and `make test`; both install everything first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_STAMP := $(VENV)/.torch-2.14.1
PKG_STAMP   := $(VENV)/.pkg-installed
EXT_SOURCES := $(shell find csrc -type f 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: setup test demo bench bench-gpu bench-swap bench-swap-gpu clean

setup: $(PKG_STAMP)

$(TORCH_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	touch $@

# Re-installed only when the build inputs change (Python sources are live through the editable install).
$(PKG_STAMP): $(TORCH_STAMP) setup.py pyproject.toml $(EXT_SOURCES)
	$(BIN)/pip install -q --no-build-isolation -e .[dev]
	touch $@

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/python -m tdann_fast.cli demo

bench: setup
	$(BIN)/python benchmarks/bench_loss.py

# GPU benchmarks (issue 3): loss fwd+bwd (fp32 and bf16) and the r3d_18 training-step overhead, one JSON per device
bench-gpu: setup
	$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu needs a CUDA device')"
	$(BIN)/python benchmarks/bench_loss.py --device cuda --dtype fp32
	$(BIN)/python benchmarks/bench_loss.py --device cuda --dtype bf16
	$(BIN)/python benchmarks/bench_step.py

bench-swap: setup
	$(BIN)/python benchmarks/bench_swap.py

bench-swap-gpu: setup
	FORCE_CUDA=1 $(BIN)/python setup.py build_ext --inplace
	$(BIN)/python benchmarks/bench_swap.py --gpu

clean:
	rm -rf build *.egg-info tdann_fast/_C*.so
