# tdann_fast: the two entry points are `make demo` and `make test`; both install everything first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_STAMP := $(VENV)/.torch-2.14.1
PKG_STAMP   := $(VENV)/.pkg-installed
EXT_SOURCES := $(shell find csrc -type f 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: setup test demo bench bench-gpu clean

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

clean:
	rm -rf build *.egg-info tdann_fast/_C*.so
