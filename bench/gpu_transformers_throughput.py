"""GPU throughput of the transformers generation engine and of a LoRA fine-tuning step.

Builds a random-initialised Llama of realistic size from a config (default ~1.1B parameters,
the TinyLlama shape, bf16; nothing is downloaded), then measures:

1. generation: `safesample.backends.generation.TransformersEngine` (greedy, left-padded,
   length-sorted batches) over prompts of 30-120 random words of the test tokenizer's corpus
   (about 200-350 tokens with that small tokenizer; the run prints the real range), new tokens/s
   at several batch sizes;
   every sequence is held to exactly --new-tokens tokens so the figures count real work;
2. fine-tuning: `safesample.finetune.finetune_table` (PEFT LoRA r=8 on q/v + TRL SFTTrainer,
   bf16 on the GPU, the real code path) on synthetic rows cut at 256 tokens, median step time
   after warm-up, training tokens/s and the peak GPU memory of training alone (the generation
   model is freed and the peak counter reset first); if TRL is not importable it falls back to
   a plain PEFT step.

On a machine without CUDA it prints "skipped: no GPU" and exits 0. Sized to finish in well
under 4 minutes on an H200:

    python bench/gpu_transformers_throughput.py [--layers 22] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tiny_models.build_tokenizer: a tokenizer made locally

DEVICE = "cuda"
WORDS: list[str] = []  # filled from the tokenizer's own training text: ~1-2 tokens per word


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--device", default="cuda", help="cuda; 'cpu' only to smoke-test this script "
                        "with a small --layers/--hidden")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no GPU (CUDA is not available)")
        return 0
    global DEVICE
    DEVICE = args.device
    os.environ.setdefault("SAFESAMPLE_CACHE_DIR", tempfile.mkdtemp(prefix="safesample-bench-cache-"))
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_models import _CORPUS, build_tokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    work = Path(tempfile.mkdtemp(prefix="safesample-bench-"))
    tok = build_tokenizer(work / "tok")
    WORDS.extend(sorted(set(_CORPUS.split())))
    tok.padding_side = "left"
    config = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.75),
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=min(4, args.hidden // 64), max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False)
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if DEVICE == "cuda" else torch.float32)  # CPU: fp32
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"model: random Llama, {n_params / 1e9:.2f}B parameters, {args.layers} layers, hidden {args.hidden}, "
          f"{next(model.parameters()).dtype} (built in {time.perf_counter() - start:.1f} s)")
    # A random model may emit EOS at any step; hold every sequence to the full length instead.
    model.generation_config.min_new_tokens = args.new_tokens

    bench_generation(model, tok, work, args)
    try:
        import trl  # noqa: F401 - the real path needs it
    except ImportError as exc:
        print(f"fine-tuning: TRL not importable ({exc}); measuring a plain PEFT LoRA step instead")
        train_peft(model, args.train_batch * (args.train_steps + 2), args)
        return 0
    folder = work / "model"
    start = time.perf_counter()
    model.generation_config.min_new_tokens = None
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    precision = "bf16" if DEVICE == "cuda" else "fp32"
    print(f"fine-tuning: saved the model in {time.perf_counter() - start:.1f} s; training through "
          f"safesample.finetune.finetune_table (TRL SFTTrainer + PEFT LoRA r=8 q/v, {precision})")
    # This frame holds the only reference to the generation model: drop it here, so training
    # starts on an empty GPU, and count training's own peak.
    del model
    import gc

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    train_real(folder, work, args.train_batch * (args.train_steps + 2), args)
    return 0


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _prompts(n: int, tok) -> list[str]:
    import random

    rng = random.Random(0)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(30, 120))]
        out.append(" ".join(words))
    return out


def bench_generation(model, tok, work: Path, args) -> None:

    from safesample.backends.generation import TransformersEngine
    from safesample.backends.models import ModelRef

    prompts = _prompts(args.prompts, tok)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    print(f"generation: {len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens "
          f"(mean {statistics.mean(lengths):.0f}), {args.new_tokens} new tokens each, greedy")
    ref = ModelRef("random-llama", str(work / "tok"))  # a local folder: nothing looked up on a hub
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        engine = TransformersEngine(ref, batch_size=batch, max_new_tokens=args.new_tokens, model=model,
                                    tokenizer=tok)
        engine.generate(prompts[:batch])  # warm-up: kernels, allocator
        sync()
        start = time.perf_counter()
        outs = engine.generate(prompts)
        sync()
        seconds = time.perf_counter() - start
        assert len(outs) == len(prompts)
        total = len(prompts) * args.new_tokens
        print(f"  batch {batch:3d}: {total / seconds:8.0f} new tokens/s  ({seconds:.1f} s for {total} tokens; "
              f"{seconds / (len(prompts) / batch) * 1000:.0f} ms per batch)")


def _train_table(rows: int):
    import random

    import pyarrow as pa

    rng = random.Random(1)
    instr = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 30))) for _ in range(rows)]
    outs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 140))) for _ in range(rows)]
    return pa.table({"id": [f"b{i}" for i in range(rows)], "instruction": instr, "output": outs,
                     "source": ["benign"] * rows})


def train_real(folder: Path, work: Path, rows: int, args) -> None:
    import torch
    from transformers import TrainerCallback

    from safesample import finetune

    times: list[float] = []
    tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            sync()
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            sync()
            times.append(time.perf_counter() - self.t)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                tokens.append(int(logs["num_tokens"]))

    config = finetune.FinetuneOptions(model=str(folder), max_steps=args.train_steps, batch_size=args.train_batch,
                                      max_length=256, save_steps=10_000)
    start = time.perf_counter()
    record = finetune.finetune_table(_train_table(rows), config, str(work / "run"), callbacks=[Timer()]).record
    total = time.perf_counter() - start
    steady = times[2:] or times
    per_step = statistics.median(steady)
    tok_per_step = tokens[-1] / len(times) if tokens else float("nan")
    print(f"  {record['steps']} steps on {record['device']} ({record['dtype']}); first step "
          f"{times[0] * 1000:.0f} ms, median after warm-up {per_step * 1000:.0f} ms/step "
          f"(batch {args.train_batch} x <=256 tokens, ~{tok_per_step:.0f} tokens/step, "
          f"{tok_per_step / per_step:,.0f} training tokens/s)")
    print(f"  whole call incl. loading, data preparation and saving the adapter: {total:.1f} s; "
          f"final loss {record['final_train_loss']:.3f}; output {work / 'run'} complete: "
          f"{finetune.is_complete_run(work / 'run')}")
    if DEVICE == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def train_peft(model, rows: int, args) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    model.generation_config.min_new_tokens = None
    model.train()
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                  target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-4)
    ids = torch.randint(10, 30000, (args.train_batch, 256), device=DEVICE)
    times = []
    for _ in range(args.train_steps):
        sync()
        t = time.perf_counter()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t)
    per_step = statistics.median(times[2:])
    print(f"  plain PEFT step: median {per_step * 1000:.0f} ms (batch {args.train_batch} x 256 tokens, "
          f"{args.train_batch * 256 / per_step:,.0f} training tokens/s)")


if __name__ == "__main__":
    sys.exit(main())
