"""The training itself: PEFT LoRA under TRL's SFTTrainer, its callbacks, and the finished folder.

The model loads on the CPU and the trainer moves it to its device (each process's own under
torchrun); the loss is on the response tokens only (`completion_only_loss`), batches are grouped
by length. Every logged loss goes to metrics.jsonl and the step progress to the reporter. At the
end the finished folder is built inside the work folder and renamed into place:
`safesample_config.json`, the record of the run, is written last, since it is what marks a
folder as a finished run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safesample.backends.models import RUN_CONFIG
from safesample.errors import DataError, UsageError
from safesample.finetune.examples import Examples, dataset
from safesample.finetune.options import COMMAND, FinetuneOptions, Plan
from safesample.finetune.resume import CHECKPOINTS, trim_metrics
from safesample.reporter import Reporter

METRICS = "metrics.jsonl"
PROVENANCE = "provenance.json"


def _device_settings() -> tuple[str, bool]:
    import torch

    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        return ("bfloat16" if bf16 else "float32"), bf16
    return "float32", False  # bf16 on this CPU was slower than fp32 (EXPERIMENT-NOTES.md)


def is_main_process() -> bool:
    """Whether this is the process that writes files and logs (rank 0 under torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


def train(examples: Examples, train_rows: list[int], val_rows: list[int], plan: Plan,
          options: FinetuneOptions, work: Path, extra_callbacks: list, reporter: Reporter):
    """Train the LoRA (resuming from `plan.resume_from` when set); returns the trainer, the
    trained model, its tokenizer, the base model's reference and the dtype it trained in."""
    from safesample.backends import models

    models.quiet_libraries(reporter, datasets=True)
    ref = models.resolve(options.model)
    dtype, bf16 = _device_settings()
    reporter.info(f"loading {options.model} ({dtype})")
    tokenizer = models.load_tokenizer(ref, padding_side="right")
    # Loaded on the CPU; the trainer moves it to its device (each process's own under torchrun).
    model = models.load_causal_lm(ref, dtype=dtype, device="cpu", reporter=reporter)
    from peft import LoraConfig  # imported after the model loads, so a bad --model fails fast
    from trl import SFTConfig, SFTTrainer

    lora = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                      target_modules="all-linear" if options.target_modules == ["all-linear"]
                      else list(options.target_modules), bias="none", task_type="CAUSAL_LM")
    has_val = bool(val_rows)
    args = SFTConfig(
        output_dir=str(work / CHECKPOINTS),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps or -1,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        learning_rate=options.lr,
        max_length=options.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length" if options.group_by_length else "random",
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,  # small models and LoRA fit without it; it costs ~20 %
        logging_steps=1,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_val else "no",
        eval_steps=options.save_steps if has_val else None,
        report_to="none",
        disable_tqdm=True,
        seed=options.seed,
        data_seed=options.seed,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        use_cpu=dtype == "float32" and not _cuda(),
    )
    metrics_path = work / METRICS
    if plan.resume_from:
        trim_metrics(metrics_path, int(Path(plan.resume_from).name.rsplit("-", 1)[-1]))
    callbacks = [_metrics_callback(metrics_path), _progress_callback(reporter), *extra_callbacks]
    try:
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset(examples, train_rows),
                             eval_dataset=dataset(examples, val_rows) if has_val else None,
                             processing_class=tokenizer, peft_config=lora, callbacks=callbacks)
    except ValueError as exc:
        if "target module" in str(exc).lower() or "target_modules" in str(exc):
            raise UsageError(f"--target-modules {','.join(options.target_modules)} do not match "
                             f"{options.model}: {str(exc).splitlines()[0][:200]}",
                             f"this model's linear layers: {', '.join(_linear_names(model))}") from exc
        raise
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw dicts; metrics.jsonl keeps them
    kept = len(trainer.train_dataset)
    if kept < len(train_rows):
        reporter.warn(f"{len(train_rows) - kept} training rows were dropped: their prompt alone fills "
                     f"--max-length {options.max_length}")
    if kept == 0:
        raise DataError("no training row fits --max-length", "raise --max-length")
    if plan.resume_from:
        reporter.info(f"resuming from {plan.resume_from}")
    trainer.train(resume_from_checkpoint=plan.resume_from)
    if has_val:
        trainer.evaluate()
    return trainer, trainer.model, tokenizer, ref, dtype


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _linear_names(model) -> list[str]:
    import torch

    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    return names[:20]


def _metrics_callback(path: Path):
    from transformers import TrainerCallback

    class Metrics(TrainerCallback):
        """Every logged loss as one JSON line, so a run can be plotted or compared later."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")

    return Metrics()


def _progress_callback(reporter: Reporter):
    from contextlib import ExitStack

    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self):
            self.stack = ExitStack()
            self.advance = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.advance = self.stack.enter_context(reporter.progress(state.max_steps, "training",
                                                                          unit="steps"))
                if state.global_step:  # resumed: the checkpoint's steps are done
                    self.advance(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.advance is not None:
                self.advance(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                reporter.debug(f"step {state.global_step}: loss {logs['loss']:.4f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.stack.close()
            self.advance = None

    return Progress()


def run_record(options: FinetuneOptions, plan: Plan, ref, dtype: str, trainer, seconds: float,
               args_record: dict[str, Any] | None) -> dict[str, Any]:
    """What the finished folder's safesample_config.json holds: the resolved settings, the rows,
    the steps and losses, the device and the library versions."""
    import peft
    import torch
    import transformers
    import trl

    from safesample import __version__

    history = trainer.state.log_history
    losses = [e["loss"] for e in history if "loss" in e]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    path = Path(options.model).expanduser()
    # A local folder is recorded absolute, so the adapter loads from any working directory.
    base = str(path.resolve()) if path.exists() else options.model
    return {
        "base_model": base,
        "base_model_spec": options.model,
        "template": options.template,
        "config": asdict(options),
        "rows": {"total": plan.n_rows, "train": plan.n_train, "validation": plan.n_val,
                 "safety": plan.n_safety, "safety_in_validation": plan.n_safety_val},
        "steps": trainer.state.global_step,
        "epochs_done": round(trainer.state.epoch or 0.0, 4),
        "final_train_loss": losses[-1] if losses else None,
        "final_eval_loss": evals[-1] if evals else None,
        "train_seconds": round(seconds, 1),
        "resumed_from": plan.resume_from,
        "dtype": dtype,
        "device": str(trainer.args.device),
        "world_size": trainer.args.world_size,
        "args": args_record or {},
        "versions": {"safesample": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__,
                     "trl": trl.__version__},
        "model_name": ref.name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def finish(out: Path, work: Path, trainer, model, tokenizer, options: FinetuneOptions, record: dict[str, Any],
           provenance: list[dict[str, Any]], overwrite: bool, argv: list[str] | None, reporter: Reporter) -> None:
    """Build the finished folder inside the work folder, then rename it into place."""
    from safesample.tables import provenance_entry

    final = work / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir()
    model.save_pretrained(final)
    tokenizer.padding_side = "left"  # what generation wants; training set its own side
    tokenizer.save_pretrained(final)
    if (work / METRICS).exists():
        shutil.copy2(work / METRICS, final / METRICS)
    entry = provenance_entry(COMMAND, record.get("args", {}), seed=options.seed,
                             models={"base": record["base_model"]}, argv=argv)
    (final / PROVENANCE).write_text(json.dumps(provenance + [entry], indent=1))
    if options.merge:
        reporter.info("merging the adapter into the base weights")
        merged = model.merge_and_unload()
        merged.save_pretrained(final / "merged")
        tokenizer.save_pretrained(final / "merged")
        record["merged"] = "merged"
    # Written last: this file is what marks a folder as a finished run.
    (final / RUN_CONFIG).write_text(json.dumps(record, indent=1))
    if out.exists():
        if any(out.iterdir()):
            if not overwrite:  # someone wrote there while we trained
                raise UsageError(f"{out} appeared while training; the finished run is in {final}",
                                 "move it into place by hand")
            trash = work / "replaced"
            os.replace(out, trash)
        else:
            out.rmdir()
    os.replace(final, out)
    shutil.rmtree(work, ignore_errors=True)
