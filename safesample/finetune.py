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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesample.backends.models import RUN_CONFIG
from safesample.errors import DataError, UsageError
from safesample.prompting import TRAINING_TEMPLATES as TEMPLATES
from safesample.prompting import alpaca_prompt, chat_text
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import pyarrow as pa

COMMAND = "finetune"
METRICS = "metrics.jsonl"
PROVENANCE = "provenance.json"
PARTIAL_SUFFIX = ".partial"
CHECKPOINTS = "checkpoints"
FINGERPRINT = "run.json"
RESUME_MODES = ("auto", "yes", "no")
SAFETY_SOURCE = "safety"

@dataclass
class FinetuneConfig:
    model: str = "smollm2"
    template: str = "alpaca"
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    max_length: int = 256
    val_size: float = 0.0  # a fraction (< 1) or a row count (>= 1)
    val_include_safety: bool = False
    group_by_length: bool = True
    save_steps: int = 50
    merge: bool = False
    seed: int = 0

    def fingerprint_fields(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (length of training may change)."""
        skip = {"epochs", "max_steps", "save_steps", "merge"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class Examples:
    """Training rows turned into TRL prompt/completion examples."""

    ids: list[str]
    prompts: list[Any]  # strings (alpaca) or message lists (chat)
    completions: list[Any]
    is_safety: list[bool]

    def __len__(self) -> int:
        return len(self.ids)

    def digest(self) -> str:
        h = hashlib.sha256()
        for row in zip(self.ids, self.prompts, self.completions):
            h.update(json.dumps(row, ensure_ascii=False).encode())
        return h.hexdigest()[:16]


@dataclass
class Plan:
    n_rows: int
    n_train: int
    n_val: int
    n_safety: int
    n_safety_val: int
    steps_per_epoch: int
    total_steps: int
    resume_from: str | None
    work_dir: str
    output: str

    def lines(self, config: FinetuneConfig) -> list[str]:
        resume = f"resume from {self.resume_from}" if self.resume_from else "start fresh"
        length = f"{config.max_steps} steps" if config.max_steps else \
            f"{config.epochs:g} epochs = {self.total_steps} steps"
        return [
            f"train {config.model} with LoRA r={config.lora_r} alpha={config.lora_alpha} "
            f"dropout={config.lora_dropout} on {','.join(config.target_modules)}",
            f"rows: {self.n_rows} ({self.n_safety} safety), train {self.n_train}, "
            f"validation {self.n_val} ({self.n_safety_val} safety)",
            f"template {config.template}, max length {config.max_length}, batch "
            f"{config.batch_size} x {config.grad_accum} accumulation, lr {config.lr:g}, {length}",
            f"{resume}; work folder {self.work_dir}; output {self.output}",
        ]


# --------------------------------------------------------------------------------------------
# data


def _column(table: "pa.Table", name: str) -> list:
    return table.column(name).to_pylist()


def build_examples(table: "pa.Table", template: str) -> Examples:
    """Rows with `instruction`, `output` (or `response`) and optional `input`, `source`."""
    from safesample.schema import require

    if template not in TEMPLATES:
        raise UsageError(f"unknown template {template!r}", f"use one of: {', '.join(TEMPLATES)}")
    answer = "output" if "output" in table.column_names or "response" not in table.column_names \
        else "response"
    require(table, ["id", "instruction", answer], COMMAND)
    if "input" in table.column_names:
        require(table, ["input"], COMMAND)
    ids = [str(v) for v in _column(table, "id")]
    instructions = _column(table, "instruction")
    outputs = _column(table, answer)
    inputs = _column(table, "input") if "input" in table.column_names else [None] * len(ids)
    sources = _column(table, "source") if "source" in table.column_names else [None] * len(ids)
    if not ids:
        raise DataError("the training table has no rows", "check the input; `safesample mix` writes it")
    _refuse_blank(ids, instructions, "instruction")
    _refuse_blank(ids, outputs, answer)
    if template == "alpaca":
        prompts: list[Any] = [alpaca_prompt(i, x) for i, x in zip(instructions, inputs)]
        completions: list[Any] = list(outputs)
    else:
        prompts = [[{"role": "user", "content": chat_text(i, x)}] for i, x in zip(instructions, inputs)]
        completions = [[{"role": "assistant", "content": o}] for o in outputs]
    return Examples(ids, prompts, completions, [s == SAFETY_SOURCE for s in sources])


def _refuse_blank(ids: list[str], values: list, name: str) -> None:
    bad = [i for i, v in zip(ids, values) if not isinstance(v, str) or not v.strip()]
    if bad:
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise DataError(f"{len(bad)} of {len(ids)} training rows have an empty or missing "
                        f"{name!r} (ids: {shown})",
                        f"drop or fill those rows first; a model trained on empty {name}s learns "
                        "to answer nothing")


def split_validation(examples: Examples, val_size: float, include_safety: bool,
                     seed: int) -> tuple[list[int], list[int]]:
    """Row indices for training and validation.

    Safety rows stay in training unless `include_safety` (the paper's trainer drew its
    validation split from the whole mixture, so about 10 % of its safety rows were never
    trained on).
    """
    import numpy as np

    n = len(examples)
    if val_size < 0:
        raise UsageError("--val-size must be >= 0", "pass a fraction such as 0.1 or a row count")
    if val_size == 0:
        return list(range(n)), []
    pool = [i for i in range(n) if include_safety or not examples.is_safety[i]]
    want = int(round(val_size * n)) if val_size < 1 else int(val_size)
    want = max(1, want)
    if want >= len(pool):
        raise UsageError(f"--val-size {val_size:g} asks for {want} validation rows, but only "
                         f"{len(pool)} rows can be held out",
                         "pass a smaller --val-size" + ("" if include_safety else
                                                        " (safety rows stay in training)"))
    rng = np.random.default_rng(seed)
    val = sorted(rng.choice(pool, size=want, replace=False).tolist())
    held = set(val)
    return [i for i in range(n) if i not in held], val


def _dataset(examples: Examples, rows: list[int]):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [examples.prompts[i] for i in rows],
                              "completion": [examples.completions[i] for i in rows]})


# --------------------------------------------------------------------------------------------
# folders


def work_dir_for(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL_SUFFIX)


def is_complete_run(folder: Path) -> bool:
    return (folder / RUN_CONFIG).is_file() and (folder / "adapter_config.json").is_file()


def check_output_dir(output: str, overwrite: bool = False) -> Path:
    """Fail fast when the output folder cannot be written (before any heavy work)."""
    if output == "-":
        raise UsageError("finetune writes a folder, not a table: '-' is not a valid output",
                         "pass -o runs/NAME")
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output {output!r} exists and is a file", "pass a folder path such as runs/lora-0")
    if not path.parent.is_dir():
        raise UsageError(f"output folder {str(path.parent)!r} does not exist",
                         f"create it first: mkdir -p {path.parent}")
    if path.is_dir() and any(path.iterdir()):
        if is_complete_run(path):
            if not overwrite:
                raise UsageError(f"{output!r} already holds a finished fine-tuning run",
                                 "pass --overwrite to replace it, or another -o")
        else:
            raise UsageError(f"output folder {output!r} exists and is not empty",
                             "pass a new folder; finetune creates it")
    return path


def _checkpoints(work: Path) -> list[Path]:
    folder = work / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        step = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and p.name.startswith("checkpoint-") and step.isdigit() and \
                (p / "trainer_state.json").exists():
            found.append((int(step), p))
    return [p for _, p in sorted(found)]


def _fingerprint(config: FinetuneConfig, examples: Examples) -> dict[str, Any]:
    return {"config": config.fingerprint_fields(), "data": examples.digest(), "rows": len(examples)}


def plan_resume(work: Path, fingerprint: dict[str, Any], resume: str) -> Path | None:
    """The checkpoint to resume from, or None to start fresh; refuses a mismatched one."""
    if resume not in RESUME_MODES:
        raise UsageError(f"unknown --resume {resume!r}", f"use one of: {', '.join(RESUME_MODES)}")
    found = _checkpoints(work)
    if resume == "no" or not found:
        if resume == "yes":
            raise UsageError(f"--resume yes, but {work} holds no checkpoint",
                             "drop --resume yes to start a new run")
        return None
    saved = work / FINGERPRINT
    theirs = json.loads(saved.read_text()) if saved.exists() else None
    if theirs != fingerprint:
        diff = _describe_difference(theirs, fingerprint)
        raise UsageError(f"{work} holds checkpoints of a different run ({diff})",
                         "pass --resume no to discard them and start over, or rerun with the "
                         "settings and data of that run")
    return found[-1]


def _describe_difference(theirs: dict | None, ours: dict) -> str:
    if not theirs:
        return "no record of its settings"
    if theirs.get("data") != ours.get("data"):
        return "the training data differs"
    a, b = theirs.get("config", {}), ours.get("config", {})
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "settings differ: " + ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys)


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop the log lines of steps after the checkpoint (they are redone)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


# --------------------------------------------------------------------------------------------
# training


def prepare(table: "pa.Table", output: str, config: FinetuneConfig, resume: str = "auto",
            overwrite: bool = False) -> tuple[Examples, list[int], list[int], Plan]:
    """Validate everything and work out the plan, without loading a model or writing."""
    from safesample.backends import models

    for name, value in (("--batch-size", config.batch_size), ("--grad-accum", config.grad_accum),
                        ("--lora-r", config.lora_r), ("--lora-alpha", config.lora_alpha),
                        ("--max-length", config.max_length), ("--save-steps", config.save_steps)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1", f"got {value}")
    if config.max_steps is not None and config.max_steps < 1:
        raise UsageError("--max-steps must be at least 1", f"got {config.max_steps}")
    if config.epochs <= 0:
        raise UsageError("--epochs must be positive", f"got {config.epochs:g}")
    if not 0 <= config.lora_dropout < 1:
        raise UsageError("--lora-dropout must be in [0, 1)", f"got {config.lora_dropout:g}")
    if not config.target_modules:
        raise UsageError("--target-modules is empty", "pass e.g. q_proj,v_proj")
    out = check_output_dir(output, overwrite)
    ref = models.resolve(config.model)
    if ref.adapter:
        raise UsageError(f"--model {config.model!r} is a LoRA adapter; a new LoRA needs full weights "
                         "underneath",
                         "rerun that fine-tune with --merge and pass its merged/ folder "
                         f"(e.g. --model {Path(config.model) / 'merged'})")
    models.check_offline(ref)
    examples = build_examples(table, config.template)
    train_rows, val_rows = split_validation(examples, config.val_size, config.val_include_safety,
                                            config.seed)
    work = work_dir_for(out)
    resume_from = plan_resume(work, _fingerprint(config, examples), resume)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = config.batch_size * config.grad_accum * world
    steps_per_epoch = max(1, math.ceil(len(train_rows) / per_step))
    total = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    n_safety = sum(examples.is_safety)
    plan = Plan(n_rows=len(examples), n_train=len(train_rows), n_val=len(val_rows), n_safety=n_safety,
                n_safety_val=sum(examples.is_safety[i] for i in val_rows),
                steps_per_epoch=steps_per_epoch, total_steps=total,
                resume_from=str(resume_from) if resume_from else None, work_dir=str(work),
                output=str(out))
    return examples, train_rows, val_rows, plan


def plan(table: "pa.Table", config: FinetuneConfig, output: str, resume: str = "auto",
         overwrite: bool = False) -> list[str]:
    """What --dry-run prints: the validated plan, with no model loaded and nothing written."""
    return prepare(table, output, config, resume, overwrite)[3].lines(config)


def _device_settings() -> tuple[str, bool]:
    import torch

    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        return ("bfloat16" if bf16 else "float32"), bf16
    return "float32", False  # bf16 on this CPU was slower than fp32 (EXPERIMENT-NOTES.md)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def finetune_table(table: "pa.Table", config: FinetuneConfig, output: str, *, resume: str = "auto",
                   overwrite: bool = False, args_record: dict[str, Any] | None = None,
                   argv: list[str] | None = None, callbacks: list | None = None,
                   reporter: Reporter = SILENT) -> dict[str, Any]:
    """Fine-tune on `table` and write the output folder; returns the resolved run config.

    The folder's provenance.json is the table's history plus this run (`args_record`, `argv`).
    Logs and the step progress go to `reporter`; `callbacks` are extra transformers
    TrainerCallbacks.
    """
    from safesample.tables import get_provenance

    examples, train_rows, val_rows, plan = prepare(table, output, config, resume, overwrite)
    out, work = Path(plan.output), Path(plan.work_dir)
    fingerprint = _fingerprint(config, examples)
    main = _is_main_process()
    if main:
        if plan.resume_from is None and work.exists():
            shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        (work / FINGERPRINT).write_text(json.dumps(fingerprint, indent=1))
    started = time.monotonic()
    try:
        result = _train(examples, train_rows, val_rows, plan, config, work, callbacks or [], reporter)
    except BaseException:
        if main:
            _after_failure(work, reporter)
        raise
    trainer, model, tokenizer, ref, dtype = result
    if not main:
        return {}
    record = _run_record(config, plan, ref, dtype, trainer, time.monotonic() - started, args_record)
    _finish(out, work, trainer, model, tokenizer, config, record, get_provenance(table), overwrite, argv,
            reporter)
    return record


def _after_failure(work: Path, reporter: Reporter) -> None:
    found = _checkpoints(work)
    if found:
        reporter.warn(f"training stopped; checkpoints are kept in {work / CHECKPOINTS} "
                     f"(last: {found[-1].name}); rerun the same command to resume")
    else:
        shutil.rmtree(work, ignore_errors=True)


def _train(examples: Examples, train_rows: list[int], val_rows: list[int], plan: Plan,
           config: FinetuneConfig, work: Path, extra_callbacks: list, reporter: Reporter):
    from safesample.backends import models

    models.quiet_libraries(reporter, datasets=True)
    ref = models.resolve(config.model)
    dtype, bf16 = _device_settings()
    reporter.info(f"loading {config.model} ({dtype})")
    tokenizer = models.load_tokenizer(ref, padding_side="right")
    # Loaded on the CPU; the trainer moves it to its device (each process's own under torchrun).
    model = models.load_causal_lm(ref, dtype=dtype, device="cpu", reporter=reporter)
    from peft import LoraConfig  # imported after the model loads, so a bad --model fails fast
    from trl import SFTConfig, SFTTrainer

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules="all-linear" if config.target_modules == ["all-linear"]
                      else list(config.target_modules), bias="none", task_type="CAUSAL_LM")
    has_val = bool(val_rows)
    args = SFTConfig(
        output_dir=str(work / CHECKPOINTS),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        max_length=config.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,  # small models and LoRA fit without it; it costs ~20 %
        logging_steps=1,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_val else "no",
        eval_steps=config.save_steps if has_val else None,
        report_to="none",
        disable_tqdm=True,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        use_cpu=dtype == "float32" and not _cuda(),
    )
    metrics_path = work / METRICS
    if plan.resume_from:
        _trim_metrics(metrics_path, int(Path(plan.resume_from).name.rsplit("-", 1)[-1]))
    callbacks = [_metrics_callback(metrics_path), _progress_callback(reporter), *extra_callbacks]
    try:
        trainer = SFTTrainer(model=model, args=args, train_dataset=_dataset(examples, train_rows),
                             eval_dataset=_dataset(examples, val_rows) if has_val else None,
                             processing_class=tokenizer, peft_config=lora, callbacks=callbacks)
    except ValueError as exc:
        if "target module" in str(exc).lower() or "target_modules" in str(exc):
            raise UsageError(f"--target-modules {','.join(config.target_modules)} do not match "
                             f"{config.model}: {str(exc).splitlines()[0][:200]}",
                             f"this model's linear layers: {', '.join(_linear_names(model))}") from exc
        raise
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw dicts; metrics.jsonl keeps them
    kept = len(trainer.train_dataset)
    if kept < len(train_rows):
        reporter.warn(f"{len(train_rows) - kept} training rows were dropped: their prompt alone fills "
                     f"--max-length {config.max_length}")
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


def _run_record(config: FinetuneConfig, plan: Plan, ref, dtype: str, trainer, seconds: float,
                args_record: dict[str, Any] | None) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import trl

    from safesample import __version__

    history = trainer.state.log_history
    losses = [e["loss"] for e in history if "loss" in e]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    path = Path(config.model).expanduser()
    # A local folder is recorded absolute, so the adapter loads from any working directory.
    base = str(path.resolve()) if path.exists() else config.model
    return {
        "base_model": base,
        "base_model_spec": config.model,
        "template": config.template,
        "config": asdict(config),
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


def _finish(out: Path, work: Path, trainer, model, tokenizer, config: FinetuneConfig, record: dict[str, Any],
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
    entry = provenance_entry(COMMAND, record.get("args", {}), seed=config.seed,
                             models={"base": record["base_model"]}, argv=argv)
    (final / PROVENANCE).write_text(json.dumps(provenance + [entry], indent=1))
    if config.merge:
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
