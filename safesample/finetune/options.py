"""The fine-tune's options (`safesample finetune`'s flags) and its plan (what --dry-run prints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

COMMAND = "finetune"


@dataclass
class FinetuneOptions:
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

    def lines(self, options: FinetuneOptions) -> list[str]:
        resume = f"resume from {self.resume_from}" if self.resume_from else "start fresh"
        length = f"{options.max_steps} steps" if options.max_steps else \
            f"{options.epochs:g} epochs = {self.total_steps} steps"
        return [
            f"train {options.model} with LoRA r={options.lora_r} alpha={options.lora_alpha} "
            f"dropout={options.lora_dropout} on {','.join(options.target_modules)}",
            f"rows: {self.n_rows} ({self.n_safety} safety), train {self.n_train}, "
            f"validation {self.n_val} ({self.n_safety_val} safety)",
            f"template {options.template}, max length {options.max_length}, batch "
            f"{options.batch_size} x {options.grad_accum} accumulation, lr {options.lr:g}, {length}",
            f"{resume}; work folder {self.work_dir}; output {self.output}",
        ]
