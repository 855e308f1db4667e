"""LoRA supervised fine-tuning from a training table (the output of `safesample mix`).

PEFT + TRL's SFTTrainer, with the paper's defaults: LoRA r=8, alpha=16, dropout 0.05 on the
q/v projections, lr 3e-4, 3 epochs, 256 tokens, the Alpaca prompt template, and the loss on the
response tokens only. Batches are grouped by length (about half the step time on a CPU).

The output folder appears only when training is complete. Until then everything lives in a
work folder beside it, `<output>.partial/` (checkpoints, metrics, the run's fingerprint); a rerun
of the same command resumes from its last checkpoint. At the end the finished folder is built
inside the work folder and renamed into place, so a folder at the output path is always a
finished run: the LoRA adapter, the tokenizer, `safesample_config.json` (the resolved settings;
its `base_model` lets `safesample.backends.models.resolve` load the adapter), `provenance.json`
(the training table's history plus this run) and `metrics.jsonl` (the loss by step). With
`merge=True` it also holds `merged/`: full weights with the adapter folded in, a plain model
folder that a second fine-tune can start from.

Several GPUs: launch the same command under `accelerate launch` or `torchrun`; TRL/transformers
do the data-parallel work, and only the main process writes files and logs.

The package: `options` (FinetuneOptions, the plan), `examples` (rows -> prompt/completion
examples, the validation split), `resume` (the work folder, checkpoints, the run's
fingerprint), `train` (TRL/PEFT, callbacks, the finished folder); here `prepare` (everything
checked, nothing loaded), `plan` (what --dry-run prints) and `finetune_table`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesample.errors import UsageError
from safesample.finetune.examples import SAFETY_SOURCE, TEMPLATES, Examples, build_examples, split_validation
from safesample.finetune.options import COMMAND, FinetuneOptions, Plan
from safesample.finetune.resume import (CHECKPOINTS, FINGERPRINT, PARTIAL_SUFFIX, RESUME_MODES, after_failure,
                                        check_output_dir, checkpoints, is_complete_run, plan_resume,
                                        run_fingerprint, work_dir_for)
from safesample.finetune.train import METRICS, PROVENANCE, finish, is_main_process, run_record, train
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["CHECKPOINTS", "COMMAND", "FINGERPRINT", "METRICS", "PARTIAL_SUFFIX", "PROVENANCE", "RESUME_MODES",
           "SAFETY_SOURCE", "TEMPLATES", "Examples", "FinetuneOptions", "FinetuneResult", "Plan", "build_examples",
           "check_output_dir", "checkpoints", "finetune_table", "is_complete_run", "plan", "plan_resume",
           "prepare", "split_validation", "work_dir_for"]


@dataclass
class FinetuneResult:
    """What a finished run did: where it is, its steps, time and last loss, and its record (the
    finished folder's safesample_config.json)."""

    output: str
    steps: int
    train_seconds: float
    final_train_loss: float | None
    record: dict[str, Any]


def prepare(table: "pa.Table", output: str, options: FinetuneOptions, resume: str = "auto",
            overwrite: bool = False) -> tuple[Examples, list[int], list[int], Plan]:
    """Validate everything and work out the plan, without loading a model or writing."""
    from safesample.backends import models

    for name, value in (("--batch-size", options.batch_size), ("--grad-accum", options.grad_accum),
                        ("--lora-r", options.lora_r), ("--lora-alpha", options.lora_alpha),
                        ("--max-length", options.max_length), ("--save-steps", options.save_steps)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1", f"got {value}")
    if options.max_steps is not None and options.max_steps < 1:
        raise UsageError("--max-steps must be at least 1", f"got {options.max_steps}")
    if options.epochs <= 0:
        raise UsageError("--epochs must be positive", f"got {options.epochs:g}")
    if not 0 <= options.lora_dropout < 1:
        raise UsageError("--lora-dropout must be in [0, 1)", f"got {options.lora_dropout:g}")
    if not options.target_modules:
        raise UsageError("--target-modules is empty", "pass e.g. q_proj,v_proj")
    out = check_output_dir(output, overwrite)
    ref = models.resolve(options.model)
    if ref.adapter:
        raise UsageError(f"--model {options.model!r} is a LoRA adapter; a new LoRA needs full weights "
                         "underneath",
                         "rerun that fine-tune with --merge and pass its merged/ folder "
                         f"(e.g. --model {Path(options.model) / 'merged'})")
    models.check_offline(ref)
    examples = build_examples(table, options.template)
    train_rows, val_rows = split_validation(examples, options.val_size, options.val_include_safety,
                                            options.seed)
    work = work_dir_for(out)
    resume_from = plan_resume(work, run_fingerprint(options, examples), resume)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = options.batch_size * options.grad_accum * world
    steps_per_epoch = max(1, math.ceil(len(train_rows) / per_step))
    total = options.max_steps or math.ceil(steps_per_epoch * options.epochs)
    n_safety = sum(examples.is_safety)
    plan = Plan(n_rows=len(examples), n_train=len(train_rows), n_val=len(val_rows), n_safety=n_safety,
                n_safety_val=sum(examples.is_safety[i] for i in val_rows),
                steps_per_epoch=steps_per_epoch, total_steps=total,
                resume_from=str(resume_from) if resume_from else None, work_dir=str(work),
                output=str(out))
    return examples, train_rows, val_rows, plan


def plan(table: "pa.Table", options: FinetuneOptions, output: str, resume: str = "auto",
         overwrite: bool = False) -> list[str]:
    """What --dry-run prints: the validated plan, with no model loaded and nothing written."""
    return prepare(table, output, options, resume, overwrite)[3].lines(options)


def finetune_table(table: "pa.Table", options: FinetuneOptions, output: str, *, resume: str = "auto",
                   overwrite: bool = False, args_record: dict[str, Any] | None = None,
                   argv: list[str] | None = None, callbacks: list | None = None,
                   reporter: Reporter = SILENT) -> FinetuneResult | None:
    """Fine-tune on `table` and write the output folder; returns what the run did and its record
    (None in the other processes of a multi-GPU run, which write nothing).

    The folder's provenance.json is the table's history plus this run (`args_record`, `argv`).
    Logs and the step progress go to `reporter`; `callbacks` are extra transformers
    TrainerCallbacks.
    """
    from safesample.tables import get_provenance

    examples, train_rows, val_rows, plan = prepare(table, output, options, resume, overwrite)
    out, work = Path(plan.output), Path(plan.work_dir)
    fingerprint = run_fingerprint(options, examples)
    main = is_main_process()
    if main:
        if plan.resume_from is None and work.exists():
            shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        (work / FINGERPRINT).write_text(json.dumps(fingerprint, indent=1))
    started = time.monotonic()
    try:
        result = train(examples, train_rows, val_rows, plan, options, work, callbacks or [], reporter)
    except BaseException:
        if main:
            after_failure(work, reporter)
        raise
    trainer, model, tokenizer, ref, dtype = result
    if not main:
        return None
    record = run_record(options, plan, ref, dtype, trainer, time.monotonic() - started, args_record)
    finish(out, work, trainer, model, tokenizer, options, record, get_provenance(table), overwrite, argv,
           reporter)
    return FinetuneResult(output=str(out), steps=record["steps"], train_seconds=record["train_seconds"],
                          final_train_loss=record["final_train_loss"], record=record)
