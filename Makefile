# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SPEC    ?= specs/paper/resnet50.yaml
STAMP   := $(VENV)/.installed

.PHONY: setup demo test test-all lint bench gpu-wheels clean

# The CPU build of torch is pinned on machines without an NVIDIA GPU: an unpinned torch pulls
# several GB of CUDA packages. On a GPU machine the default (CUDA) wheel is taken.
$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[torch,flax,train,tensorboard,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rescompile check $(SPEC)
	$(BIN)/rescompile report $(SPEC) --depth stage

# one pytest-xdist worker per core, at most 4 (each worker loads torch and jax); a test
# file stays on one worker (its module fixtures run once)
JOBS    ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$((n < 4 ? n : 4)))
test: setup
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile --durations=15

test-all: setup
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile -m ''

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/report_speed.py

# For benchmarks/gpu_suite.sh on a GPU machine without network (CUDA torch, jax, flax there):
# rescompile's own wheel plus the dependencies such an image lacks, for CPython 3.12, in .whl/.
GPU_PY  ?= 3.12
GPU_DEPS = pydantic pydantic-core annotated-types typing-inspection typing-extensions
gpu-wheels: setup
	rm -rf .whl && mkdir -p .whl
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w .whl .
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) \
	  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $$($(BIN)/python -c "import importlib.metadata as m; \
	  print(' '.join(f'{n}=={m.version(n)}' for n in '$(GPU_DEPS)'.split()))")
	ls .whl

clean:
	rm -rf $(VENV) build *.egg-info
