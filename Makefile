# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch/torchvision pinned for the install step only (they lie on this machine's disk);
# pyproject keeps loose ranges for users.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: install demo docs lint test test-slow test-numeric test-all bench gpu-wheels gpu-check gpu-rehearsal clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/attnexp experiment=demo

# docs/config.md from conf/ and the schemas (tests/test_docs.py fails while it is stale)
docs: $(STAMP)
	$(PY) scripts/config_reference.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider --durations=10

# the `slow` tier alone (CI runs it after `make test`)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -p no:cacheprovider

# the tests that compare float values torch computes (marker `numeric`), under another CPU's kernels:
# ATen's plain ones (no AVX) and oneDNN capped at SSE4.1, so a tolerance accepted on this CPU is
# checked against one that rounds differently (tests/tolerance.py)
test-numeric: $(STAMP)
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 $(PY) -m pytest -q -m numeric -p no:cacheprovider

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(VENV)/bin/attnexp-bench

# The GPU check (CONTRIBUTING.md). The GPU machine has Python 3.12, torch, torchvision, Lightning,
# tensorboard, but no package registry and not what attnexp's configs need: fetch those wheels
# first, on a machine with the registries (antlr4 4.9.3 is an sdist only: build its wheel).
# hydra-joblib-launcher: hydra/launcher=gpu_shared (jobs side by side on the GPU); tbparse: the
# runs' curves an adaptive sweep (sweep.seeds=auto) sizes on and attnexp-report reads.
GPU_WHEELS ?= .gpu-wheels
GPU_PYTHON ?= python3
GPU_PKGS   := "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" hydra-joblib-launcher tbparse PyYAML pytest pluggy iniconfig packaging pygments
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --dest $(GPU_WHEELS) --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 --no-deps $(GPU_PKGS)
	$(PY) -m pip wheel -q --no-deps --wheel-dir $(GPU_WHEELS) antlr4-python3-runtime==4.9.3

# On the GPU machine: make gpu-check OUT=<folder>; each step writes its result there as it ends
# (GPU_CHECK_FLAGS=--rerun-failed: only the steps that failed).
OUT ?= gpu-check
GPU_CHECK_FLAGS ?=
gpu-check:
	$(GPU_PYTHON) -m pip install -q --no-index --find-links $(GPU_WHEELS) $(GPU_PKGS) antlr4-python3-runtime==4.9.3
	$(GPU_PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(GPU_PYTHON) scripts/gpu_check.py $(OUT) $(GPU_CHECK_FLAGS)

# gpu-check itself, with --cpu, in the GPU machine's software (scripts/gpu-image.txt, a venv under
# ~/.cache built once): what the GPU machine would fail to install, import or collect fails here.
gpu-rehearsal: gpu-wheels
	GPU_CHECK_FLAGS="--cpu $(GPU_CHECK_FLAGS)" bash scripts/gpu_rehearsal.sh run $(OUT)/rehearsal

clean:
	rm -rf outputs multirun .pytest_cache
