# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing, install torch (CPU build where it lies on disk) and then the package.
VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.diti-installed

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned, and only when none is importable: a plain `torch>=2.3` resolved by pip
	@# alone could pull a multi-GB CUDA build onto a CPU-only machine.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/diti demo --out runs/demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
