# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SPEC    ?= specs/paper/resnet50.yaml
STAMP   := $(VENV)/.installed

.PHONY: setup demo test test-all lint bench clean

# The CPU build of torch is pinned on machines without an NVIDIA GPU: an unpinned torch pulls
# several GB of CUDA packages. On a GPU machine the default (CUDA) wheel is taken.
$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[torch,flax,train,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rescompile check $(SPEC)
	$(BIN)/rescompile report $(SPEC) --depth stage

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/report_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
