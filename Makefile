# Every install step lives here: `make demo` and `make test` build .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.mmvid-installed

.PHONY: venv demo test test-fast bench bench-prepare bench-prepare-memory bench-loader bench-inputs bench-throughput bench-methods bench-proving bench-zoo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch would pull a multi-GB build.
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmvid demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Benchmarks print figures and ratios measured in one run (never part of the tests).
bench: bench-prepare bench-loader bench-throughput bench-methods

bench-prepare: $(STAMP)
	$(PY) -m benchmarks.bench_prepare

bench-prepare-memory: $(STAMP)
	$(PY) -m benchmarks.bench_prepare_memory

# OGM_GE: a clone of GeWu-Lab/OGM-GE_CVPR2022 at commit 0f64793 (its CramedDataset is the reference loader).
bench-loader: $(STAMP)
	$(PY) -m benchmarks.bench_loader $(if $(OGM_GE),--reference $(OGM_GE)/dataset/CramedDataset.py)

bench-inputs: $(STAMP)
	$(PY) -m benchmarks.bench_inputs

bench-throughput: $(STAMP)
	$(PY) -m benchmarks.bench_throughput

bench-methods: $(STAMP)
	$(PY) -m benchmarks.bench_methods

bench-proving: $(STAMP)
	$(PY) -m benchmarks.bench_proving --seeds 5 --jobs 2

bench-zoo: $(STAMP)
	$(PY) -m benchmarks.bench_proving --seeds 5 --jobs 2 --zoo

clean:
	rm -rf $(VENV) mmvid-workspace
