# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing, install torch (CPU build where it lies on disk) and then the package.
VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.diti-installed

.PHONY: setup browser demo test lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned, and only when none is importable: a plain `torch>=2.3` resolved by pip
	@# alone could pull a multi-GB CUDA build onto a CPU-only machine.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev,app]"
	@touch $(STAMP)

# The explorer's browser test drives the system's chromium through playwright (never `playwright install`,
# which downloads a browser). Installed with apt-get when missing and we are root on Debian; elsewhere the
# test is skipped and says why.
CHROMIUM ?= /usr/bin/chromium

browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "could not install chromium: the browser test will be skipped"; \
	else echo "no $(CHROMIUM) and not root on Debian: the browser test will be skipped"; fi

setup: $(STAMP) browser

demo: $(STAMP)
	$(VENV)/bin/diti demo --out runs/demo

# Every test runs on one torch thread (tests/conftest.py), so TEST_WORKERS processes share the cores: on 2 cores
# 2 workers take the suite from 8 min 16 s to 4 min 17 s (measured, benchmarks/RESULTS.md).
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
