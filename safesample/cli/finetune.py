"""`safesample finetune`: LoRA fine-tuning on a mixed training table."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Quiet, Seed, Verbose, argv, load,
                                   print_plan, setup)

NAME = "finetune"
HELP = """Fine-tune a model with LoRA (PEFT + TRL) on a training table, e.g. the output of `mix`.

Defaults follow the paper: LoRA r=8, alpha=16, dropout 0.05 on q_proj/v_proj, lr 3e-4, 3 epochs,
256 tokens, the Alpaca prompt template, loss on the response tokens only; batches are grouped
by length. The table needs `instruction` and `output` (or `response`) columns; `input` and
`source` are used when present.

The output folder holds the LoRA adapter, the tokenizer, safesample_config.json (settings and
base model: `judge --model DIR` loads the adapter from it), provenance.json and metrics.jsonl
(the loss by step). It appears only when training has finished; until then the work lives in
DIR.partial/, and rerunning the same command resumes from its last checkpoint. Ctrl-C keeps
the checkpoints.

Validation (--val-size): held-out rows come from the non-safety rows only, so every safety row
(source == "safety", from `safesample mix`) is trained on. The paper's trainer drew its split
from the whole mixture, so ~10 % of its safety rows were never trained on; pass
--val-include-safety to reproduce that.

On a GPU it trains in bf16. Several GPUs: `accelerate launch -m safesample finetune ...` or
`torchrun --nproc-per-node 4 -m safesample finetune ...` (data parallel, as TRL does; the batch
size is per GPU). Paper scale is an effective batch of 128, e.g. --batch-size 16 --grad-accum 8.

Examples:

\b
  safesample finetune train.parquet -o runs/lora-0 --model smollm2
  safesample finetune train.parquet -o runs/quick --model smollm2 --max-steps 4
  safesample finetune train.parquet -o runs/chat --template chat --epochs 1 --val-size 0.05
  safesample finetune align.parquet -o runs/aligned --merge --lora-r 16 --target-modules all-linear
  safesample finetune train.parquet -o runs/stage2 --model runs/aligned/merged
  safesample finetune train.parquet -o runs/llama --model meta-llama/Llama-3.1-8B-Instruct \\
      --batch-size 16 --grad-accum 8
"""

OutputDir = Annotated[str, typer.Option("--output", "-o", help="Output folder for the adapter and its "
                                        "records (created; must not exist unless --overwrite).",
                                        show_default=False)]


def command(
    input: Input,
    output: OutputDir,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: 'smollm2' (offline, "
                                       "bundled), a local folder, or a hub id.")] = "smollm2",
    template: Annotated[str, typer.Option("--template", help="Prompt format: 'alpaca' (the paper's) "
                                          "or 'chat' (the tokenizer's chat template).")] = "alpaca",
    epochs: Annotated[float, typer.Option("--epochs", help="Passes over the training rows.")] = 3.0,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimizer "
                                                     "steps (overrides --epochs).",
                                                     show_default=False)] = None,
    batch_size: BatchSize = 8,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Gradient accumulation steps.")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 3e-4,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank.")] = 8,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", help="LoRA alpha.")] = 16,
    lora_dropout: Annotated[float, typer.Option("--lora-dropout", help="LoRA dropout.")] = 0.05,
    target_modules: Annotated[str, typer.Option("--target-modules", help="Comma-separated module "
                                                "names to adapt, or 'all-linear'.")] = "q_proj,v_proj",
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens per example (prompt + "
                                            "response); longer ones are cut at the end.")] = 256,
    val_size: Annotated[float, typer.Option("--val-size", help="Validation rows: a fraction (<1) or "
                                            "a count; drawn from non-safety rows.")] = 0.0,
    val_include_safety: Annotated[bool, typer.Option("--val-include-safety", help="Let safety rows "
                                                     "fall into validation (as the paper's trainer "
                                                     "did).")] = False,
    group_by_length: Annotated[bool, typer.Option("--group-by-length/--no-group-by-length",
                                                  help="Batch rows of similar length together.")] = True,
    save_steps: Annotated[int, typer.Option("--save-steps", help="Checkpoint (and validate) every N "
                                            "steps.")] = 50,
    resume: Annotated[str, typer.Option("--resume", help="auto: resume when DIR.partial has "
                                        "checkpoints of this run; yes: require them; no: start "
                                        "over.")] = "auto",
    merge: Annotated[bool, typer.Option("--merge", help="Also write DIR/merged: full weights with "
                                        "the adapter folded in.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished run in the "
                                            "output folder.")] = False,
    seed: Seed = 0,
    limit: Limit = None,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup(quiet, verbose)
    from safesample import finetune as stage
    from safesample.console import CONSOLE

    stage.check_output_dir(output, overwrite)
    options = stage.FinetuneOptions(
        model=model, template=template, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        grad_accum=grad_accum, lr=lr, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        target_modules=_modules(target_modules), max_length=max_length, val_size=val_size,
        val_include_safety=val_include_safety, group_by_length=group_by_length, save_steps=save_steps,
        merge=merge, seed=seed)
    table = load(input, limit)
    if dry_run:
        print_plan(stage.plan(table, options, output, resume, overwrite))
        return
    args = {"input": input, "output": output, "model": model, "template": template, "epochs": epochs,
            "max_steps": max_steps, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr,
            "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
            "target_modules": target_modules, "max_length": max_length, "val_size": val_size,
            "val_include_safety": val_include_safety, "seed": seed, "limit": limit, "merge": merge}
    result = stage.finetune_table(table, options, output, resume=resume, overwrite=overwrite, args_record=args,
                                  argv=argv(), reporter=CONSOLE)
    if result is not None:  # None: another process of a multi-GPU run, which writes nothing
        loss = result.final_train_loss
        CONSOLE.info(f"trained {result.steps} steps in {result.train_seconds:.0f} s"
                     + (f", final loss {loss:.4f}" if loss is not None else "")
                     + f"; wrote {output}")


def _modules(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    return names
