#!/usr/bin/env bash
# The vLLM path on a real CUDA host, in one command (run from anywhere):
#
#     bash bench/gpu_check.sh            # set up (when the host has network), then every check
#     GPU_VENV=/path/venv bash bench/gpu_check.sh   # use (or create) another venv
#
# 1. Set-up: a venv (default .venv-gpu) with vLLM 0.32.0 (it brings its CUDA torch 2.13) and
#    safesample; installed only when missing, and only when the package index is reachable.
# 2. The vLLM contract and engine tests (tests/test_vllm_contract.py, test_generation.py,
#    test_engines.py): the adapter against vLLM 0.32's interface, with the strict fakes.
# 3. bench/gpu_smoke_vllm.py: label --generate (rank-32 LoRA) --judge llm with a second model,
#    through vLLM and through transformers; schemas, rows, agreement.
# 4. bench/gpu_check.py: judge and label through both engines on the same 500 prompts x 128
#    tokens with a LoRA adapter; throughput ratio vLLM / transformers (goal >= 10x) and the
#    share of identical greedy outputs.
#
# Exits non-zero on any failure (3 when everything ran but the throughput goal was missed).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPU_VENV:-.venv-gpu}
PY=$VENV/bin/python

command -v nvidia-smi >/dev/null && nvidia-smi -L || { echo "FAILED: no CUDA device (nvidia-smi)" >&2; exit 1; }

if ! { [ -x "$PY" ] && "$PY" -c "import vllm, safesample, pytest" 2>/dev/null; }; then
  if ! python3 -m pip download --no-deps -q -d "$(mktemp -d)" pip >/dev/null 2>&1; then
    echo "FAILED: $VENV lacks vllm/safesample and the package index is unreachable" >&2
    echo "hint: on a host with network run this once, or set GPU_VENV to a venv with vllm==0.32.0" >&2
    exit 1
  fi
  echo "== installing vllm==0.32.0 and safesample into $VENV (several GB, a few minutes)"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "vllm==0.32.0" -e ".[dev]"
fi
"$PY" -c "import vllm, torch; print('vllm', vllm.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NO_COLOR=1
failed=0
step() { echo "== $*"; "$@" || { rc=$?; echo "FAILED ($rc): $*" >&2; [ $rc -eq 3 ] && [ $failed -eq 0 ] && failed=3 || failed=1; }; }
step "$PY" -m pytest -q tests/test_vllm_contract.py tests/test_generation.py tests/test_engines.py
step "$PY" bench/gpu_smoke_vllm.py
step "$PY" bench/gpu_check.py "$@"
if [ $failed -ne 0 ]; then echo "gpu_check: FAILED (exit $failed)" >&2; exit $failed; fi
echo "gpu_check: all passed"
