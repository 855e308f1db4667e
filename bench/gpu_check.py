"""vLLM vs transformers on one CUDA host: the same prompts, a LoRA adapter, throughput and agreement.

Runs `safesample judge PROMPTS --model ADAPTER --scorer llm --judge-model JUDGE` once with
`--engine vllm` and once with `--engine transformers` (greedy, --max-new-tokens 128, no cache),
then `safesample label --generate ADAPTER --judge llm --model JUDGE` through vLLM, and reports:

- generation throughput as a ratio, vLLM / transformers (goal >= 10x for 500 prompts x 128 new
  tokens on one modern GPU): each engine's whole judge command is timed, less the time of the
  same command on 8 prompts (start-up and model load);
- the share of identical greedy responses between the engines (both in the same resolved
  dtype; bf16 numerics may flip a near-tie, so this is reported, not required to be 100 %);
- that both outputs have the same rows, ids and columns.

Models: by default a random ~1.1B Llama (TinyLlama's shape; nothing is downloaded) with a rank-32
LoRA adapter, and a different random model as the judge. Pass --model/--adapter/--judge for real
ones. Exit status: 0 all ran and the goal was met (or no GPU: skipped, as `make bench` runs it), 3 the
ratio missed the goal, 1 a run failed.

    python bench/gpu_check.py [--prompts 500] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
GOAL = 10.0


def build_base(folder: Path, seed: int, layers: int, hidden: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_models import build_tokenizer

    tok = build_tokenizer(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=min(4, hidden // 64),
                         max_position_embeddings=4096, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=False, initializer_range=0.5)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return folder


def make_prompts(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tiny_models import _CORPUS

    words = sorted(set(_CORPUS.split()))
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "?" for _ in range(n)]
    # judge reads `prompt`; label reads `instruction`
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(n)], "prompt": prompts, "instruction": prompts}), path)


def run(cmd: list[str], env: dict[str, str], what: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0,):
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"FAILED: {what} exited {proc.returncode}")
    print(f"  {what}: {seconds:.1f} s")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="transformers batch size")
    parser.add_argument("--model", help="base model folder (default: a random ~1.1B Llama)")
    parser.add_argument("--adapter", help="LoRA adapter folder on --model (default: a random rank-32 one)")
    parser.add_argument("--judge", help="judge model folder (default: another random model)")
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("skipped: no GPU (bench/gpu_check.sh fails instead)")
        return 0
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        print("FAILED: vllm is not installed (pip install 'safesample[vllm]')", file=sys.stderr)
        return 1
    import pyarrow.parquet as pq

    from gpu_smoke_vllm import build_adapter

    print(f"GPU: {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = Path(args.model) if args.model else build_base(tmp / "base", 0, args.layers, args.hidden)
        adapter = args.adapter or str(build_adapter(base, tmp / "lora"))
        judge = args.judge or str(build_base(tmp / "judge", 1, 2, 256))
        prompts, warm = tmp / "prompts.parquet", tmp / "warm.parquet"
        make_prompts(prompts, args.prompts)
        make_prompts(warm, 8)
        env = {**os.environ, "SAFESAMPLE_CACHE_DIR": str(tmp / "cache"), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1",
               "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        common = ["--max-new-tokens", str(args.new_tokens), "--no-cache", "--batch-size", str(args.batch_size)]
        seconds, tables = {}, {}
        for engine in ("vllm", "transformers"):
            judge_cmd = [sys.executable, "-m", "safesample", "judge", "--model", adapter, "--engine", engine, *common]
            load = run([*judge_cmd, str(warm), "-o", str(tmp / f"warm-{engine}.parquet")], env,
                       f"{engine}: 8 prompts (start-up and load)")
            total = run([*judge_cmd, str(prompts), "-o", str(tmp / f"{engine}.parquet")], env,
                        f"{engine}: {args.prompts} prompts")
            seconds[engine] = max(total - load, 1e-3)
            tables[engine] = pq.read_table(tmp / f"{engine}.parquet")
        run([sys.executable, "-m", "safesample", "judge", str(prompts), "--model", adapter, "--engine", "vllm",
             "--scorer", "rules,llm", "--judge-model", judge, *common, "-o", str(tmp / "guarded.parquet")], env,
            "vllm: judge with a guard model (generator closed before the guard starts)")
        run([sys.executable, "-m", "safesample", "label", str(prompts), "--generate", adapter, "--judge", "llm",
             "--model", judge, "--engine", "vllm", *common, "-o", str(tmp / "label.parquet")], env,
            "vllm: label --generate ADAPTER --judge llm --model JUDGE")
        a, b = tables["vllm"], tables["transformers"]
        assert a.column("id").equals(b.column("id")), "rows differ between engines"
        assert a.schema.remove_metadata() == b.schema.remove_metadata(), "columns differ between engines"
        ra, rb = a.column("response").to_pylist(), b.column("response").to_pylist()
        same = sum(x == y for x, y in zip(ra, rb))
        ratio = seconds["transformers"] / seconds["vllm"]
        tokens = args.prompts * args.new_tokens
        print(f"generation ({args.prompts} prompts x {args.new_tokens} new tokens, LoRA adapter): "
              f"vLLM {seconds['vllm']:.1f} s, transformers {seconds['transformers']:.1f} s "
              f"(<= {tokens / seconds['vllm']:,.0f} vs {tokens / seconds['transformers']:,.0f} new tokens/s)")
        print(f"throughput ratio vLLM / transformers: {ratio:.1f}x (goal >= {GOAL:.0f}x): "
              f"{'met' if ratio >= GOAL else 'MISSED'}")
        print(f"identical greedy responses: {same}/{len(ra)} ({100 * same / len(ra):.1f} %)")
        return 0 if ratio >= GOAL else 3


if __name__ == "__main__":
    raise SystemExit(main())
