# tdann_fast: the two entry points are `make demo` and `make test`; both install everything first, into a
# development venv (.venv) with a known torch from the registry. On a machine that has its own torch and perhaps
# no network (a cluster or GPU node): `make install` and `make check-gpu` use the current python3 instead.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
TORCH_STAMP := $(VENV)/.torch-2.14.1
OUT ?= runs/check-gpu-$(shell date +%Y%m%d-%H%M%S)
PKG_STAMP   := $(VENV)/.pkg-installed
EXT_SOURCES := $(shell find csrc -type f 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: setup test demo install check-gpu test-oldest bench bench-gpu bench-swap bench-swap-gpu clean

setup: $(PKG_STAMP)

$(TORCH_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH_SPEC)
	touch $@

# Re-installed only when the build inputs change (Python sources are live through the editable install). Here the
# C++ extension must build (TDANN_FAST_REQUIRE_EXT=1); elsewhere a failed build installs without it.
$(PKG_STAMP): $(TORCH_STAMP) setup.py pyproject.toml $(EXT_SOURCES)
	TDANN_FAST_REQUIRE_EXT=1 $(BIN)/pip install -q --no-build-isolation -e .[dev]
	touch $@

# Into the current environment, against its torch (offline: PIP_NO_INDEX=1 make install). Builds the CUDA swap
# backend when a GPU is visible (or FORCE_CUDA=1).
install:
	$(PYTHON) -m pip install --no-build-isolation -e .

# A GPU node with the package installed: GPU tests, loss/step/swap benchmarks and a short mt_gpu run, all JSON
# in $(OUT) (make check-gpu OUT=results/h100). No venv is used.
check-gpu:
	$(PYTHON) scripts/check_gpu.py --out $(OUT)

# The oldest supported versions: the Triton kernels compiled by the oldest triton, the CPU loss tests under the
# oldest torch (side environments under .cache/oldest/).
test-oldest: setup
	VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/check_oldest.sh

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/python -m tdann_fast.cli demo

# Benchmarks write their JSON where you say (BENCH_OUT, default runs/bench-<time>/), never over committed results.
BENCH_OUT ?= runs/bench-$(shell date +%Y%m%d-%H%M%S)

bench: setup
	$(BIN)/python benchmarks/bench_loss.py --output $(BENCH_OUT)/bench_loss_cpu.json
	$(BIN)/python benchmarks/bench_loss.py --path step --output $(BENCH_OUT)/bench_loss_step_cpu.json

# GPU benchmarks (issue 3): loss fwd+bwd (fp32 and bf16) and the r3d_18 training-step overhead, one JSON per device
bench-gpu: setup
	$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu needs a CUDA device')"
	$(BIN)/python benchmarks/bench_loss.py --device cuda --dtype fp32 --output $(BENCH_OUT)/bench_loss_fp32.json
	$(BIN)/python benchmarks/bench_loss.py --device cuda --dtype bf16 --output $(BENCH_OUT)/bench_loss_bf16.json
	$(BIN)/python benchmarks/bench_loss.py --device cuda --path step --output $(BENCH_OUT)/bench_loss_step.json
	$(BIN)/python benchmarks/bench_step.py --output $(BENCH_OUT)/bench_step.json

bench-swap: setup
	$(BIN)/python benchmarks/bench_swap.py

bench-swap-gpu: setup
	FORCE_CUDA=1 $(BIN)/python setup.py build_ext --inplace
	$(BIN)/python benchmarks/bench_swap.py --gpu

clean:
	rm -rf build dist *.egg-info tdann_fast/_C*.so
