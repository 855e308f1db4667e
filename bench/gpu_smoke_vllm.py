"""GPU smoke test: `safesample label --judge llm` end to end through the vLLM engine.

Builds two tiny random Llamas (vLLM-friendly head size; different weights) and a rank-32 LoRA
adapter on the first, makes a small pool from shared/data/do_not_answer (or a built-in one), and
runs

    safesample label POOL --generate ADAPTER --judge llm --model JUDGE --engine vllm

so one process must close the generator's vLLM engine before the judge's starts (one model
resident at a time: each starts with vLLM's default 92 % of GPU memory), and the adapter needs
max_lora_rank 32 (vLLM's default is 16),
then the same with --engine transformers on the GPU, and compares: same columns and types, same
rows, and how many generated responses agree token for token (greedy; both in float32). A random
model cannot follow the judge format, so every row must carry a label_error: the check is the
plumbing (batching, ordering, parsing, columns), as in the CPU tests.

Without CUDA it prints "skipped: no GPU" and exits 0. With CUDA but without vLLM it says so
and still runs the transformers engine on the GPU. Pass two model folders (generator, judge) to
use real models instead of the tiny ones.

Run: .venv/bin/python bench/gpu_smoke_vllm.py [GENERATOR JUDGE]
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
DATA = Path(os.environ.get("SAFESAMPLE_SHARED_DATA", REPO.parent / "shared" / "data"))
ROWS = 48


def build_model(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_models import build_tokenizer

    tok = build_tokenizer(folder)
    torch.manual_seed(seed)
    # head_dim 64 and untied, widely initialised weights: vLLM's attention kernels accept it, and
    # the random model says varied nonsense rather than echoing its last token.
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=False, initializer_range=0.5)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_adapter(base: Path, folder: Path, rank: int = 32) -> Path:
    """A LoRA adapter of `rank` on q/v with random B (so it changes the outputs), and the config
    `safesample finetune` writes beside it, naming the base."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from safesample.backends.models import RUN_CONFIG

    torch.manual_seed(2)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                      task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.save_pretrained(folder)
    (folder / RUN_CONFIG).write_text(json.dumps({"base_model": str(base), "template": "chat"}))
    return folder


def make_pool(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = DATA / "do_not_answer" / "do_not_answer.parquet"
    if source.exists():
        table = pq.read_table(source, columns=["id", "instruction"]).slice(0, ROWS)
    else:
        table = pa.table({"id": [f"r{i}" for i in range(ROWS)],
                          "instruction": [f"Question {i}: how do I bake bread number {i}?" for i in range(ROWS)]})
    pq.write_table(table, path)


def run_label(pool: Path, generator: str, judge: str, engine: str, out: Path, env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "safesample", "label", str(pool), "--generate", generator, "--judge", "llm",
           "--model", judge, "--engine", engine, "--dtype", "float32", "--max-new-tokens", "24",
           "--batch-size", "16", "--no-cache", "-o", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(f"FAILED: label --engine {engine} exited {proc.returncode}")
    print(f"label --engine {engine}: ok in {elapsed:.1f} s")
    return elapsed


def check(out: Path, engine: str) -> "object":
    import pyarrow.parquet as pq

    from safesample.label import LABEL_COLUMNS

    table = pq.read_table(out)
    assert table.num_rows == ROWS, table.num_rows
    assert table.column_names[-len(LABEL_COLUMNS):] == list(LABEL_COLUMNS), table.column_names
    rows = table.to_pylist()
    assert all(r["label_error"] for r in rows if r["response"]), "a random model parsed as a judge?"
    assert {r["label_backend"].split(":")[0] for r in rows} == {"llm"}
    print(f"  {engine}: {ROWS} rows, columns ok, {sum(bool(r['response']) for r in rows)} non-empty responses")
    return table


def main() -> int:
    try:
        import torch
    except ImportError:
        print("skipped: no GPU (torch is not installed)")
        return 0
    if not torch.cuda.is_available():
        print("skipped: no GPU")
        return 0
    has_vllm = importlib.util.find_spec("vllm") is not None
    print(f"GPU: {torch.cuda.get_device_name(0)}; vllm: {'installed' if has_vllm else 'not installed'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if len(sys.argv) > 2:
            generator, judge = sys.argv[1], sys.argv[2]
        else:
            generator = str(build_adapter(build_model(tmp / "tiny"), tmp / "lora-r32"))
            judge = str(build_model(tmp / "judge", seed=1))
        pool = tmp / "pool.parquet"
        make_pool(pool)
        env = {**os.environ, "SAFESAMPLE_CACHE_DIR": str(tmp / "cache"), "HF_HUB_OFFLINE": "1",
               "NO_COLOR": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        run_label(pool, generator, judge, "transformers", tmp / "hf.parquet", env)
        hf = check(tmp / "hf.parquet", "transformers")
        if not has_vllm:
            print("vllm: skipped (not installed; pip install 'safesample[vllm]' on this host to run it)")
            return 0
        run_label(pool, generator, judge, "vllm", tmp / "vllm.parquet", env)
        vl = check(tmp / "vllm.parquet", "vllm")
        assert vl.schema.remove_metadata() == hf.schema.remove_metadata(), "schemas differ"
        assert vl.column("id").equals(hf.column("id"))
        same = sum(a == b for a, b in zip(vl.column("response").to_pylist(), hf.column("response").to_pylist()))
        print(f"greedy responses identical across engines: {same}/{ROWS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
